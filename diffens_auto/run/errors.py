"""How every command reports a user error: one clear message and exit status 1, no traceback.

Only `DiffensError` (diffens_auto/errors.py) is a user error: every stage's own errors subclass it. Anything else
is a bug and keeps its traceback. This module imports nothing else of the package, so a command that needs no
torch (diffens_evaluate) does not load it.
"""
import sys
from typing import Callable

from diffens_auto.errors import DiffensError


def run_command(work: Callable[[], None]) -> None:
    """Run a command's work; print a user error as a message on stderr and exit 1."""
    try:
        work()
    except DiffensError as e:
        print(f"ERROR: {e}", file=sys.stderr)
        sys.exit(1)
