"""The held-out selective-erasure data (benchmarks/data/selective/) and benchmarks/selective.py's
measures on hand-made matrices whose values are known (issue 15 item 5). Fast: no model is opened."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import numpy as np
import pytest
from erasec.compiler.eval.metrics import output_change

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("selective", ROOT / "benchmarks" / "selective.py")
selective = sys.modules["selective"] = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(selective)

STOP = {"the", "of", "from", "a", "an", "and", "s"}


def _words(text: str) -> set[str]:
    return set(re.findall(r"[a-z0-9]+", text.casefold()))


@pytest.fixture(scope="module")
def splits():
    return {split: selective.load_concepts(split) for split in selective.SPLITS}


def test_every_concept_has_both_splits_and_enough_prompts(splits):
    tune, test = splits["tune"], splits["test"]
    assert len(tune) >= 110
    assert [c.name for c in tune] == [c.name for c in test]  # the concept list is shared
    assert len({c.name.casefold() for c in tune}) == len(tune)
    assert {c.kind for c in tune} == set(selective.ANCHORS)  # all seven kinds
    for concepts in splits.values():
        for c in concepts:
            assert len(c.paraphrases) >= 3 and len(c.neighbours) >= 3, c.name


def test_splits_share_no_paraphrase_and_no_neighbour(splits):
    names = {c.name.casefold() for c in splits["tune"]}
    neighbours = {split: {n.casefold() for c in cs for n, _ in c.neighbours} for split, cs in splits.items()}
    assert not neighbours["tune"] & neighbours["test"]
    assert not (neighbours["tune"] | neighbours["test"]) & names  # a neighbour is never an erased concept
    paraphrases = {split: {p for c in cs for p in c.paraphrases} for split, cs in splits.items()}
    assert not paraphrases["tune"] & paraphrases["test"]


def test_a_paraphrase_never_names_its_concept_nor_another(splits):
    names = [c.name for c in splits["tune"]]
    patterns = {name: re.compile(rf"\b{re.escape(name.casefold())}\b") for name in names}
    for concepts in splits.values():
        for c in concepts:
            for prompt in c.paraphrases:
                assert not (_words(c.name) - STOP) & _words(prompt), (c.name, prompt)
                assert not any(p.search(prompt.casefold()) for p in patterns.values()), prompt
            for _, prompt in c.neighbours:  # a neighbour prompt names no erased concept either
                assert not any(p.search(prompt.casefold()) for p in patterns.values()), prompt


def test_test_neighbours_file_lists_the_test_split():
    listed = (selective.DATA / "test_neighbours.txt").read_text(encoding="utf-8").splitlines()
    assert listed == selective.neighbour_names("test")


def test_a_malformed_file_is_one_error_naming_it(tmp_path):
    bad = tmp_path / "concepts.yaml"
    bad.write_text("- concept: X\n  kind: artist\n  tune: {paraphrases: [a, b], neighbours: {Y: y, Z: z, W: w}}\n")
    with pytest.raises(selective.DataError, match=r"concepts\.yaml: 'X': tune needs at least 3 paraphrases"):
        selective.load_concepts("tune", bad)
    bad.write_text("- concept: X\n  kind: painter\n")
    with pytest.raises(selective.DataError, match="kind 'painter' is not one of"):
        selective.load_concepts("tune", bad)


def test_selections_mix_the_kinds_and_are_deterministic(splits):
    concepts = splits["tune"]
    first = selective.selections(concepts, [1, 10, 100], singles=7, seed=0)
    again = selective.selections(concepts, [1, 10, 100], singles=7, seed=0)
    assert [[c.name for c in s] for s in first[100]] == [[c.name for c in s] for s in again[100]]
    assert len(first[1]) == 7 and all(len(s) == 1 for s in first[1])
    assert {c.kind for s in first[1] for c in s} == set(selective.ANCHORS)
    assert {c.kind for c in first[10][0]} == set(selective.ANCHORS)
    assert len({c.name for c in first[100][0]}) == 100


def test_movement_through_grams_matches_the_site_by_site_sum():
    rng = np.random.default_rng(3)
    weights = {"a": rng.normal(size=(5, 4)), "b": rng.normal(size=(6, 4))}
    deltas = {"a": rng.normal(size=(5, 4)) * 0.1, "b": np.zeros((6, 4))}
    rows = rng.normal(size=(7, 4))
    owner = np.array([0, 0, 0, 1, 1, 2, 2])
    base = sum(w.T @ w for w in weights.values())
    got = selective.movements(rows, owner, 3, selective.drift_gram(deltas), base)
    moved, scale = output_change(rows, weights, deltas)  # the eval's per-row sums, site by site
    want = [np.sqrt(moved[owner == i].sum() / scale[owner == i].sum()) for i in range(3)]
    np.testing.assert_allclose(got, want, rtol=1e-12)


def test_movement_of_a_hand_made_edit():
    # W0 = I (2 × 2), ΔW = diag(0.3, 0): the row (1, 0) moves by 0.3, (0, 1) not at all, and the
    # prompt holding both by sqrt(0.09 / 2)
    base = np.eye(2)
    drift = selective.drift_gram({"site": np.diag([0.3, 0.0])})
    rows = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
    got = selective.movements(rows, np.array([0, 1, 2, 2]), 3, drift, base)
    np.testing.assert_allclose(got, [0.3, 0.0, np.sqrt(0.09 / 2)], atol=1e-15)


def test_bound_when_drift_does_not_bind():
    # paraphrases live on axis 1, neighbours on both, COCO on axis 2: D = diag(u², 0) is optimal,
    # N² = u²/2, so the best pooled U/N is √2 whatever the drift budget
    a, b, f = np.diag([1.0, 0.0]), np.diag([0.5, 0.5]), np.diag([0.0, 1.0])
    assert selective.best_ratio(a, b, f, u=0.4, budget=0.05) == pytest.approx(np.sqrt(2), rel=1e-3)


def test_bound_when_drift_binds():
    # U² = (D11 + D22)/2 ≥ u², N² = D11, F² = D22 ≤ φ²: the least N is sqrt(2u² − φ²)
    a, b, f = np.diag([0.5, 0.5]), np.diag([1.0, 0.0]), np.diag([0.0, 1.0])
    for u, budget in ((1.0, 0.5), (1.0, 1.0), (0.3, 0.1)):
        want = np.sqrt(2 * u * u - budget * budget)
        assert selective.least_neighbour_movement(a, b, f, u, budget) == pytest.approx(want, rel=1e-3)


def test_variants_carry_spec_options():
    v = selective.parse_variant("erasec:max_drift=0.05,rece.rounds=2,pipeline=canonicalize", ("erasec", "uce"))
    assert (v.method, v.options) == ("erasec", {"max_drift": 0.05, "rece": {"rounds": 2}, "pipeline": "canonicalize"})
    assert selective.parse_variant("uce", ("erasec", "uce")).label == "uce"
    with pytest.raises(selective.DataError, match="unknown preset 'ucee'"):
        selective.parse_variant("ucee:lambda=1", ("erasec", "uce"))
    with pytest.raises(selective.DataError, match="is not key=value"):
        selective.parse_variant("uce:lambda", ("erasec", "uce"))


def test_variants_carry_preset_fields():
    """``preset.FIELD`` keys replace the preset's lowering defaults (the spec cannot name them)."""
    v = selective.parse_variant("erasec:preset.prior_rows=tokens,preset.prior_scale=3000,lambda=1", ("erasec", "uce"))
    assert (v.fields, v.options) == ({"prior_rows": "tokens", "prior_scale": 3000}, {"lambda": 1})
    with pytest.raises(selective.DataError, match="preset.pipeline is not one of preset.rows"):
        selective.parse_variant("erasec:preset.pipeline=solve", ("erasec", "uce"))
