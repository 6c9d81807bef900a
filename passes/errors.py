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
