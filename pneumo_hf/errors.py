"""The errors that are the user's: a bad flag, file, folder, model name, archive, or a Hub or PACS out of reach. Each
message is one sentence that says what to do; the commands print it and exit 1. Any other exception is a bug and keeps
its traceback.

    from pneumo_hf.errors import UserError
    try: ...
    except UserError as error: logger.error("%s", error)
"""

__all__ = ["ArgumentError", "UserError"]


class UserError(Exception):
    """Something the user can fix; the message names the fix."""


class ArgumentError(UserError, ValueError):
    """A flag or argument out of range (a ValueError too, as transformers' argument dataclasses raise)."""
