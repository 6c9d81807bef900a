"""filter-preserve — drop preserve prompts that name an erased concept.

A preserve prompt containing an erased phrase ("a painting by Van Gogh" while erasing "Van Gogh")
asks the solve to keep exactly what it must remove; the two pull against each other and both
lose. SPEED (Li et al., 2025, arXiv 2503.07392; research/methods.md §6.2 item 2) drops every
retain prompt that contains a full target phrase, matched case-insensitively at word boundaries.
The phrases of a request are its concept and synonyms (``EditProgram.phrases``). Every dropped
prompt is reported as a diagnostic, so the user sees what the spec asked for and did not get.
Folded preserve rows (``ir.Moments``) cannot be taken out again; the lowering keeps every row of a
prompt that names an erased phrase explicit, and the pass refuses a program where one was folded.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import ClassVar

import numpy as np

from erasec.ir import Diagnostic, EditProgram, phrase_pattern

from .base import EditPass
from .errors import PassError


_PRIOR_TAG = re.compile(r"^<prior [^>]*> ")


def preserve_text(prompt: str) -> str:
    """The words of a preserve prompt: a prior's captions carry a ``<prior NAME>`` tag in their
    provenance (``compiler/lowering/lower.py``), which is not part of the text (erasing "Coco" must not
    drop the COCO prior)."""
    return _PRIOR_TAG.sub("", prompt)


def drop_named(program: EditProgram) -> tuple[EditProgram, dict[str, str]]:
    """``program`` without the preserve prompts that name an erased phrase, and each dropped prompt
    with the phrase it names (sorted). The build scores the lowered program through this too, so
    its reports describe what the patch was solved for, not the spec's full preserve list."""
    pattern = phrase_pattern([p for r in program.requests for p in program.request_phrases(r)])
    if pattern is None:
        return program, {}
    spaces, dropped = [], {}
    for space in program.spaces:
        rows = space.preserve
        folded = [] if rows.folded is None else [p for p in rows.folded.prompts if pattern.search(preserve_text(p))]
        if folded:  # the lowering keeps such prompts' rows explicit; a folded one cannot be taken out
            raise PassError(
                f"key space {space.space}: preserve prompt {folded[0]!r} names an erased concept but its "
                "rows are folded into moments and cannot be dropped"
            )
        clean = {prompt: pattern.search(preserve_text(prompt)) is None for prompt in {p.prompt for p in rows.provenance}}
        keep = np.array([clean[p.prompt] for p in rows.provenance], dtype=bool).reshape(-1)
        if keep.all():
            spaces.append(space)
            continue
        dropped.update((p.prompt, pattern.search(preserve_text(p.prompt)).group()) for p, k in zip(rows.provenance, keep) if not k)
        spaces.append(replace(space, preserve=rows.select(keep)))
    if not dropped:
        return program, {}
    return replace(program, spaces=tuple(spaces)), dict(sorted(dropped.items()))


@dataclass(frozen=True, slots=True)
class FilterPreservePass(EditPass):
    name: ClassVar[str] = "filter-preserve"

    def apply(self, program: EditProgram) -> EditProgram:
        filtered, dropped = drop_named(program)
        if not dropped:
            return program
        found = [
            Diagnostic(
                origin=self.name,
                severity="note",
                message=f"preserve prompt {prompt!r} names an erased concept ({phrase!r}) and was dropped",
            )
            for prompt, phrase in dropped.items()
        ]
        return filtered.with_diagnostics(*found)
