"""Exceptions whose message is meant for the user: the CLI prints them as one line."""


class UserError(Exception):
    """Bad input from the user (a flag, a file, a prompt); the message says what and why."""


class CheckpointError(UserError):
    """A checkpoint folder is missing files, has the wrong keys or shapes, or cannot be read."""
