from dataclasses import replace

import numpy as np
import pytest

from erasec.ir.printer import print_program
from erasec.passes.errors import PassOptionError, SolveError
from erasec.passes.pipeline import Pipeline
from erasec.passes.solve import SolvePass
from programs import random_program


def test_golden():
    program = SolvePass().apply(random_program(np.random.default_rng(0), dim=5, erase=2, preserve=2))
    assert print_program(program).splitlines()[-2:] == [
        "  solution clip-l form=shared rank=2 condition=8.38 residual=<1e-10 hard-rank=0",
        "    T-I = left[5, 2] @ right[5, 2]^T",
    ]


def test_refuses_a_singular_system_with_the_fix():
    program = random_program(np.random.default_rng(0), dim=6, erase=2, preserve=1, lam=0.0)
    with pytest.raises(SolveError) as error:
        Pipeline.parse("solve").apply(program)
    message = str(error.value)
    assert message.startswith("solve: key space clip-l: the system is singular or ill-conditioned (condition number ")
    assert message.endswith("> 1e+12); raise options.lambda (now 0) or add preserve prompts")


def test_lambda_zero_is_fine_when_the_rows_span_the_space():
    program = random_program(np.random.default_rng(0), dim=4, erase=2, preserve=6, lam=0.0)
    space = SolvePass().apply(program).solution.spaces[0]
    assert space.report.residual < 1e-10


def test_refuses_an_empty_erase_set():
    program = random_program(np.random.default_rng(0), dim=4, erase=1, preserve=2)
    space = program.spaces[0]
    empty = replace(program, spaces=(replace(space, erase=space.erase.select(np.zeros(1, dtype=bool))),))
    with pytest.raises(SolveError, match="^key space clip-l: no erase rows; the spec must erase at least one concept$"):
        SolvePass().apply(empty)


def test_refuses_a_bad_option():
    with pytest.raises(PassOptionError, match=r"^solve\{max-condition\}: 0 is not in \[1, 1e\+15\]$"):
        SolvePass(max_condition=0.0)


def test_round_trip():
    assert str(Pipeline.parse("solve{max-condition=1e8}")) == "solve{max-condition=1e+08}"
