"""nytorch's version: the one place it is written (pyproject.toml reads it too)."""

__version__ = "2.0.0.dev0"
