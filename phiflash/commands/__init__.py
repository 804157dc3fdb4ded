"""Command layer: the CLIs that serve both engines (each a thin parser over a library call)."""
