"""Built-in plots plugins (registered through the `bench` entry-point group)."""
