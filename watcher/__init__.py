"""watcher: an event-driven file-intake service that delivers every file exactly once."""

# A constant, not importlib.metadata: that import alone cost 40 ms of every start-up. A unit test
# checks it against the installed distribution's version (pyproject.toml).
__version__ = "0.1.0"

__all__ = ["__version__"]
