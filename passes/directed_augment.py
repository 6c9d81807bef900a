"""directed-augment — add, at each site, perturbed copies of the preserve rows (SPEED's DPA).

Li et al., 2025, arXiv 2503.07392, §4.2 "Directed Prior Augmentation"; research/methods.md §6.2
item 2; the code followed is Ouxiang-Li/SPEED @6d3df0c ``train_erase_null.py``
(``generate_perturbed_embs`` and the retain loop of ``edit_model``). A few retain prompts span few
directions, so the null-space projector built from them protects little beyond them. SPEED adds
perturbed copies ``r' = r + ε v vᵀ`` (``ε ~ N(0, I)``, one draw per copy) of each retain row, where
``v`` is the right-singular vector of the site's smallest singular value (``torch.svd(W0_l)``'s
last column: the input direction the layer maps most weakly, so the copies mean the same to the
layer), and keeps the copies the erase edit ``Δ0_l`` (``influence-filter``'s) moves more than their
mean — the copies worth protecting.

As the reference does, the rows are shuffled once (one permutation of the space's preserve rows,
applied to every site's), then taken in chunks of ``CHUNK``; within a chunk, ``count`` copies of
each mini-batch of ``MINI_BATCH`` rows are drawn in turn, and the kept copies are those above the
mean over the chunk's copies. Each copy weighs what its source row weighs (the reference's
retain moment is a plain mean). Every draw comes from one ``numpy.random.Generator`` seeded by
``seed`` (the reference: ``seed_everything(0)`` and torch's global generator), consumed in that
order, site by site in the target's order (down, mid, up blocks; the reference visits its state
dict's order, down, up, mid), so a build is reproducible and a test can replay the draws.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar

import numpy as np
from erasec.ir import (
    Diagnostic,
    EditProgram,
    PreserveRows,
    Provenance,
    SiteRows,
    SpaceProgram,
)

from .base import EditPass
from .errors import PassError
from .influence_filter import erase_map, influence, site_preserve

CHUNK = 128  # edit_model's chunk_size: the kept copies are those above the mean of their chunk's
MINI_BATCH = 8  # generate_perturbed_embs' mini_batch: the order the copies are drawn in


def weakest_direction(weight: np.ndarray) -> np.ndarray:
    """The right-singular vector (d,) of the smallest of the min(out, d) singular values of ``weight``."""
    return np.linalg.svd(weight, full_matrices=False)[2][-1]


def _ranked(rows: PreserveRows, rank: dict, where: str) -> PreserveRows:
    """``rows`` in the order of the space's shuffled preserve rows (``rank``: provenance → position)."""
    missing = [p for p in rows.provenance if (p.request, p.prompt, p.token) not in rank]
    if missing:
        raise PassError(f"{where}: preserve row {missing[0].prompt!r} (token {missing[0].token}) is not one of the "
                        "space's preserve rows; run directed-augment once, after influence-filter")
    order = np.argsort([rank[p.request, p.prompt, p.token] for p in rows.provenance], kind="stable")
    return PreserveRows(keys=rows.keys[order], weights=rows.weights[order], provenance=tuple(rows.provenance[i] for i in order))


@dataclass(frozen=True, slots=True)
class DirectedAugmentPass(EditPass):
    name: ClassVar[str] = "directed-augment"

    count: int = 10  # the reference's --aug_num: copies drawn per preserve row
    seed: int = 0

    def __post_init__(self) -> None:
        self.check_range("count", self.count, 0, 1000)
        self.check_range("seed", self.seed, 0, 2**63 - 1)

    def reads_site_weights(self) -> bool:
        return self.count > 0

    def reads_preserve_rows(self) -> bool:
        return self.count > 0

    def _augment(self, rows: PreserveRows, edit: np.ndarray, direction: np.ndarray, rng: np.random.Generator) -> PreserveRows:
        keys, weights, provenance = [], [], []
        for start in range(0, rows.count, CHUNK):
            chunk = np.arange(start, min(start + CHUNK, rows.count))
            made, source, copy = [], [], []
            for first in range(0, chunk.size, MINI_BATCH):
                mini = chunk[first : first + MINI_BATCH]
                for index in range(self.count):
                    noise = rng.standard_normal((mini.size, rows.keys.shape[1]))
                    made.append(rows.keys[mini] + np.outer(noise @ direction, direction))
                    source.extend(mini)
                    copy.extend([index + 1] * mini.size)
            made = np.concatenate(made)
            scores = influence(made, edit)
            keep = np.flatnonzero(scores > scores.mean())
            keys += [rows.keys[chunk], made[keep]]
            weights += [rows.weights[chunk], rows.weights[np.array(source, dtype=int)[keep]]]
            provenance += [rows.provenance[i] for i in chunk]
            for i in keep:
                origin = rows.provenance[source[i]]
                provenance.append(Provenance(request=origin.request, prompt=f"{origin.prompt} <augmented {copy[i]}>", token=origin.token))
        return PreserveRows(keys=np.concatenate(keys), weights=np.concatenate(weights), provenance=tuple(provenance))

    def _space(self, space: SpaceProgram, rng: np.random.Generator) -> tuple[SpaceProgram, Diagnostic]:
        if space.erase.total == 0:
            raise PassError(f"key space {space.space}: no erase rows; the spec must erase at least one concept")
        shuffled = rng.permutation(space.preserve.count)
        rank = {(p.request, p.prompt, p.token): position for position, p in enumerate(space.preserve.provenance[i] for i in shuffled)}
        shared = erase_map(space)
        sites: list[SiteRows] = []
        added = []
        for site in space.site_rows:
            rows = _ranked(site_preserve(space, site), rank, f"key space {space.space}, {site.module_path}")
            augmented = self._augment(rows, site.weight @ shared, weakest_direction(site.weight), rng) if rows.count else rows
            added.append(augmented.count - rows.count)
            sites.append(replace(site, preserve=augmented))
        note = Diagnostic(
            origin=self.name,
            severity="note",
            message=f"key space {space.space}: added {min(added)}–{max(added)} perturbed preserve rows per site "
            f"({self.count} drawn per row along the site's weakest input direction, seed {self.seed})",
        )
        return replace(space, site_rows=tuple(sites)), note

    def apply(self, program: EditProgram) -> EditProgram:
        if self.count == 0:
            return program
        self.check_site_weights(program)
        rng = np.random.default_rng(self.seed)
        spaces, found = [], []
        for space in program.spaces:
            if space.preserve.count == 0 or not space.site_rows:
                spaces.append(space)
                continue
            space, note = self._space(space, rng)
            spaces.append(space)
            found.append(note)
        if not found:
            return program
        return replace(program, spaces=tuple(spaces)).with_diagnostics(*found)
