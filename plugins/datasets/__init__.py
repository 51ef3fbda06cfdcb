"""Built-in datasets plugins (registered through the `bench` entry-point group)."""
