"""Folded rows (``ir.Moments``): the solve and every pass that reads sums see exactly what the
explicit rows would give them, and the passes that need rows one by one refuse folded ones."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from erasec.ir import EraseRows, MomentSum, Moments, PreserveRows, VerifyError
from erasec.ir.printer import print_program
from erasec.passes.errors import PassError
from erasec.passes.orthogonalize import preserve_subspace
from erasec.passes.pipeline import Pipeline
from erasec.passes.solve import SolvePass
from programs import random_program


def _fold_erase(rows: EraseRows, explicit: int) -> EraseRows:
    """The same rows with all but the first ``explicit`` folded, in two batches."""
    fold = MomentSum(rows.keys.shape[1], cross=True)
    rest = np.arange(explicit, rows.count)
    for part in np.array_split(rest, 2):
        fold.add(rows.keys[part], rows.weights[part], [rows.provenance[i].prompt for i in part], rows.guides[part])
    head = np.arange(rows.count) < explicit
    return replace(rows.select(head), folded=fold.result())


def _fold_preserve(rows: PreserveRows, explicit: int) -> PreserveRows:
    fold = MomentSum(rows.keys.shape[1], cross=False)
    rest = np.arange(explicit, rows.count)
    for part in np.array_split(rest, 3):
        fold.add(rows.keys[part], rows.weights[part], [rows.provenance[i].prompt for i in part])
    return replace(rows.select(np.arange(rows.count) < explicit), folded=fold.result())


def _shift(program) -> np.ndarray:
    space = SolvePass().apply(program).solution.spaces[0]
    return space.left @ space.right.T


def _folded(program, erase: int | None = None, preserve: int | None = None):
    space = program.spaces[0]
    if erase is not None:
        space = replace(space, erase=_fold_erase(space.erase, erase))
    if preserve is not None:
        space = replace(space, preserve=_fold_preserve(space.preserve, preserve))
    return replace(program, spaces=(space,))


def test_moment_sum_equals_the_rows_sums():
    rng = np.random.default_rng(0)
    keys, guides, weights = rng.standard_normal((9, 4)), rng.standard_normal((9, 4)), rng.uniform(0.1, 2, 9)
    fold = MomentSum(4, cross=True)
    fold.add(keys[:5], weights[:5], ["b", "a"], guides[:5])
    fold.add(keys[5:], weights[5:], ["a"], guides[5:])
    moments = fold.result()
    np.testing.assert_allclose(moments.gram, keys.T @ (keys * weights[:, None]), rtol=1e-12)
    np.testing.assert_allclose(moments.plain, keys.T @ keys, rtol=1e-12)
    np.testing.assert_allclose(moments.cross, (guides - keys).T @ (keys * weights[:, None]), rtol=1e-12)
    assert (moments.rows, moments.prompts) == (9, ("a", "b"))
    assert moments.weight == pytest.approx(weights.sum())
    matrix = rng.standard_normal((4, 4))
    assert moments.trace(matrix) == pytest.approx(np.einsum("ij,jk,ik->", keys, matrix, keys))


def test_nothing_folded_is_none():
    assert MomentSum(3, cross=False).result() is None


def test_bad_moments_are_refused():
    with pytest.raises(VerifyError, match=r"^folded.plain: shape \(2, 2\), expected \(3, 3\)$"):
        Moments(gram=np.eye(3), plain=np.eye(2), rows=1, weight=1.0, prompts=("a",))
    with pytest.raises(VerifyError, match="^folded: 0 rows"):
        Moments(gram=np.eye(3), plain=np.eye(3), rows=0, weight=1.0, prompts=())
    with pytest.raises(VerifyError, match="^preserve.folded.cross: given for preserve rows$"):
        PreserveRows(keys=np.zeros((0, 3)), weights=np.zeros(0), provenance=(),
                     folded=Moments(gram=np.eye(3), plain=np.eye(3), cross=np.eye(3), rows=1, weight=1.0, prompts=("a",)))
    with pytest.raises(VerifyError, match="^erase.folded: dimension 3, the rows have 4$"):
        EraseRows(keys=np.zeros((0, 4)), guides=np.zeros((0, 4)), weights=np.zeros(0), provenance=(),
                  folded=Moments(gram=np.eye(3), plain=np.eye(3), cross=np.eye(3), rows=1, weight=1.0, prompts=("a",)))


@pytest.mark.parametrize("erase, preserve", [(2, None), (None, 3), (1, 0)])
def test_solve_is_the_same_with_folded_rows(erase, preserve):
    program = random_program(np.random.default_rng(1), dim=6, erase=9, preserve=12, requests=("x", "y"))
    folded = _folded(program, erase, preserve)
    np.testing.assert_allclose(_shift(folded), _shift(program), rtol=1e-10, atol=1e-12)
    solved = SolvePass().apply(folded).solution.spaces[0]
    assert solved.report.residual < 1e-10


def test_folded_erase_rows_give_the_full_rank_form_even_when_few():
    program = random_program(np.random.default_rng(2), dim=6, erase=3, preserve=2)
    space = SolvePass().apply(_folded(program, erase=1)).solution.spaces[0]
    assert space.rank == 6
    np.testing.assert_allclose(space.left @ space.right.T, _shift(program), rtol=1e-10, atol=1e-12)


def test_orthogonalize_reads_the_folded_preserve_moment():
    program = random_program(np.random.default_rng(3), dim=6, erase=2, preserve=12)
    whole = preserve_subspace(program.spaces[0], 0.05)
    folded = preserve_subspace(_folded(program, preserve=2).spaces[0], 0.05)
    assert whole.shape == folded.shape and whole.shape[1] > 0
    np.testing.assert_allclose(folded @ folded.T, whole @ whole.T, atol=1e-10)
    hard = Pipeline.parse("orthogonalize{tau=0.05 soft=false},solve")
    np.testing.assert_allclose(
        _shift(hard.apply(_folded(program, preserve=2))), _shift(hard.apply(program)), rtol=1e-9, atol=1e-12
    )


@pytest.mark.parametrize(
    "pipeline",
    ["adversarial{rounds=1},solve", "orthogonalize{mode=separable},solve"],
)
def test_passes_that_read_erase_rows_refuse_folded_ones(pipeline):
    program = _folded(random_program(np.random.default_rng(4), dim=6, erase=4, preserve=3, requests=("x", "y")), erase=2)
    parsed = Pipeline.parse(pipeline)
    assert parsed.reads_erase_rows()
    with pytest.raises(PassError, match="needs every erase row, but 2 are folded into moments"):
        parsed.apply(program)


def test_sum_reading_pipelines_take_folded_rows():
    # mine-neighbors mines the explicit rows and keeps the folded ones (tests/passes/test_mine_neighbors.py)
    for text in ("canonicalize,solve", "canonicalize,filter-preserve,check-conflicts,invariants,solve", "mine-neighbors,solve"):
        assert not Pipeline.parse(text).reads_erase_rows()
    assert not Pipeline.parse("adversarial{rounds=0},solve").reads_erase_rows()


def test_filter_preserve_refuses_a_folded_prompt_that_names_an_erased_concept():
    program = random_program(np.random.default_rng(5), dim=6, erase=2, preserve=4, requests=("x",))
    space = program.spaces[0]
    fold = MomentSum(6, cross=False)
    fold.add(np.ones((1, 6)), np.ones(1), ["a photo of X"])
    program = replace(program, spaces=(replace(space, preserve=replace(space.preserve, folded=fold.result())),))
    with pytest.raises(PassError, match="preserve prompt 'a photo of X' names an erased concept but its rows are folded"):
        Pipeline.parse("filter-preserve").apply(program)


def test_printed_ir_shows_the_folded_rows():
    program = _folded(random_program(np.random.default_rng(6), dim=5, erase=4, preserve=5), erase=1, preserve=2)
    text = print_program(program)
    assert "    erase rows=1 target=guide\n      folded rows=3 prompts=1 w=" in text
    assert "    preserve rows=2\n      folded rows=3 prompts=" in text
