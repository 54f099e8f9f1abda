"""timewait: see, explain, predict and fix TCP TIME_WAIT and ephemeral-port exhaustion on Linux."""

__version__ = "0.1.0"
