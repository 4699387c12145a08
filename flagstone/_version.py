"""The package version, in a module of its own so that the CLI can read it without importing the top-level
export table (a layer above it). Keep it equal to pyproject.toml's version."""
__version__ = "0.1.0"
