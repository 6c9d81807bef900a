import numpy as np
import pytest

from erasec.passes.canonicalize import CanonicalizePass
from erasec.passes.errors import PassOptionError
from erasec.passes.pipeline import Pipeline
from erasec.passes.solve import SolvePass
from programs import duplicate_rows_program, random_program


def test_merging_leaves_the_solution_unchanged():
    program = duplicate_rows_program(3)
    before = SolvePass().apply(program).solution.spaces[0]
    after = SolvePass().apply(CanonicalizePass().apply(program)).solution.spaces[0]
    d0 = before.left @ before.right.T
    d1 = after.left @ after.right.T
    assert np.linalg.norm(d1 - d0) <= 1e-10 * np.linalg.norm(d0)
    assert after.rank == 2 and before.rank == 4


def test_returns_the_same_object_when_nothing_changes():
    program = random_program(np.random.default_rng(1))
    assert CanonicalizePass().apply(program) is program


def test_distinct_rows_are_kept():
    rng = np.random.default_rng(2)
    program = random_program(rng, dim=5, erase=4, preserve=4)
    out = CanonicalizePass(eps=1e-6).apply(program)
    assert out.spaces[0].erase.count == 4 and out.spaces[0].preserve.count == 4


def test_refuses_an_out_of_range_eps():
    with pytest.raises(PassOptionError, match=r"^canonicalize\{eps\}: 0.1 is not in \[0, 0.001\]$"):
        CanonicalizePass(eps=0.1)


def test_round_trip():
    assert str(Pipeline.parse("canonicalize{eps=1e-6}")) == "canonicalize{eps=1e-06}"
