import numpy as np
import pytest

from erasec.passes.errors import PassOptionError
from erasec.passes.invariants import InvariantsPass
from erasec.passes.pipeline import Pipeline
from erasec.passes.solve import SolvePass
from programs import invariant_rows_program, random_program


def test_promoted_rows_are_kept_exactly():
    program = invariant_rows_program()
    out = SolvePass().apply(InvariantsPass(centroids=0).apply(program))
    space = out.solution.spaces[0]
    delta = space.left @ space.right.T
    rows = program.spaces[0].invariant_rows.keys
    assert np.linalg.norm(delta @ rows.T) <= 1e-10 * np.linalg.norm(delta) * np.linalg.norm(rows)
    # and without the pass the edit does move them
    free = SolvePass().apply(program).solution.spaces[0]
    assert np.linalg.norm((free.left @ free.right.T) @ rows.T) > 1e-3


def test_centroids_are_means_of_contiguous_positions():
    program = invariant_rows_program(rows=7)
    out = InvariantsPass(bos=False, centroids=2).apply(program)
    rows = program.spaces[0].invariant_rows.keys
    np.testing.assert_allclose(out.spaces[0].hard.keys, [rows[1:4].mean(0), rows[4:7].mean(0)], rtol=1e-15)
    assert out.spaces[0].invariant_rows.count == 1  # BOS stays a candidate


def test_nothing_to_promote_returns_the_same_program():
    program = random_program(np.random.default_rng(0))
    assert InvariantsPass().apply(program) is program


def test_refuses_negative_centroids():
    with pytest.raises(PassOptionError, match=r"^invariants\{centroids\}: -1 is not in \[0, 77\]$"):
        InvariantsPass(centroids=-1)


def test_round_trip():
    text = "invariants{bos=false empty=true centroids=0}"
    assert str(Pipeline.parse(text)) == text
