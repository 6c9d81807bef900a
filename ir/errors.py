"""The root of erasec's error types.

Each package subclasses ``ErasecError`` in its own ``errors.py``. A message is one line,
``<where>: <what is wrong>[; <what to do>]``; only the CLI (``erasec.compiler.cli`` and its ``cli_*``
modules) prints errors and picks exit codes.
"""


class ErasecError(Exception):
    """Anything a user can fix: the CLI prints the message and exits 2 (or 1 for a failed check)."""


class VerifyError(ErasecError):
    """An IR object breaks an invariant; the message names the path (``spaces[clip-l].erase.keys``)."""
