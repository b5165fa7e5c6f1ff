"""The one exception type that reaches the user as a single clear line."""


class UserError(Exception):
    """Bad input the user can fix: the message names the problem and the fix."""
