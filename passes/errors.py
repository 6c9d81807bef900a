"""Errors raised by passes and by the pipeline machinery."""

from erasec.ir.errors import ErasecError


class PassError(ErasecError):
    """A pass cannot handle its input; the pipeline prefixes the pass name."""


class PassOptionError(PassError):
    """A pass option is unknown, missing, malformed or out of range."""


class PipelineSyntaxError(PassError):
    """A pipeline string does not parse; the message gives the column."""


class SolveError(PassError):
    """The least-squares system is singular or too ill-conditioned to trust; the message names the fix."""


class DriftBudgetError(PassError):
    """No erasure meets a drift budget, or the drift cannot be measured; the message names the least drift."""


class PassCrash(RuntimeError):
    """A pass raised something other than an ``ErasecError``: a bug, not bad input. The message names
    the pass and those run before it; ``__cause__`` is the original exception with its traceback.
    Deliberately not an ``ErasecError``, so the CLI does not turn it into a one-line user error."""
