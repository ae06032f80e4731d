"""The base class of every user error: bad input, a request that cannot run as given, a missing earlier step.

Each stage's user errors subclass `DiffensError` (and the builtin error they stand for, so that `except
ValueError` keeps working); the commands catch `DiffensError` alone and print its message without a traceback
(`diffens_auto.run.errors.run_command`). Anything else is a bug and keeps its traceback. A message names the file
or field at fault and says how to fix it.
"""


class DiffensError(Exception):
    """A user error whose message names the file or field and the fix."""


class MissingFileError(DiffensError, FileNotFoundError):
    """A file or folder the user gives or an earlier step writes is missing (the message names that step)."""
