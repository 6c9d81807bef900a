"""Model families (``family.py``) and their registry (``registry.py``); one module per group of families."""

from .family import Encoder, Family, HiddenState, SingleFileEncoder
from .registry import FAMILIES

__all__ = ["Encoder", "FAMILIES", "Family", "HiddenState", "SingleFileEncoder"]
