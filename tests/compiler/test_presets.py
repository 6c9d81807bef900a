"""Each method preset against a plain implementation of its published formula (float64, 1e-8).

The plain versions are written the way the papers state them — dense per-layer solves, explicit
inverses of small matrices — independently of erasec's solver, on random inputs. Row selection
(which embedding rows a method uses) is the lowering's job and is tested on a real model in
tests/compiler/test_reference.py; here every preset gets the same random rows.
"""

from dataclasses import replace

import numpy as np
import pytest

from erasec.ir import EraseRows, HardRows, PreserveRows, Provenance
from erasec.passes.pipeline import Pipeline
from erasec.compiler.frontend.presets import PRESETS
from programs import base_weights, random_program

DIM = 10


def _program(preset, seed=0, erase=3, preserve=4):
    rng = np.random.default_rng(seed)
    program = random_program(rng, dim=DIM, erase=erase, preserve=preserve, lam=preset.lam)
    weights = base_weights(program.target, rng)
    space = program.spaces[0]
    roles = preset.roles
    gram = sum(w.T @ w for site, w in zip(program.target.sites, weights.values()) if site.role in roles)
    empty = rng.standard_normal((7, DIM))
    invariant = HardRows(keys=empty, provenance=tuple(Provenance(request="invariant", prompt="", token=t) for t in range(7)))
    erase_rows = space.erase
    if preset.erase_weighting == "mean":
        erase_rows = erase_rows.select(np.ones(erase, bool), np.full(erase, 1.0 / erase))
    space = replace(space, erase=erase_rows, site_gram=gram, invariant_rows=invariant, roles=roles)
    return replace(program, spaces=(space,)), weights


def _plain_ridge(w0, K, G, w, Kp, p, lam):
    """W = (λW0 + Σ w (W0 g) kᵀ + Σ p (W0 kp) kpᵀ)(λI + Σ w k kᵀ + Σ p kp kpᵀ)⁻¹ − W0."""
    mat1 = lam * w0 + (w0 @ G * w) @ K.T + (w0 @ Kp * p) @ Kp.T
    mat2 = lam * np.eye(K.shape[0]) + (K * w) @ K.T + (Kp * p) @ Kp.T
    return mat1 @ np.linalg.inv(mat2) - w0


def _run(name, program, pipeline=None):
    return Pipeline.parse(pipeline or PRESETS[name].pipeline).apply(program).solution.spaces[0]


def _compare(solution, weights, expected, sites):
    for site in sites:
        w0 = weights[site.module_path]
        got = solution.delta(site.module_path, w0) if solution.edits(site.role) else np.zeros_like(w0)
        want = expected[site.module_path]
        scale = max(np.linalg.norm(want), 1e-300)
        assert np.linalg.norm(got - want) <= 1e-8 * scale, site.module_path


@pytest.mark.parametrize("name", ["uce", "uce-legacy", "time"])
def test_ridge_presets(name):
    program, weights = _program(PRESETS[name], preserve=0 if name == "time" else 4)
    space = program.spaces[0]
    K, G, w = space.erase.keys.T, space.erase.guides.T, space.erase.weights
    Kp, p = space.preserve.keys.T, space.preserve.weights
    expected = {path: _plain_ridge(w0, K, G, w, Kp, p, space.lam) for path, w0 in weights.items()}
    _compare(_run(name, program), weights, expected, program.target.sites)


