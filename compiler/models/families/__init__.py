"""Model families (``family.py``) and their registry (``registry.py``); one module per group of families."""

from .family import Encoder, EncoderSlot, Family, HiddenState, SingleFileEncoder
from .registry import FAMILIES

__all__ = ["Encoder", "EncoderSlot", "FAMILIES", "Family", "HiddenState", "SingleFileEncoder"]
