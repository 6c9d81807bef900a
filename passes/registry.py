"""Pass name → lazy import, the one table of every pass (as xdsl/transforms/__init__.py does)."""

from __future__ import annotations

import importlib

from .base import EditPass

_PASSES: dict[str, str] = {
    "adversarial": "erasec.passes.adversarial:AdversarialPass",
    "canonicalize": "erasec.passes.canonicalize:CanonicalizePass",
    "check-conflicts": "erasec.passes.check_conflicts:CheckConflictsPass",
    "filter-preserve": "erasec.passes.filter_preserve:FilterPreservePass",
    "mine-neighbors": "erasec.passes.mine_neighbors:MineNeighborsPass",
    "orthogonalize": "erasec.passes.orthogonalize:OrthogonalizePass",
    "rece": "erasec.passes.rece:RecePass",
    "compress": "erasec.passes.compress:CompressPass",
    "invariants": "erasec.passes.invariants:InvariantsPass",
    "solve": "erasec.passes.solve:SolvePass",
}


def pass_names() -> tuple[str, ...]:
    return tuple(sorted(_PASSES))


def get_pass_class(name: str) -> type[EditPass] | None:
    target = _PASSES.get(name)
    if target is None:
        return None
    module, attr = target.split(":")
    return getattr(importlib.import_module(module), attr)
