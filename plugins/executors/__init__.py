"""Built-in executors plugins (registered through the `bench` entry-point group)."""
