"""pkvc: Git-style versioned backups on Perkeep's data model."""

__version__ = "0.1.0"
