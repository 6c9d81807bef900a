"""The family registry: name → ``Family``, the one table ``open_model``, the spec's ``family:``
check and ``erasec eval --images`` consult. A new family's module adds its values here."""

from __future__ import annotations

from .family import Family
from .dit import FAMILIES as DIT_FAMILIES
from .sd import FAMILIES as SD_FAMILIES

FAMILIES: dict[str, Family] = {family.name: family for family in (*SD_FAMILIES, *DIT_FAMILIES)}
