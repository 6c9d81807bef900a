"""check-conflicts — find requests the spec makes fight each other, before solving.

Two conflicts make a least-squares erasure quietly fail (research/methods.md §6.1):

* an erase row that lies (nearly) in the span of the preserve rows, or next to one of them: the
  solve must both move and keep it, and with hard preservation (``orthogonalize{mode=hard}``) it
  cannot move at all. The span test applies only while the preserve rows span at most half the key
  space (a preserve prior spans nearly all of it); otherwise single preserve rows are compared;
* two requests whose keys (nearly) coincide but whose anchors differ: one row, two targets — the
  solve averages them (shared sub-tokens, "Bill Clinton" vs "Bill Murray").

Cosines are between a row and its projection on the preserve span, or between two requests' rows;
``threshold`` is the cosine at which a pair is reported. Only each prompt's first row is compared
(the subject token; later rows of a legacy span are padding that every prompt shares); folded
preserve rows count in the span through their moment, and single rows are compared with the
explicit ones, which hold every preserve prompt's subject row. With
``on-conflict=warn`` the findings become diagnostics; with ``error`` the first one stops the build.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import numpy as np

from erasec.ir import Diagnostic, EditProgram, PreserveRows, SpaceProgram

from .base import EditPass
from .errors import PassError


_SPAN_RTOL = 1e-6


def _first_rows(space: SpaceProgram) -> np.ndarray:
    seen, index = set(), []
    for i, p in enumerate(space.erase.provenance):
        if (p.request, p.prompt) not in seen:
            seen.add((p.request, p.prompt))
            index.append(i)
    return np.array(index, dtype=int)


def _span_cosines(keys: np.ndarray, preserve: PreserveRows) -> np.ndarray | None:
    """The cosine of each unit row of ``keys`` with the span of ``preserve``, or None when that span
    takes more than half the key space.

    The span is read off the eigenvectors of the preserve rows' Gram matrix (d × d: cheap however
    many rows), keeping directions whose singular value is at least ``_SPAN_RTOL`` of the largest;
    finer directions are numerically there but say nothing about a conflict.
    """
    gram = preserve.keys.T @ preserve.keys
    if preserve.folded is not None:
        gram += preserve.folded.plain
    values, vectors = np.linalg.eigh(gram)
    inside = values > _SPAN_RTOL**2 * values[-1]
    if inside.sum() > keys.shape[1] // 2:
        return None
    return np.linalg.norm(keys @ vectors[:, inside], axis=1)


def _unit(rows: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    return rows / np.where(norms == 0, 1.0, norms)


@dataclass(frozen=True, slots=True)
class CheckConflictsPass(EditPass):
    name: ClassVar[str] = "check-conflicts"

    threshold: float = 0.95
    on_conflict: Literal["warn", "error"] = "warn"

    def __post_init__(self) -> None:
        self.check_range("threshold", self.threshold, 0.0, 1.0, low_open=True)

    def _findings(self, space: SpaceProgram) -> list[str]:
        erase = space.erase
        index = _first_rows(space)
        keys = _unit(erase.keys[index])
        found = []
        if space.preserve.count:
            closest = keys @ _unit(space.preserve.keys).T  # cosine with each preserve row
            # the span is only informative while the preserve rows leave room (a prior spans all of R^d)
            inside = _span_cosines(keys, space.preserve)
            if inside is None:
                inside = closest.max(axis=1)
            for position, (row, cosine) in enumerate(zip(index, inside)):
                if max(cosine, closest[position].max()) >= self.threshold:
                    j = int(np.argmax(closest[position]))
                    source, other = erase.provenance[row], space.preserve.provenance[j]
                    where = "lies in the preserved span" if closest[position, j] < self.threshold else "is preserved too"
                    found.append(
                        f"erase {source.request!r} (prompt {source.prompt!r}) {where} "
                        f"(cosine {max(cosine, closest[position].max()):.3f}); closest preserve prompt {other.prompt!r}"
                    )
        if erase.guides is not None and index.size > 1:
            guides = _unit(erase.guides[index])
            key_cos, guide_cos = keys @ keys.T, guides @ guides.T
            names = [erase.provenance[i].request for i in index]
            for a in range(index.size):
                for b in range(a + 1, index.size):
                    if names[a] != names[b] and key_cos[a, b] >= self.threshold and guide_cos[a, b] < self.threshold:
                        pa, pb = erase.provenance[index[a]], erase.provenance[index[b]]
                        found.append(
                            f"erase {pa.request!r} (prompt {pa.prompt!r}) and {pb.request!r} (prompt {pb.prompt!r}) "
                            f"share keys (cosine {key_cos[a, b]:.3f}) but go to different anchors"
                        )
        return found

    def apply(self, program: EditProgram) -> EditProgram:
        found = [f"key space {space.space}: {message}" for space in program.spaces for message in self._findings(space)]
        if not found:
            return program
        if self.on_conflict == "error":
            more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
            raise PassError(f"{found[0]}{more}; set options.on_conflict: warn to build anyway")
        return program.with_diagnostics(*(Diagnostic(origin=self.name, severity="warning", message=m) for m in found))
