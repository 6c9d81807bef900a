"""Errors of the driver: the spec, the model, the build."""

from erasec.ir.errors import ErasecError


class SpecError(ErasecError):
    """A spec file is malformed: ``<file>:<line>: <key.path>: <what is wrong>``."""


class ModelError(ErasecError):
    """A model location is missing, unreadable, or not a supported Stable Diffusion model."""


class BuildError(ErasecError):
    """The build cannot proceed (e.g. the output path cannot be written)."""


class EvalError(ErasecError):
    """An evaluation cannot run (unknown suite, unreadable prompt file, a patch of another model)."""
