"""erasec.ir — the data model: plain data and math, no torch, nothing else of erasec."""

from .arrays import frozen_array, structurally_equal
from .drift import DriftLanding
from .errors import ErasecError, VerifyError
from .program import Diagnostic, EditProgram, SpaceProgram, phrase_pattern
from .rows import EraseRows, HardRows, MomentSum, Moments, PreserveRows, Provenance, empty_hard, empty_preserve
from .site_rows import SiteRows
from .solution import DtypeReport, LayerFactors, Solution, SolveReport, SpaceSolution
from .target import ROLES, KeySpace, LinearSite, ModelTarget

__all__ = [
    "ROLES",
    "Diagnostic",
    "DriftLanding",
    "DtypeReport",
    "EditProgram",
    "EraseRows",
    "ErasecError",
    "HardRows",
    "KeySpace",
    "LayerFactors",
    "LinearSite",
    "ModelTarget",
    "MomentSum",
    "Moments",
    "PreserveRows",
    "Provenance",
    "SiteRows",
    "Solution",
    "SolveReport",
    "SpaceProgram",
    "SpaceSolution",
    "VerifyError",
    "empty_hard",
    "empty_preserve",
    "frozen_array",
    "phrase_pattern",
    "structurally_equal",
]
