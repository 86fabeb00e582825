"""alarmsieve: verify security-camera alarms with data-versioned, Pachyderm-style pipelines."""

__version__ = "0.1.0"
