"""Built-in metrics plugins (registered through the `bench` entry-point group)."""
