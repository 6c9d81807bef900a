"""The program a compilation transforms: per key space, the rows of one ridge least squares.

For each key space the objective over every site W0_l it feeds is (DESIGN.md §4)

    Σ_i w_i‖W k_i − v*_i‖² + Σ_j p_j‖W k_j − W0 k_j‖² + λ‖W − W0‖²,   subject to ΔW h = 0 (hard rows)

``invariant_rows`` are rows the model frontend knows to be prompt-independent or to drive the
unconditional branch (BOS, the empty prompt's rows); they do nothing until the ``invariants``
pass turns them into hard rows.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Literal

import numpy as np

from .arrays import frozen_array
from .drift import DriftLanding
from .errors import VerifyError
from .rows import EraseRows, HardRows, PreserveRows
from .site_rows import SiteRows
from .solution import Solution
from .target import ROLES, ModelTarget


def phrase_pattern(phrases: list[str]) -> re.Pattern | None:
    """One regex matching any phrase as whole words, case-insensitively (longest first): how
    ``filter-preserve`` and the lowering tell that a prompt names a request's phrase."""
    words = sorted({p.strip() for p in phrases if p.strip()}, key=lambda p: (-len(p), p))
    if not words:
        return None
    return re.compile(r"(?<!\w)(?:" + "|".join(re.escape(w) for w in words) + r")(?!\w)", re.IGNORECASE)