def test_rece_joint_two_rounds():
    """rece-joint, erasec's variant: each round c' = argmin Σ_l ‖W'_l c' − W0_l c‖² + λ_r‖c'‖² (stacked
    least squares), then everything re-solved from W0."""
    program, weights = _program(PRESETS["rece-joint"])
    space = program.spaces[0]
    K, G, w = space.erase.keys.T, space.erase.guides.T, space.erase.weights
    Kp, p = space.preserve.keys.T, space.preserve.weights
    lam_r = 0.1
    keys, guides, ws = K, G, w
    for _ in range(2):
        edited = {path: w0 + _plain_ridge(w0, keys, guides, ws, Kp, p, space.lam) for path, w0 in weights.items()}
        stacked = np.concatenate([edited[path] for path in weights] + [np.sqrt(lam_r) * np.eye(DIM)])
        attacks = []
        for c in K.T:
            target = np.concatenate([weights[path] @ c for path in weights] + [np.zeros(DIM)])
            attacks.append(np.linalg.lstsq(stacked, target, rcond=None)[0])
        keys = np.concatenate([keys, np.array(attacks).T], axis=1)
        guides = np.concatenate([guides, G], axis=1)
        ws = np.concatenate([ws, w])
    expected = {path: _plain_ridge(w0, keys, guides, ws, Kp, p, space.lam) for path, w0 in weights.items()}
    _compare(_run("rece-joint", program), weights, expected, program.target.sites)


def _with_attack_rows(program, rng, sources=2, retain=3):
    space = program.spaces[0]
    attack = EraseRows(
        keys=rng.standard_normal((sources, DIM)),
        guides=rng.standard_normal((sources, DIM)),
        weights=np.ones(sources),
        provenance=tuple(Provenance(request=program.requests[0], prompt="c", token=t) for t in range(sources)),
    )
    kept = PreserveRows(
        keys=rng.standard_normal((retain, DIM)),
        weights=np.full(retain, 2.0),
        provenance=tuple(Provenance(request="preserve", prompt=" ", token=t) for t in range(retain)),
    )
    return replace(program, spaces=(replace(space, attack_sources=attack, attack_retain=kept),))


def test_rece_sequential_rounds_edit_the_current_weights():
    """rece: UCE from W0, then per round c' from the current W_e and
    W_{e+1} = (λ W_e + Σ W_e g c'ᵀ + ps Σ W_e p pᵀ)(λI + Σ c'c'ᵀ + ps Σ ppᵀ)⁻¹, per layer (explicit inverses);
    the shared factored map the pass returns gives the same ΔW on every layer."""
    program, weights = _program(PRESETS["rece"], seed=3)
    program = _with_attack_rows(program, np.random.default_rng(9))
    space = program.spaces[0]
    K, G, w = space.erase.keys.T, space.erase.guides.T, space.erase.weights
    Kp, p = space.preserve.keys.T, space.preserve.weights
    C, Cg = space.attack_sources.keys.T, space.attack_sources.guides.T
    R, r = space.attack_retain.keys.T, space.attack_retain.weights * 0.1
    current = {path: w0 + _plain_ridge(w0, K, G, w, Kp, p, space.lam) for path, w0 in weights.items()}
    for _ in range(3):
        mat1 = 0.1 * np.eye(DIM) + sum(wc.T @ wc for wc in current.values())
        mat2 = sum(current[path].T @ w0 for path, w0 in weights.items())
        attack = np.linalg.inv(mat1) @ mat2 @ C
        current = {
            path: wc + _plain_ridge(wc, attack, Cg, np.ones(C.shape[1]), R, r, 0.1) for path, wc in current.items()
        }
    expected = {path: current[path] - w0 for path, w0 in weights.items()}
    _compare(_run("rece", program), weights, expected, program.target.sites)


