"""The family registry: name → ``Family``, the one table ``open_model``, the spec's ``family:``
check and ``erasec eval --images`` consult. A new family's module adds its values here."""

from __future__ import annotations

from . import sd
from .family import Family

FAMILIES: dict[str, Family] = {family.name: family for family in (*sd.FAMILIES,)}
