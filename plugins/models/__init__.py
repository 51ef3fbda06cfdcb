"""Built-in models plugins (registered through the `bench` entry-point group)."""
