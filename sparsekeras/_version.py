"""The version of sparsekeras: the one place it is written (pyproject.toml reads it, and the
wheel's metadata, `sparsekeras.__version__` and `sparsekeras --version` report it)."""
__version__ = "0.2.0"
