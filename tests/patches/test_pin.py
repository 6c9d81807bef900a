import numpy as np

from erasec.patches.pin import base_pin, pin_difference, pins_match, text_encoder_pin


def test_fp16_and_fp32_releases_share_the_fp16_digest():
    rng = np.random.default_rng(0)
    weights32 = {"a.weight": rng.standard_normal((4, 3)).astype(np.float32), "b.weight": rng.standard_normal(5).astype(np.float32)}
    weights16 = {k: v.astype(np.float16) for k, v in weights32.items()}
    pin32, pin16 = base_pin(weights32), base_pin(weights16)
    assert pin32["sha256"] != pin16["sha256"]
    assert pin32["sha256_fp16"] == pin16["sha256_fp16"]
    assert pin32["tensors"] == 2


def test_a_flipped_bit_changes_the_pin():
    weights = {"a.weight": np.ones((3, 3), dtype=np.float32)}
    flipped = weights["a.weight"].copy()
    flipped.view(np.uint32)[1, 1] ^= 1
    assert base_pin(weights)["sha256"] != base_pin({"a.weight": flipped})["sha256"]


def test_order_of_the_mapping_does_not_matter():
    a, b = np.zeros(2, np.float32), np.ones(2, np.float32)
    assert base_pin({"x": a, "y": b}) == base_pin({"y": b, "x": a})


def _pin(values: np.ndarray, dtype: str | None):
    return base_pin({"a.weight": values, "b.weight": np.ones(3, np.float32)}, dtype=dtype)


def test_an_fp16_release_matches_an_fp32_pin_through_the_rounded_digest():
    values = np.random.default_rng(1).standard_normal((4, 4)).astype(np.float32)
    recorded, fp16_release = _pin(values, "fp32"), _pin(values.astype(np.float16), "fp16")
    assert recorded["sha256"] != fp16_release["sha256"]
    assert pins_match(recorded, fp16_release) and pin_difference(recorded, fp16_release) == []


def test_a_flipped_low_bit_of_an_fp32_base_is_named_although_fp16_rounding_hides_it():
    values = np.random.default_rng(1).standard_normal((4, 4)).astype(np.float32)
    flipped = values.copy()
    flipped.view(np.uint32)[2, 3] ^= 1
    recorded, actual = _pin(values, "fp32"), _pin(flipped, "fp32")
    assert recorded["sha256_fp16"] == actual["sha256_fp16"]  # the rounding hides the bit ...
    assert not pins_match(recorded, actual)  # ... but neither side is fp16, so it counts
    assert pin_difference(recorded, actual) == ["a.weight"]


def test_text_encoder_pin_has_no_per_tensor_entries():
    pin = text_encoder_pin({"x": np.zeros(2, np.float32)})
    assert set(pin) == {"tensors", "sha256", "sha256_fp16"}
