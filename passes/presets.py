"""Methods: named presets of a pass pipeline plus the lowering defaults of the published method.

Reference defaults are from research/methods.md §1.2, §1.3 and §10 (items 1–9). ``erasec methods``
prints this table.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

RowRule = Literal["last_token", "legacy_span"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Preset:
    name: str
    summary: str
    pipeline: str
    rows: RowRule  # which embedding rows become keys (the model frontend selects them)
    lam: float
    erase_scale: float
    preserve_scale: float | Literal["legacy"]  # "legacy": max(0.1, 1 / number of retain prompts)
    preserve_empty: bool  # the empty prompt is always preserved (all its rows)
    blank_guide: str  # the prompt an empty anchor ("") stands for
    reference: str


PRESETS: dict[str, Preset] = {
    preset.name: preset
    for preset in (
        Preset(
            name="uce",
            summary="UCE (2025 reference rewrite): one row per prompt at the last subject token",
            pipeline="canonicalize,solve",
            rows="last_token",
            lam=0.5,
            erase_scale=1.0,
            preserve_scale=1.0,
            preserve_empty=False,
            blank_guide="",
            reference="Gandikota et al., WACV 2024, arXiv 2308.14761; trainscripts/uce_sd_erase.py @28c81ed",
        ),
        Preset(
            name="uce-legacy",
            summary="UCE (original script): rows from the last subject token to the end, padding included; "
            "empty prompt preserved with all 77 rows",
            pipeline="canonicalize,solve",
            rows="legacy_span",
            lam=0.5,
            erase_scale=1.0,
            preserve_scale="legacy",
            preserve_empty=True,
            blank_guide=" ",
            reference="Gandikota et al., WACV 2024, arXiv 2308.14761; train-scripts/train_erase.py @35e91e2",
        ),
    )
}
