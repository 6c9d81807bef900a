"""A spec's method made concrete: the pipeline text it builds with (the method's preset, or the
spec's ``options.pipeline``, with the spec's dtype, ``on_conflict``, ``rece`` schedule and
``max_drift`` budget applied)."""

from __future__ import annotations

import dataclasses

from erasec.passes.check_conflicts import CheckConflictsPass
from erasec.passes.pipeline import Pipeline
from erasec.compiler.frontend.presets import PRESETS

from ..errors import SpecError
from .spec import Spec


def pipeline_text(spec: Spec) -> str:
    """The method's pipeline (or the spec's), with ``compress{dtype=…}`` appended when it has none and
    ``options.on_conflict`` applied to its ``check-conflicts`` (added in front when it has none)."""
    text = spec.options.pipeline or PRESETS[spec.method].pipeline
    names = [part.split("{")[0].strip() for part in text.split(",")]
    if "compress" not in names:
        text = f"{text},compress{{dtype={spec.output.dtype}}}"
    if spec.options.on_conflict is not None:
        passes = Pipeline.parse(text).passes
        if not any(p.name == "check-conflicts" for p in passes):
            passes = (CheckConflictsPass(),) + passes
        passes = tuple(
            dataclasses.replace(p, on_conflict=spec.options.on_conflict) if p.name == "check-conflicts" else p
            for p in passes
        )
        text = str(Pipeline(passes))
    if spec.options.rece is not None:
        text = _with_rece_schedule(spec, text)
    if spec.options.max_drift is not None:
        text = _with_drift_budget(spec, text)
    return text


def _with_drift_budget(spec: Spec, text: str) -> str:
    """``options.max_drift`` as a ``drift-budget`` pass right before the pipeline's ``solve`` (it
    re-weights the rows that solve reads), or the budget set on the one the pipeline already has."""
    from erasec.passes.drift_budget import DriftBudgetPass

    passes = Pipeline.parse(text).passes
    names = [p.name for p in passes]
    if "drift-budget" in names:
        return str(Pipeline(tuple(
            dataclasses.replace(p, max_drift=spec.options.max_drift) if p.name == "drift-budget" else p for p in passes
        )))
    if "solve" not in names:
        raise SpecError(
            f"{spec.where('options.max_drift')}: the pipeline has no solve pass to budget (method {spec.method} "
            "solves in its own rounds); remove max_drift or use a method that ends in solve"
        )
    at = names.index("solve")
    return str(Pipeline(passes[:at] + (DriftBudgetPass(max_drift=spec.options.max_drift),) + passes[at:]))


def _with_rece_schedule(spec: Spec, text: str) -> str:
    """``options.rece`` applied to the pipeline's ``rece`` pass: the named recipe's settings, then
    the spec's own rounds, attack_lambda, retain (the pass fills what is left from the recipe)."""
    from erasec.passes.rece import RecePass

    passes = Pipeline.parse(text).passes
    if not any(p.name == "rece" for p in passes):
        raise SpecError(f"{spec.where('options.rece')}: the pipeline has no rece pass; use method: rece")
    schedule = dict(spec.options.rece)
    passes = tuple(
        RecePass(
            recipe=schedule.get("recipe", p.recipe),
            rounds=schedule.get("rounds", -1),
            attack_lambda=schedule.get("attack_lambda", -1.0),
            retain=schedule.get("retain", "recipe"),
            lambda_=p.lambda_,
            preserve_scale=p.preserve_scale,
            max_condition=p.max_condition,
        )
        if p.name == "rece"
        else p
        for p in passes
    )
    return str(Pipeline(passes))
