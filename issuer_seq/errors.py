"""The one exception type users see as a plain message instead of a traceback."""


class IssuerSeqError(Exception):
    """A problem with the user's input or configuration, explained in its message."""
