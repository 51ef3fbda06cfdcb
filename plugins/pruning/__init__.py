"""Built-in pruning plugins (registered through the `bench` entry-point group)."""
