"""The version of this code, written here only: the package root, `pyproject.toml` and the records read it."""

__version__ = "0.2.0.dev0"
