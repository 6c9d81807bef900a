"""Errors of the backends."""

from erasec.ir.errors import ErasecError


class BackendError(ErasecError):
    """A solution cannot be emitted in the requested format; the message says why."""
