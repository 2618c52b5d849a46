"""Errors the storage modules raise in their own terms (not a database driver's)."""


class StatementTimedOut(Exception):
    """A statement ran past the time limit its caller set (parley.storage.*.time_limit)."""
