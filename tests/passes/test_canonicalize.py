from dataclasses import replace

import numpy as np
import pytest

from erasec.ir import EraseRows, PreserveRows, Provenance
from erasec.ir.printer import print_program
from erasec.passes.canonicalize import CanonicalizePass
from erasec.passes.errors import PassOptionError
from erasec.passes.pipeline import Pipeline
from erasec.passes.solve import SolvePass
from programs import random_program


def _with_duplicates(seed=0):
    rng = np.random.default_rng(seed)
    program = random_program(rng, dim=4, erase=2, preserve=2)
    space = program.spaces[0]
    e = space.erase
    erase = EraseRows(
        keys=np.vstack([e.keys, e.keys[0], np.zeros(4)]),
        guides=np.vstack([e.guides, e.guides[0], e.guides[1]]),
        weights=np.concatenate([e.weights, [1.5, 1.0]]),
        provenance=e.provenance + (Provenance(request="x", prompt="x again", token=5), Provenance(request="x", prompt="zero", token=1)),
    )
    p = space.preserve
    preserve = PreserveRows(
        keys=np.vstack([p.keys, p.keys[1] * (1 + 1e-12), p.keys[0]]),
        weights=np.concatenate([p.weights, [0.25, 0.0]]),
        provenance=p.provenance + (Provenance(request="preserve", prompt="q", token=0),) * 2,
    )
    return replace(program, spaces=(replace(space, erase=erase, preserve=preserve),))


GOLDEN = """\
program family=sd1 model='test' requests=1
  request 'x'
  space clip-l dim=4 sites=3 lambda=0.5
    erase rows=2 target=guide
      [0] 'x' prompt='x' token=0 w=3.29 |k|=0.674 |g-k|=1.89
      [1] 'x' prompt='x' token=1 w=1.31 |k|=1.74 |g-k|=3.59
    preserve rows=2
      [0] 'preserve' prompt='p' token=0 w=0.997 |k|=1.77
      [1] 'preserve' prompt='p' token=1 w=1.23 |k|=1.18
    hard rows=0
    invariant-rows rows=0
"""


def test_golden():
    """The duplicate of row 0 (w 1.5) merges into it (1.79 + 1.5), the zero key and the
    zero-weight preserve row go, the preserve row equal to row 1 to 1e-12 merges (0.983 + 0.25)."""
    assert print_program(CanonicalizePass().apply(_with_duplicates())) == GOLDEN


def test_merging_leaves_the_solution_unchanged():
    program = _with_duplicates(3)
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
