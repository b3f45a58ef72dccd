"""User-facing errors: the CLI prints their message as one line and exits non-zero."""


class CytotuneError(Exception):
    """An error a user can act on: the message says what, where, and what was expected."""
