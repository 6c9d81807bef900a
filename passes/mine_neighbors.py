"""mine-neighbors — erase the neighbourhood of each concept row, not just the row.

RealEra (Liu et al., 2024, arXiv 2410.09140; research/methods.md §5.1) observes that an erased
concept comes back through prompts whose embeddings lie near it (paraphrases, misspellings,
"concept residuals") and mines perturbed copies ``k + η`` of each erase row, mapped to the same
anchor. Here ``η = ρ‖k‖·z/‖z‖`` with ``z ~ N(0, I)`` and ``ρ ~ U(0, radius]``: ``count`` copies per
row, each with the row's guide and ``weight`` × its weight. The generator of a row is seeded from
``seed`` and the row's own provenance (prompt, token, copy), so the mined rows do not depend on
the order of the spec's entries. Only guide targets (the shared form) can be mined: a per-layer
target for ``k + η`` would need the base weights.

The pass mines the explicit erase rows and leaves folded ones (``ir.Moments``) as they are, so it does
not stop the lowering from folding: with a last-token row rule every erase row is explicit (each is a
prompt's subject row), and where rows fold — a diffusion transformer's hundreds of padded rows per
prompt, once they outnumber the key width — each prompt's subject row is mined and memory stays
O(d² + prompts·d) (docs/compiler.md, "Rows stream in and fold into moments").
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, replace
from typing import ClassVar

import numpy as np

from erasec.ir import EditProgram, EraseRows, Provenance

from .base import EditPass
from .errors import PassError


def _row_rng(seed: int, provenance: Provenance) -> np.random.Generator:
    tag = zlib.crc32(f"{provenance.request}\x00{provenance.prompt}\x00{provenance.token}".encode())
    return np.random.default_rng([seed, tag])


@dataclass(frozen=True, slots=True)
class MineNeighborsPass(EditPass):
    name: ClassVar[str] = "mine-neighbors"

    count: int = 4
    radius: float = 0.1
    seed: int = 0
    weight: float = 1.0

    def __post_init__(self) -> None:
        self.check_range("count", self.count, 0, 1000)
        self.check_range("radius", self.radius, 0.0, 2.0, low_open=True)
        self.check_range("weight", self.weight, 0.0, 1e6, low_open=True)

    def _mine(self, rows: EraseRows) -> EraseRows:
        keys, guides, weights, provenance = [rows.keys], [rows.guides], [rows.weights], list(rows.provenance)
        for i, source in enumerate(rows.provenance):
            rng = _row_rng(self.seed, source)
            directions = rng.standard_normal((self.count, rows.keys.shape[1]))
            directions /= np.linalg.norm(directions, axis=1, keepdims=True)
            scale = rng.uniform(0.0, self.radius, self.count)
            scale = np.where(scale == 0.0, self.radius, scale)  # U(0, radius]
            keys.append(rows.keys[i] + (scale * np.linalg.norm(rows.keys[i]))[:, None] * directions)
            guides.append(np.repeat(rows.guides[i][None], self.count, axis=0))
            weights.append(np.full(self.count, self.weight * rows.weights[i]))
            provenance.extend(
                Provenance(request=source.request, prompt=f"{source.prompt} ~{j + 1}", token=source.token)
                for j in range(self.count)
            )
        return EraseRows(
            keys=np.concatenate(keys),
            guides=np.concatenate(guides),
            weights=np.concatenate(weights),
            provenance=tuple(provenance),
            folded=rows.folded,
        )

    def apply(self, program: EditProgram) -> EditProgram:
        if self.count == 0:
            return program
        spaces = []
        for space in program.spaces:
            if not space.erase.shared:
                raise PassError(f"key space {space.space}: per-layer targets cannot be mined; use guide (anchor) targets")
            spaces.append(replace(space, erase=self._mine(space.erase)))
        return replace(program, spaces=tuple(spaces))
