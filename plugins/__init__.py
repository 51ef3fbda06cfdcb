"""diffbench built-in plugins."""
