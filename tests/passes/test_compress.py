import numpy as np
import pytest

from erasec.ir.dtypes import round_to
from erasec.passes.compress import CompressPass
from erasec.passes.errors import PassError
from erasec.passes.pipeline import Pipeline
from programs import random_program, with_site_gram


def test_measures_the_rounding_of_each_dtype():
    program = Pipeline.parse("solve").apply(random_program(np.random.default_rng(0), dim=8, erase=3))
    errors = {}
    for dtype in ("fp32", "fp16", "bf16"):
        errors[dtype] = CompressPass(dtype=dtype).apply(program).solution.spaces[0].dtype.max_rel_error
    assert 1e-9 < errors["fp32"] < 1e-6 < errors["fp16"] < 2e-3 < errors["bf16"] < 1.6e-2


def _nearest_bf16(value: np.float32) -> float:
    """bfloat16 by its definition: of the two bfloat16 values around a float32 (the upper 16 bits,
    truncated toward zero, and the next one away from zero), the nearer; on a tie, the one whose last
    mantissa bit is 0. No torch: this is the rounding torch's ``.to(torch.bfloat16)`` implements."""
    bits = int(np.float32(value).view(np.uint32))
    low_bits = bits & 0xFFFF0000
    candidates = [low_bits, low_bits + 0x10000]
    as_float = [float(np.uint32(c).view(np.float32)) for c in candidates]
    distances = [abs(float(value) - f) for f in as_float]
    if distances[0] == distances[1]:
        return as_float[0] if not candidates[0] & 0x10000 else as_float[1]
    return as_float[int(distances[1] < distances[0])]


def test_bf16_rounding_is_nearest_ties_to_even():
    # values whose bfloat16 form follows from the format (8 mantissa bits): ties go to the even one
    assert round_to(np.array([1 + 2**-8, 1 + 3 * 2**-8, np.pi, -1 / 3, 2.0**-130]), "bf16").tolist() == [
        1.0, 1 + 2**-6, 3.140625, -0.333984375, 2.0**-130
    ]
    values = np.random.default_rng(1).standard_normal(1000) * 10.0 ** np.random.default_rng(2).integers(-5, 5, 1000)
    expected = [_nearest_bf16(v) for v in values.astype(np.float32)]
    np.testing.assert_array_equal(round_to(values, "bf16"), expected)


def test_needs_a_solution():
    with pytest.raises(PassError, match="^compress: no solution to compress; put 'solve' before 'compress'"):
        Pipeline.parse("compress").apply(random_program(np.random.default_rng(0)))


def test_round_trip():
    assert str(Pipeline.parse("compress{max-error=1e-4 dtype=bf16}")) == "compress{dtype=bf16 max-rank=0 max-error=0.0001}"


def _gram_program(seed=0, dim=10, erase=6):
    rng = np.random.default_rng(seed)
    return with_site_gram(random_program(rng, dim=dim, erase=erase, preserve=3), rng)


def test_rank_cap_is_optimal_in_the_output_metric_and_reports_its_error():
    program, weights = _gram_program()
    exact = Pipeline.parse("solve").apply(program).solution.spaces[0]
    capped = Pipeline.parse("solve,compress{max-rank=3 max-error=1}").apply(program).solution.spaces[0]
    assert capped.rank == 3
    # the reported error is the relative error of ΔW over all sites together
    num = sum(np.linalg.norm(capped.delta(p, w) - exact.delta(p, w)) ** 2 for p, w in weights.items())
    den = sum(np.linalg.norm(exact.delta(p, w)) ** 2 for p, w in weights.items())
    assert abs(np.sqrt(num / den) - capped.truncation_error) < 1e-10
    # and no other rank-3 truncation of T − I does better: try the identity-metric SVD
    u, s, vt = np.linalg.svd(exact.left @ exact.right.T)
    naive = (u[:, :3] * s[:3]) @ vt[:3]
    naive_err = np.sqrt(sum(np.linalg.norm(w @ naive - exact.delta(p, w)) ** 2 for p, w in weights.items()) / den)
    assert capped.truncation_error <= naive_err + 1e-12


def test_max_error_alone_picks_the_smallest_rank_within_it():
    program, _ = _gram_program()
    exact = Pipeline.parse("solve").apply(program).solution.spaces[0]
    for budget in (0.5, 0.1, 1e-3):
        capped = Pipeline.parse(f"solve,compress{{max-error={budget}}}").apply(program).solution.spaces[0]
        assert capped.truncation_error <= budget
        if capped.rank > 1:
            smaller = Pipeline.parse(f"solve,compress{{max-rank={capped.rank - 1} max-error=1}}").apply(program)
            assert smaller.solution.spaces[0].truncation_error > budget
        assert capped.rank <= exact.rank


def test_refuses_a_cap_beyond_the_budget():
    program, _ = _gram_program()
    with pytest.raises(PassError) as error:
        Pipeline.parse("solve,compress{max-rank=1 max-error=1e-6}").apply(program)
    message = str(error.value)
    assert message.startswith("compress: key space clip-l: max-rank=1 leaves a relative error of ")
    assert message.endswith("> max-error=1e-06; raise max-error or max-rank")


def test_per_layer_factors_are_capped_per_layer():
    from programs import as_per_layer

    program, weights = _gram_program()
    per_layer = as_per_layer(program, weights)
    capped = Pipeline.parse("solve,compress{max-rank=2 max-error=1}").apply(per_layer).solution.spaces[0]
    exact = Pipeline.parse("solve").apply(per_layer).solution.spaces[0]
    assert capped.rank == 2
    worst = max(
        np.linalg.norm(capped.delta(p, w) - exact.delta(p, w)) / np.linalg.norm(exact.delta(p, w)) for p, w in weights.items()
    )
    assert abs(worst - capped.truncation_error) < 1e-10
