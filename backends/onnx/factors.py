"""What an ONNX rewrite applies: per site, the low-rank factors of ΔW, from a ``Solution``.

A site is named by its diffusers module path; the graph's scopes are matched to it exactly
(``locate.py``). ``ΔW = up @ down`` in float64 (a patch file's ``alpha / r`` is already folded
into ``up`` by the reader, ``compiler/patch_apply.patch_solution``). Zero rank components — the
kohya backend's uniform-rank padding (research/ecosystem.md §1.7) — are dropped, so a graph
carries only the rank the edit has.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np

from erasec.ir import ModelTarget, Solution

from ..errors import BackendError
from ..factors import full_width


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class SiteDelta:
    """``ΔW = up @ down`` for one Linear site, float64, read-only."""

    module_path: str  # diffusers path, e.g. down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k
    up: np.ndarray  # (out, r)
    down: np.ndarray  # (r, in)

    def __post_init__(self) -> None:
        up = np.array(self.up, dtype=np.float64)
        down = np.array(self.down, dtype=np.float64)
        if up.ndim != 2 or down.ndim != 2 or up.shape[1] != down.shape[0]:
            raise BackendError(f"onnx: {self.module_path}: up {up.shape} and down {down.shape} are not (out, r), (r, in)")
        keep = np.any(down != 0, axis=1) & np.any(up != 0, axis=0)
        up, down = up[:, keep], down[keep, :]
        up.flags.writeable = False
        down.flags.writeable = False
        object.__setattr__(self, "up", up)
        object.__setattr__(self, "down", down)

    @property
    def rank(self) -> int:
        return self.down.shape[0]

    @property
    def shape(self) -> tuple[int, int]:
        """(out, in) of the Linear weight this delta adds to."""
        return self.up.shape[0], self.down.shape[1]

    def delta(self) -> np.ndarray:
        return self.up @ self.down


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class PatchDeltas:
    """Every site delta of one patch, plus what identifies the base it was compiled against."""

    source: str  # where the deltas came from, for messages
    sites: tuple[SiteDelta, ...]
    base_pin: Mapping[str, object] | None = None  # the patch's erasec.base (patches/pin.py), if any
    metadata: Mapping[str, str] | None = None  # erasec.* keys to record in the graph's metadata_props

    def __post_init__(self) -> None:
        if not self.sites:
            raise BackendError(f"{self.source}: no edited sites")
        paths = [site.module_path for site in self.sites]
        if len(set(paths)) != len(paths):
            raise BackendError(f"{self.source}: a site is listed twice")

    def site(self, module_path: str) -> SiteDelta:
        for site in self.sites:
            if site.module_path == module_path:
                return site
        raise KeyError(module_path)


def deltas_from_solution(
    solution: Solution,
    *,
    source: str,
    target: ModelTarget | None = None,
    base_weights: Mapping[str, np.ndarray] | None = None,
    base_pin: Mapping[str, object] | None = None,
    metadata: Mapping[str, str] | None = None,
) -> PatchDeltas:
    """The site deltas of a solution: per-layer factors as stored; the shared form
    (``up = W0_l L``, ``down = Rᵀ``) needs the target's sites and their base weights. ``down``
    spans the weight's full width (SDXL's pooled site: zero beyond its pooled columns)."""
    sites = []
    for space in solution.spaces:
        if space.form == "per-layer":
            sites.extend(SiteDelta(module_path=l.module_path, up=l.up, down=l.down) for l in space.layers)
            continue
        if target is None or base_weights is None:
            raise BackendError(f"{source}: a shared-form solution needs the model target and base weights")
        for site in target.space(space.space).sites:
            if space.edits(site.role):
                up, down = space.factors(site.module_path, base_weights[site.module_path])
                sites.append(SiteDelta(module_path=site.module_path, up=up, down=full_width(site, down)))
    return PatchDeltas(source=source, sites=tuple(sites), base_pin=base_pin, metadata=metadata)
