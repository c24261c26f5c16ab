"""Model-agnostic machinery shared by every editing method (hooks, statistics, keys, values)."""
