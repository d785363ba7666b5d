"""Errors that mean "the user asked for something we cannot do": the CLI prints the message
and exits with code 2."""


class UserError(Exception):
    """Bad input: the message says what was wrong and what to do instead."""


class DataError(UserError):
    """A dataset that is missing, unreadable or malformed."""
