"""Errors about patch files."""

from erasec.ir.errors import ErasecError


class PatchError(ErasecError):
    """A patch cannot be written or read: ``<path>: <what is wrong>``."""
