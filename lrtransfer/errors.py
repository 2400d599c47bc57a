"""Errors a user can fix. The CLI turns every `UserError` into one message and exit code 2."""


class UserError(Exception):
    """Bad input from the user: a config key, a path, a value. The message names it."""


class ConfigError(UserError):
    """An experiment file or override that cannot be resolved into runs."""


class DataError(UserError):
    """A dataset that is missing or unreadable; the message says how to get it."""