def test_speed_closed_form_with_invariants():
    """ΔW = W0 (S_at − S_tt) P [I − M K2 (K2ᵀ P M K2)⁻¹ K2ᵀ P] M,  M = (S_tt P + αI)⁻¹  (SPEED eq., λ = 0),
    on to_v only; K2 = BOS row + 3 position-contiguous centroids of the empty prompt's rows. The preset's
    pipeline without its retain-set passes: the script's --aug_num 0, which skips IPF and DPA."""
    preset = PRESETS["speed"]
    program, weights = _program(preset, erase=3, preserve=2)
    space = program.spaces[0]
    # one preserved direction below tau: held softly by nobody, as in SPEED (soft=false matters here)
    small = space.preserve.keys * np.array([[1.0], [0.05]])
    preserve = PreserveRows(keys=small, weights=space.preserve.weights, provenance=space.preserve.provenance)
    space = replace(space, preserve=preserve)
    program = replace(program, spaces=(space,))
    n = 3
    K, A = space.erase.keys.T, space.erase.guides.T
    s_tt, s_at = K @ K.T / n, A @ K.T / n
    R, p = space.preserve.keys.T, space.preserve.weights
    s_rr = (R * (p / p.sum())) @ R.T
    values, vectors = np.linalg.eigh(s_rr)
    u = vectors[:, values >= 0.1]
    P = np.eye(DIM) - u @ u.T
    empty = space.invariant_rows.keys
    K2 = np.stack([empty[0], empty[1:3].mean(0), empty[3:5].mean(0), empty[5:7].mean(0)], axis=1)
    alpha = preset.lam
    M = np.linalg.inv(s_tt @ P + alpha * np.eye(DIM))
    inner = np.eye(DIM) - M @ K2 @ np.linalg.inv(K2.T @ P @ M @ K2) @ K2.T @ P
    shared = (s_at - s_tt) @ P @ inner @ M
    expected = {
        site.module_path: (weights[site.module_path] @ shared if site.role == "v" else np.zeros_like(weights[site.module_path]))
        for site in program.target.sites
    }
    closed_form = PRESETS["speed"].pipeline.replace("influence-filter,", "").replace("directed-augment{count=10 seed=0},", "")
    solution = _run("speed", program, closed_form)
    assert solution.roles == ("v",)
    _compare(solution, weights, expected, program.target.sites)


def test_speed_retain_passes_against_the_script_on_many_rows():
    """The whole preset (IPF, then DPA's copies kept per chunk of 128 rows) against the script's
    edit_model (tests/reference_edit.py, Ouxiang-Li/SPEED @6d3df0c train_erase_null.py) on 400 retain
    rows near a 3-dimensional subspace, so that IPF keeps more than one chunk and a null space is left;
    both sides draw from numpy generators seeded alike."""
    import torch
    from erasec.ir import SiteRows
    from reference_edit import speed_edit

    preset = PRESETS["speed"]
    program, weights = _program(preset, erase=3, preserve=0)
    rng = np.random.default_rng(5)
    retain = rng.standard_normal((400, 3)) @ rng.standard_normal((3, DIM)) + 0.01 * rng.standard_normal((400, DIM))
    preserve = PreserveRows(keys=retain, weights=np.ones(400), provenance=tuple(Provenance(request="preserve", prompt=f"p{i}", token=1) for i in range(400)))
    sites = tuple(SiteRows(module_path=s.module_path, weight=weights[s.module_path]) for s in program.target.sites if s.role == "v")
    space = replace(program.spaces[0], preserve=preserve, site_rows=sites)
    program = replace(program, spaces=(space,))
    filtered = Pipeline.parse("influence-filter").apply(program).spaces[0].site_rows
    assert all(site.preserve.count > 128 for site in filtered)  # DPA sees two chunks

    def t(array):
        return torch.from_numpy(np.array(array))  # a writable copy of a read-only IR array
    empty = space.invariant_rows.keys
    K2 = np.stack([empty[0], empty[1:3].mean(0), empty[3:5].mean(0), empty[5:7].mean(0)], axis=1)
    edited = speed_edit(
        {site.module_path: t(site.weight) for site in sites},
        t(space.erase.keys),
        t(space.erase.guides),
        t(retain),
        t(K2),
        rng=np.random.default_rng(0),
        retain_scale=preset.lam,
    )
    expected = {
        site.module_path: (edited[site.module_path].numpy() - weights[site.module_path] if site.role == "v" else np.zeros_like(weights[site.module_path]))
        for site in program.target.sites
    }
    solution = _run("speed", program)
    assert solution.form == "per-layer"
    _compare(solution, weights, expected, program.target.sites)
