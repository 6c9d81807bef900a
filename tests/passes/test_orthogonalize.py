from dataclasses import replace

import numpy as np
import pytest

from erasec.passes.errors import PassError, PassOptionError
from erasec.passes.orthogonalize import OrthogonalizePass
from erasec.passes.pipeline import Pipeline
from erasec.passes.solve import SolvePass
from programs import base_weights, random_program


@pytest.mark.parametrize("concepts", [1, 10, 100])
def test_hard_mode_keeps_every_preserved_output(concepts):
    """After orthogonalize{mode=hard}, each preserved row's K/V output moves by ≤ 1e-6 relative, in every site."""
    rng = np.random.default_rng(concepts)
    program = random_program(rng, dim=256, erase=concepts, preserve=concepts, lam=0.5)
    weights = base_weights(program.target, rng)
    solved = Pipeline.parse("orthogonalize{mode=hard tau=1e-9},solve").apply(program)
    solution = solved.solution.spaces[0]
    preserve = program.spaces[0].preserve.keys
    for path, w0 in weights.items():
        moved = np.linalg.norm(preserve @ solution.delta(path, w0).T, axis=1)
        assert np.all(moved <= 1e-6 * np.linalg.norm(preserve @ w0.T, axis=1))
    # and the edit still does its job on the erase rows (they are not in the preserved span)
    erase = program.spaces[0].erase
    gap_before = np.linalg.norm(erase.guides - erase.keys)
    shared = np.eye(256) + solution.left @ solution.right.T
    assert np.linalg.norm(erase.keys @ shared.T - erase.guides) < 0.9 * gap_before
    # without the pass the preserved outputs do move
    free = SolvePass().apply(program).solution.spaces[0]
    w0 = next(iter(weights.values()))
    assert np.linalg.norm(preserve @ free.delta(next(iter(weights)), w0).T) > 1e-5 * np.linalg.norm(preserve @ w0.T)


def test_hard_mode_matches_speeds_closed_form():
    """SPEED: ΔT = (S_at − S_tt) P (S_tt P + αI)⁻¹, S means over targets, P = I − UUᵀ (U: retain eigvecs ≥ τ)."""
    rng = np.random.default_rng(3)
    dim, n, tau, alpha = 12, 4, 0.5, 0.7
    program = random_program(rng, dim=dim, erase=n, preserve=6, lam=alpha)
    space = program.spaces[0]
    program = replace(program, spaces=(replace(space, erase=space.erase.select(np.ones(n, bool), np.full(n, 1 / n))),))
    space = program.spaces[0]
    K, A = space.erase.keys.T, space.erase.guides.T
    R, p = space.preserve.keys.T, space.preserve.weights
    s_tt, s_at = K @ K.T / n, A @ K.T / n
    s_rr = (R * (p / p.sum())) @ R.T
    values, vectors = np.linalg.eigh(s_rr)
    u = vectors[:, values >= tau]
    P = np.eye(dim) - u @ u.T
    expected = (s_at - s_tt) @ P @ np.linalg.inv(s_tt @ P + alpha * np.eye(dim))
    # SPEED has no soft preserve term: only the projector
    no_soft = replace(space, preserve=space.preserve.select(np.ones(6, bool), np.zeros(6)))
    constrained = OrthogonalizePass(mode="hard", tau=tau).apply(program)
    hard_only = replace(constrained, spaces=(replace(constrained.spaces[0], preserve=no_soft.preserve),))
    solution = SolvePass().apply(hard_only).solution.spaces[0]
    got = solution.left @ solution.right.T
    assert np.linalg.norm(got - expected) <= 1e-8 * np.linalg.norm(expected)


def test_separable_requests_can_be_removed_exactly():
    rng = np.random.default_rng(5)
    requests = ("a", "b", "c")
    program = random_program(rng, dim=16, erase=6, preserve=4, hard=1, requests=requests)
    weights = base_weights(program.target, rng)
    full = Pipeline.parse("orthogonalize{mode=separable},solve").apply(program).solution.spaces[0]
    assert [name for name, _ in full.blocks] == list(requests)
    erase = program.spaces[0].erase
    names = np.array([p.request for p in erase.provenance])
    delta = full.left @ full.right.T
    for j in requests:
        block = full.left @ full.right.T - full.without(j).left @ full.without(j).right.T
        # request j's delta vanishes on every other request's keys
        assert np.linalg.norm(block @ erase.keys[names != j].T) <= 1e-10 * np.linalg.norm(block)
        # removing j: its keys go back to the base, every other key keeps its edited output
        rest = full.without(j).left @ full.without(j).right.T
        assert np.linalg.norm(rest @ erase.keys[names == j].T) <= 1e-10 * np.linalg.norm(delta)
        np.testing.assert_allclose(rest @ erase.keys[names != j].T, delta @ erase.keys[names != j].T, atol=1e-10)
        # and equals compiling the others with j's keys held fixed (hard rows)
        space = program.spaces[0]
        without = replace(
            program,
            requests=tuple(r for r in requests if r != j),
            spaces=(
                replace(
                    space,
                    erase=space.erase.select(names != j),
                    hard=replace(space.hard, keys=np.concatenate([space.hard.keys, erase.keys[names == j]]),
                                 provenance=space.hard.provenance + tuple(replace(erase.provenance[i], request="preserve") for i in np.flatnonzero(names == j))),
                ),
            ),
        )
        rebuilt = Pipeline.parse("orthogonalize{mode=separable},solve").apply(without).solution.spaces[0]
        for path, w0 in weights.items():
            np.testing.assert_allclose(rebuilt.delta(path, w0), full.without(j).delta(path, w0), atol=1e-10)


def test_separable_says_how_many_rows_fit():
    program = random_program(np.random.default_rng(0), dim=6, erase=6, preserve=2, hard=2, requests=("a", "b"))
    with pytest.raises(PassError) as error:
        OrthogonalizePass(mode="separable").apply(program)
    assert str(error.value) == (
        "mode=separable: key space clip-l has room for 4 request rows (d=6, hard rows take 2); the requests need 6. "
        "Split the spec into several patches or use mode=hard"
    )


def test_refuses_a_bad_tau():
    with pytest.raises(PassOptionError, match=r"^orthogonalize\{tau\}: 0 is not in \(0, 1e\+12\]$"):
        OrthogonalizePass(tau=0.0)


def test_round_trip():
    text = "orthogonalize{mode=separable tau=0.01 soft=true}"
    assert str(Pipeline.parse(text)) == text
