"""Pass name → lazy import, the one table of every pass (as xdsl/transforms/__init__.py does)."""

from __future__ import annotations

import difflib
import importlib

from .base import EditPass

_PASSES: dict[str, str] = {
    "adversarial": "erasec.passes.adversarial:AdversarialPass",
    "canonicalize": "erasec.passes.canonicalize:CanonicalizePass",
    "check-conflicts": "erasec.passes.check_conflicts:CheckConflictsPass",
    "directed-augment": "erasec.passes.directed_augment:DirectedAugmentPass",
    "drift-budget": "erasec.passes.drift_budget:DriftBudgetPass",
    "filter-preserve": "erasec.passes.filter_preserve:FilterPreservePass",
    "influence-filter": "erasec.passes.influence_filter:InfluenceFilterPass",
    "mine-neighbors": "erasec.passes.mine_neighbors:MineNeighborsPass",
    "orthogonalize": "erasec.passes.orthogonalize:OrthogonalizePass",
    "rece": "erasec.passes.rece:RecePass",
    "compress": "erasec.passes.compress:CompressPass",
    "invariants": "erasec.passes.invariants:InvariantsPass",
    "solve": "erasec.passes.solve:SolvePass",
    "solve-exact": "erasec.passes.solve:ExactSolvePass",
}


def pass_names() -> tuple[str, ...]:
    return tuple(sorted(_PASSES))


def unknown_pass_hint(name: str, also: tuple[str, ...] = ()) -> str:
    """The end of a message about an unknown pass ``name``: the closest name (of the passes and
    ``also``, e.g. ``all``), or the list of them."""
    close = difflib.get_close_matches(name, (*pass_names(), *also), n=1)
    if close:
        return f"; did you mean {close[0]!r}?"
    return f"; passes are: {', '.join(pass_names())}" + (f", or {', '.join(also)}" if also else "")


def get_pass_class(name: str) -> type[EditPass] | None:
    target = _PASSES.get(name)
    if target is None:
        return None
    module, attr = target.split(":")
    return getattr(importlib.import_module(module), attr)
