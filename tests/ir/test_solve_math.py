"""Properties of the closed-form solve on random systems (float64)."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from erasec.passes.solve import SolvePass, system_matrix
from programs import as_per_layer, base_weights, random_program

sizes = st.fixed_dictionaries(
    {
        "seed": st.integers(0, 2**32 - 1),
        "dim": st.integers(2, 12),
        "erase": st.integers(1, 15),
        "preserve": st.integers(0, 15),
        "lam": st.sampled_from([1e-3, 0.1, 0.5, 3.0]),
    }
)


def _solve(program):
    return SolvePass().apply(program).solution.spaces[0]


def _shared_delta(solution):
    return solution.left @ solution.right.T


@settings(max_examples=60, deadline=None)
@given(sizes)
def test_normal_equations_hold(case):
    rng = np.random.default_rng(case["seed"])
    program = random_program(rng, dim=case["dim"], erase=case["erase"], preserve=case["preserve"], lam=case["lam"])
    space = program.spaces[0]
    delta = _shared_delta(_solve(program))
    # d/dT of the objective: (T − I) A − (G − K) diag(w) Kᵀ = 0
    rhs = ((space.erase.guides - space.erase.keys).T * space.erase.weights) @ space.erase.keys
    gap = delta @ system_matrix(space, case["dim"]) - rhs
    assert np.linalg.norm(gap) <= 1e-8 * max(np.linalg.norm(rhs), 1.0)


@settings(max_examples=40, deadline=None)
@given(sizes)
def test_shared_form_equals_per_layer_form(case):
    rng = np.random.default_rng(case["seed"])
    program = random_program(rng, dim=case["dim"], erase=case["erase"], preserve=case["preserve"], lam=case["lam"])
    weights = base_weights(program.target, rng)
    shared = _solve(program)
    per_layer = _solve(as_per_layer(program, weights))
    assert shared.form == "shared" and per_layer.form == "per-layer"
    for path, w0 in weights.items():
        expected = per_layer.delta(path, w0)
        got = shared.delta(path, w0)
        assert np.linalg.norm(got - expected) <= 1e-8 * max(np.linalg.norm(expected), 1e-300)


@settings(max_examples=40, deadline=None)
@given(sizes)
def test_rank_never_exceeds_erase_rows(case):
    rng = np.random.default_rng(case["seed"])
    program = random_program(rng, dim=case["dim"], erase=case["erase"], preserve=case["preserve"], lam=case["lam"])
    solution = _solve(program)
    assert solution.rank <= min(case["erase"], case["dim"])
    assert np.linalg.matrix_rank(_shared_delta(solution)) <= case["erase"]


@settings(max_examples=40, deadline=None)
@given(sizes, st.integers(1, 4))
def test_hard_rows_are_exact(case, hard):
    rng = np.random.default_rng(case["seed"])
    dim = max(case["dim"], hard + 1)
    program = random_program(rng, dim=dim, erase=case["erase"], preserve=case["preserve"], lam=case["lam"], hard=hard)
    delta = _shared_delta(_solve(program))
    hard_keys = program.spaces[0].hard.keys
    assert np.linalg.norm(delta @ hard_keys.T) <= 1e-10 * max(np.linalg.norm(delta), 1.0) * np.linalg.norm(hard_keys)


def test_hard_solution_is_the_constrained_minimiser():
    """Against a plain null-space parametrisation: T − I = Z N, N spanning the complement of H."""
    rng = np.random.default_rng(7)
    program = random_program(rng, dim=8, erase=3, preserve=4, hard=2)
    space = program.spaces[0]
    A = system_matrix(space, 8)
    B = ((space.erase.guides - space.erase.keys).T * space.erase.weights) @ space.erase.keys
    _, _, vt = np.linalg.svd(space.hard.keys)
    null = vt[2:]  # rows spanning {x : H x = 0}; ΔW = Z null
    # minimise tr(Z N A Nᵀ Zᵀ) − 2 tr(B Nᵀ Zᵀ)  ⇒  Z = B Nᵀ (N A Nᵀ)⁻¹
    Z = np.linalg.solve(null @ A @ null.T, null @ B.T).T
    expected = Z @ null
    got = _shared_delta(_solve(program))
    assert np.linalg.norm(got - expected) <= 1e-10 * np.linalg.norm(expected)


@settings(max_examples=40, deadline=None)
@given(sizes)
def test_solved_weights_satisfy_the_objectives_normal_equations(case):
    """W = W0 + ΔW solves  W (λI + K W Kᵀ + Kp P Kpᵀ) = λW0 + V* W Kᵀ + W0 Kp P Kpᵀ  (W, P: weight diagonals)."""
    rng = np.random.default_rng(case["seed"])
    program = random_program(rng, dim=case["dim"], erase=case["erase"], preserve=case["preserve"], lam=case["lam"])
    weights = base_weights(program.target, rng)
    space = program.spaces[0]
    K, G, w = space.erase.keys.T, space.erase.guides.T, space.erase.weights
    Kp, p = space.preserve.keys.T, space.preserve.weights
    for form in (program, as_per_layer(program, weights)):
        solution = _solve(form)
        for path, w0 in weights.items():
            W = w0 + solution.delta(path, w0)
            lhs = W @ (case["lam"] * np.eye(case["dim"]) + (K * w) @ K.T + (Kp * p) @ Kp.T)
            rhs = case["lam"] * w0 + ((w0 @ G) * w) @ K.T + ((w0 @ Kp) * p) @ Kp.T
            assert np.linalg.norm(lhs - rhs) <= 1e-8 * np.linalg.norm(rhs)
