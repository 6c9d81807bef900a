import numpy as np
import pytest

from erasec.ir.dtypes import round_to
from erasec.passes.compress import CompressPass
from erasec.passes.errors import PassError
from erasec.passes.pipeline import Pipeline
from programs import random_program


def test_measures_the_rounding_of_each_dtype():
    program = Pipeline.parse("solve").apply(random_program(np.random.default_rng(0), dim=8, erase=3))
    errors = {}
    for dtype in ("fp32", "fp16", "bf16"):
        errors[dtype] = CompressPass(dtype=dtype).apply(program).solution.spaces[0].dtype.max_rel_error
    assert 1e-9 < errors["fp32"] < 1e-6 < errors["fp16"] < 2e-3 < errors["bf16"] < 1.6e-2


def test_bf16_rounding_matches_torch():
    import torch

    values = np.random.default_rng(1).standard_normal(1000) * 10.0 ** np.random.default_rng(2).integers(-5, 5, 1000)
    expected = torch.from_numpy(values.astype(np.float32)).to(torch.bfloat16).to(torch.float64).numpy()
    np.testing.assert_array_equal(round_to(values, "bf16"), expected)


def test_needs_a_solution():
    with pytest.raises(PassError, match="^compress: no solution to compress; put 'solve' before 'compress'"):
        Pipeline.parse("compress").apply(random_program(np.random.default_rng(0)))


def test_round_trip():
    assert str(Pipeline.parse("compress{dtype=bf16}")) == "compress{dtype=bf16}"
