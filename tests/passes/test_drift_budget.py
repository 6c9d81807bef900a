"""drift-budget: the erase-weight scale it picks keeps the preserved rows' drift within the budget.

The drift is re-measured here the long way, site by site from random base weights and the solved
factors (``Σ_l Σ_c ‖ΔW_l c‖² / Σ_l Σ_c ‖W0_l c‖²``), not through the site Gram the pass uses.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from erasec.ir import HardRows, MomentSum, PreserveRows, Provenance
from erasec.passes.drift_budget import RTOL, DriftBudgetPass, DriftProblem, search
from erasec.passes.errors import DriftBudgetError, PassError
from erasec.passes.pipeline import Pipeline
from erasec.passes.solve import SolvePass
from programs import random_program, with_site_gram, with_space

BINDS = 1e-3  # a binding budget lands within this fraction below it (the pass stops at RTOL = 1e-4)


def _program(seed: int = 0, *, dim: int = 8, erase: int = 3, preserve: int = 12, hard: int = 0, lam: float = 0.5):
    rng = np.random.default_rng(seed)
    program = random_program(rng, dim=dim, erase=erase, preserve=preserve, hard=hard, lam=lam)
    return with_site_gram(program, rng)


def _measured(program, weights, rows: np.ndarray) -> float:
    """The drift of ``rows`` under the solved program, site by site."""
    solution = program.solution.space(program.spaces[0].space)
    moved = base = 0.0
    for path, w0 in weights.items():
        moved += np.sum((rows @ solution.delta(path, w0).T) ** 2)
        base += np.sum((rows @ w0.T) ** 2)
    return float(np.sqrt(moved / base))


def _full_drift(program, weights) -> float:
    return _measured(SolvePass().apply(program), weights, program.spaces[0].preserve.keys)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("hard", [0, 2])
def test_a_binding_budget_lands_on_it(seed: int, hard: int) -> None:
    program, weights = _program(seed, hard=hard)
    budget = 0.7 * _full_drift(program, weights)
    solved = Pipeline.parse(f"drift-budget{{max-drift={budget!r} floor=0.1}},solve").apply(program)
    drift = _measured(solved, weights, program.spaces[0].preserve.keys)
    landed = solved.spaces[0].drift
    assert budget * (1 - BINDS) <= drift <= budget * (1 + 1e-9)
    assert landed.binding and 0 < landed.scale < 1
    assert landed.drift == pytest.approx(drift, rel=1e-9)  # what it records is what the solve did
    np.testing.assert_allclose(solved.spaces[0].erase.weights, program.spaces[0].erase.weights * landed.scale, rtol=1e-15)
    assert [d.severity for d in solved.diagnostics] == ["warning"]
    assert f"erases at {landed.scale:.3g} × the spec's erase weights" in solved.diagnostics[0].message


def test_a_budget_that_does_not_bind_changes_nothing_but_the_record() -> None:
    program, weights = _program(1)
    full = _full_drift(program, weights)
    budgeted = DriftBudgetPass(max_drift=min(0.99, 2 * full)).apply(program)
    assert budgeted.spaces[0].erase is program.spaces[0].erase
    assert budgeted.spaces[0].drift.scale == 1.0 and not budgeted.spaces[0].drift.binding
    assert budgeted.spaces[0].drift.drift == pytest.approx(full, rel=1e-9)
    assert budgeted.diagnostics == ()
    plain, after = SolvePass().apply(program).solution.spaces[0], SolvePass().apply(budgeted).solution.spaces[0]
    np.testing.assert_array_equal(plain.left @ plain.right.T, after.left @ after.right.T)


def test_folded_rows_count_exactly() -> None:
    """Preserve and erase rows folded into moments (as the lowering streams many rows) give the
    same landing as the same rows kept explicit, and the budget holds on all of them."""
    program, weights = _program(2, dim=6, erase=8, preserve=20)
    space = program.spaces[0]
    keep = 3
    preserve_sum, erase_sum = MomentSum(6, cross=False), MomentSum(6, cross=True)
    preserve_sum.add(space.preserve.keys[keep:], space.preserve.weights[keep:], ["p"])
    erase_sum.add(space.erase.keys[keep:], space.erase.weights[keep:], ["x"], space.erase.guides[keep:])
    folded = with_space(
        program,
        preserve=replace(space.preserve.select(np.arange(20) < keep), folded=preserve_sum.result()),
        erase=replace(space.erase.select(np.arange(8) < keep), folded=erase_sum.result()),
    )
    budget = 0.7 * _full_drift(program, weights)
    explicit = DriftBudgetPass(max_drift=budget, floor=0.1).apply(program).spaces[0].drift
    moments = Pipeline.parse(f"drift-budget{{max-drift={budget!r} floor=0.1}},solve").apply(folded)
    assert moments.spaces[0].drift.scale == pytest.approx(explicit.scale, rel=1e-9)
    assert moments.spaces[0].drift.preserve_rows == 20
    assert budget * (1 - BINDS) <= _measured(moments, weights, space.preserve.keys) <= budget * (1 + 1e-9)


@pytest.mark.parametrize("seed", range(200))
def test_drift_rises_with_the_erase_weight_on_random_programs(seed: int) -> None:
    """Not proved in general (passes/drift_budget.py says what is); checked on 200 fixed programs
    of varied size, ridge and hard rows (the search does not rely on it)."""
    rng = np.random.default_rng(seed)
    dim = int(rng.integers(3, 9))
    program = random_program(
        rng, dim=dim, erase=int(rng.integers(1, dim + 2)), preserve=int(rng.integers(1, 2 * dim)),
        hard=int(rng.integers(0, 2)), lam=float(rng.choice([0.01, 0.5, 5.0])),
    )
    program, _ = with_site_gram(program, rng)
    problem = DriftProblem.of(program.spaces[0], dim)
    drifts = np.array([problem.drift(problem.solve(s)) for s in np.geomspace(1e-4, 1, 40)])
    assert np.all(np.diff(drifts) >= -1e-12 * drifts.max())


def test_a_budget_no_erasure_meets_is_refused_with_the_least_drift() -> None:
    program, _ = _program(3)
    problem = DriftProblem.of(program.spaces[0], 8)
    with pytest.raises(DriftBudgetError) as refused:
        search(problem, 1e-6, 0.5, "key space clip-l")
    message = str(refused.value)
    least = float(message.split("the least drift of any erasure is ")[1].split(" ")[0])
    fix = float(message.split("raise options.max_drift to ")[1].split(" ")[0])
    assert 1e-6 < least <= fix < least * 1.01
    # the fix it names works, and lands at the efficacy floor: half the spec's efficacy
    landed = search(problem, fix, 0.5, "key space clip-l")
    assert landed.drift <= fix and landed.efficacy == pytest.approx(0.5 * landed.full_efficacy, rel=2e-2)
    with pytest.raises(DriftBudgetError):
        search(problem, least * 0.99, 0.5, "key space clip-l")
    assert message.startswith("key space clip-l: no erasure meets the drift budget 1e-06: ")


def test_the_search_stops_within_its_tolerance_in_few_solves() -> None:
    program, weights = _program(4, dim=12, erase=4, preserve=30)
    budget = 0.7 * _full_drift(program, weights)
    landed = DriftBudgetPass(max_drift=budget, floor=0.1).apply(program).spaces[0].drift
    assert budget * (1 - RTOL) <= landed.drift <= budget
    assert landed.solves <= 20


def test_refusals() -> None:
    program, _ = _program(5)
    no_preserve = with_space(program, preserve=PreserveRows(keys=np.zeros((0, 8)), weights=np.zeros(0), provenance=()))
    with pytest.raises(DriftBudgetError, match=r"^key space clip-l: no preserve rows to measure drift on; add preserve"):
        DriftBudgetPass().apply(no_preserve)
    with pytest.raises(PassError, match=r"^key space clip-l: no site Gram"):
        DriftBudgetPass().apply(with_space(program, site_gram=None))
    with pytest.raises(PassError, match=r"needs the shared form"):
        DriftBudgetPass().apply(with_space(program, separable=True))
    once = DriftBudgetPass(max_drift=0.9).apply(program)
    with pytest.raises(PassError, match=r"already budgeted"):
        DriftBudgetPass().apply(once)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("drift-budget{max-drift=0}", "drift-budget{max-drift}: 0 is not in (0, 1)"),
        ("drift-budget{max-drift=1}", "drift-budget{max-drift}: 1 is not in (0, 1)"),
        ("drift-budget{max-drift=-0.1}", "drift-budget{max-drift}: -0.1 is not in (0, 1)"),
        ("drift-budget{floor=0}", "drift-budget{floor}: 0 is not in (0, 1]"),
    ],
)
def test_options_out_of_range(text: str, message: str) -> None:
    with pytest.raises(PassError) as refused:
        Pipeline.parse(text)
    assert str(refused.value) == f"pipeline {text!r}: column 1: {message}"


def test_text_round_trip() -> None:
    text = "drift-budget{max-drift=0.05 floor=0.5}"
    assert str(Pipeline.parse(text)) == text
    assert str(Pipeline.parse("drift-budget{max-drift=0.125}")) == "drift-budget{max-drift=0.125 floor=0.5}"


def test_hard_rows_stay_exact_under_the_budget() -> None:
    program, weights = _program(6, hard=0)
    rng = np.random.default_rng(60)
    hard = HardRows(keys=rng.standard_normal((2, 8)), provenance=(Provenance(request="invariant", prompt="", token=0),) * 2)
    program = with_space(program, hard=hard)
    budget = 0.7 * _full_drift(program, weights)
    solved = Pipeline.parse(f"drift-budget{{max-drift={budget!r} floor=0.1}},solve").apply(program)
    solution = solved.solution.spaces[0]
    assert np.abs(hard.keys @ solution.right @ solution.left.T).max() < 1e-10
