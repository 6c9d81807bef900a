from dataclasses import replace

import numpy as np
import pytest

from erasec.ir import HardRows, Provenance
from erasec.ir.printer import print_program
from erasec.passes.errors import PassOptionError
from erasec.passes.invariants import InvariantsPass
from erasec.passes.pipeline import Pipeline
from erasec.passes.solve import SolvePass
from programs import random_program


def _program(rows=7, dim=10, seed=0):
    rng = np.random.default_rng(seed)
    program = random_program(rng, dim=dim, erase=2, preserve=2)
    invariant = HardRows(
        keys=rng.standard_normal((rows, dim)),
        provenance=tuple(Provenance(request="invariant", prompt="", token=t) for t in range(rows)),
    )
    return replace(program, spaces=(replace(program.spaces[0], invariant_rows=invariant),))


def test_golden():
    out = InvariantsPass(centroids=2).apply(_program())
    lines = print_program(out).splitlines()
    assert lines[9:14] == [
        "    hard rows=3",
        "      [0] 'invariant' prompt='' token=0 |k|=3.4",
        "      [1] 'invariant' prompt='' token=1 |k|=1.7",
        "      [2] 'invariant' prompt='' token=4 |k|=1.47",
        "    invariant-rows rows=0",
    ]


def test_promoted_rows_are_kept_exactly():
    program = _program()
    out = SolvePass().apply(InvariantsPass(centroids=0).apply(program))
    space = out.solution.spaces[0]
    delta = space.left @ space.right.T
    rows = program.spaces[0].invariant_rows.keys
    assert np.linalg.norm(delta @ rows.T) <= 1e-10 * np.linalg.norm(delta) * np.linalg.norm(rows)
    # and without the pass the edit does move them
    free = SolvePass().apply(program).solution.spaces[0]
    assert np.linalg.norm((free.left @ free.right.T) @ rows.T) > 1e-3


def test_centroids_are_means_of_contiguous_positions():
    program = _program(rows=7)
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
