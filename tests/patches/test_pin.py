import numpy as np

from erasec.patches.pin import base_pin


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