@dataclass(frozen=True, slots=True, kw_only=True)
class Diagnostic:
    """A finding a pass reports without failing (filtered prompts, conflicts), shown by the build."""

    origin: str  # the pass name
    severity: Literal["note", "warning"]
    message: str


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class SpaceProgram:
    space: str
    lam: float  # ridge λ
    erase: EraseRows
    preserve: PreserveRows
    hard: HardRows
    invariant_rows: HardRows
    # Σ_l W0_lᵀ W0_l over the space's edited sites (d, d): the metric in which a change of the shared
    # map T shows in the K/V outputs of all layers together (adversarial, compress, evaluation).
    site_gram: np.ndarray | None = None
    roles: tuple[str, ...] = ("k", "v")  # which sites the edit applies to (SPEED edits to_v only)
    # each request solved on its own, its delta vanishing on the other requests' keys (SRS-ME),
    # so that its contribution can later be removed without touching the rest
    separable: bool = False
    # RECE's attack stage (passes/rece.py): each erase prompt's 77 padded rows paired position by
    # position with its guide's 77 rows, and the retain rows of that stage; None for other methods
    attack_sources: EraseRows | None = None
    attack_retain: PreserveRows | None = None
    # per edited site, in target order: W0_l and rows of that site alone (ir/site_rows.py); empty
    # unless a pass reads the base weights (SPEED's per-layer retain sets)
    site_rows: tuple[SiteRows, ...] = ()
    # where drift-budget put the erase weights (passes/drift_budget.py); None: no budget
    drift: DriftLanding | None = None

    def __post_init__(self) -> None:
        if self.site_gram is not None:
            object.__setattr__(self, "site_gram", frozen_array(self.site_gram, where=f"spaces[{self.space}].site_gram", ndim=2))

    def verify(self, target: ModelTarget) -> None:
        where = f"spaces[{self.space}]"
        try:
            space = target.space(self.space)
        except KeyError:
            raise VerifyError(f"{where}: the model has no key space {self.space!r}") from None
        if self.site_gram is not None and self.site_gram.shape != (space.dim, space.dim):
            raise VerifyError(f"{where}.site_gram: shape {self.site_gram.shape}, expected ({space.dim}, {space.dim})")
        if not self.roles or any(role not in ROLES for role in self.roles):
            raise VerifyError(f"{where}.roles: {self.roles} must be a non-empty subset of {ROLES}")
        if not (math.isfinite(self.lam) and self.lam >= 0):
            raise VerifyError(f"{where}.lam: {self.lam} is not a finite number ≥ 0")
        for name, rows in (
            ("erase", self.erase),
            ("preserve", self.preserve),
            ("hard", self.hard),
            ("invariant_rows", self.invariant_rows),
            *((name, rows) for name, rows in (("attack_sources", self.attack_sources), ("attack_retain", self.attack_retain)) if rows is not None),
        ):
            if rows.keys.shape[1] != space.dim:
                raise VerifyError(f"{where}.{name}.keys: width {rows.keys.shape[1]}, the space has {space.dim}")
            for i, prov in enumerate(rows.provenance):
                if not prov.request:
                    raise VerifyError(f"{where}.{name}[{i}]: no provenance")
        if self.site_rows:
            paths = [rows.module_path for rows in self.site_rows]
            expected = [site.module_path for site in space.sites if site.role in self.roles]
            if paths != expected:
                raise VerifyError(f"{where}.site_rows: sites {paths}, expected the edited sites {expected} in order")
            for rows in self.site_rows:
                rows.check(f"{where}.site_rows[{rows.module_path}]", space.site(rows.module_path).out_features, space.dim)
        if self.erase.residuals is not None:
            paths = [path for path, _ in self.erase.residuals]
            expected = sorted(site.module_path for site in space.sites)
            if paths != expected:
                raise VerifyError(f"{where}.erase.residuals: sites {paths} do not match the space's {expected}")
            for path, residual in self.erase.residuals:
                out = space.site(path).out_features
                if residual.shape[0] != out:
                    raise VerifyError(f"{where}.erase.residuals[{path}]: {residual.shape[0]} rows, site has {out}")


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class EditProgram:
    target: ModelTarget
    requests: tuple[str, ...]  # erase request names, in spec order
    spaces: tuple[SpaceProgram, ...]
    solution: Solution | None = None
    # per request, the phrases that name it (concept and synonyms); empty = the request name alone
    phrases: tuple[tuple[str, ...], ...] = ()
    diagnostics: tuple[Diagnostic, ...] = ()

    def request_phrases(self, request: str) -> tuple[str, ...]:
        index = self.requests.index(request)
        return self.phrases[index] if self.phrases else (request,)

    def with_diagnostics(self, *found: Diagnostic) -> "EditProgram":
        from dataclasses import replace

        return replace(self, diagnostics=self.diagnostics + tuple(found))

    def space(self, name: str) -> SpaceProgram:
        for space in self.spaces:
            if space.space == name:
                return space
        raise KeyError(name)

    def verify(self) -> None:
        """Check the whole program; raise ``VerifyError`` naming the first bad path."""
        names = [space.space for space in self.spaces]
        if len(set(names)) != len(names):
            raise VerifyError(f"spaces: key space listed twice in {names}")
        if len(set(self.requests)) != len(self.requests):
            raise VerifyError(f"requests: duplicate request name in {list(self.requests)}")
        if self.phrases and len(self.phrases) != len(self.requests):
            raise VerifyError(f"phrases: {len(self.phrases)} entries for {len(self.requests)} requests")
        known = set(self.requests) | {"preserve", "invariant"}
        for space in self.spaces:
            space.verify(self.target)
            for i, prov in enumerate(space.erase.provenance):
                if prov.request not in self.requests:
                    raise VerifyError(f"spaces[{space.space}].erase[{i}]: unknown request {prov.request!r}")
            for i, prov in enumerate(space.hard.provenance):
                if prov.request not in known:
                    raise VerifyError(f"spaces[{space.space}].hard[{i}]: unknown request {prov.request!r}")
        if self.solution is not None:
            solved = sorted(s.space for s in self.solution.spaces)
            if solved != sorted(names):
                raise VerifyError(f"solution: solves key spaces {solved}, the program has {sorted(names)}")
            for sol in self.solution.spaces:
                space = self.target.space(sol.space)
                if sol.form == "shared":
                    if sol.left.shape[0] != space.dim:
                        raise VerifyError(f"solution[{sol.space}].left: {sol.left.shape[0]} rows, space has {space.dim}")
                else:
                    paths = sorted(layer.module_path for layer in sol.layers)
                    expected = sorted(site.module_path for site in space.sites)
                    edited = sorted(site.module_path for site in space.sites if sol.edits(site.role))
                    if paths not in (expected, edited):  # per-site solves factor only the edited sites
                        raise VerifyError(f"solution[{sol.space}]: factors for {paths}, the space feeds {expected}")
