"""Trust: reading a patch is data only, and a damaged, tampered or foreign file is refused by name."""

import ast
import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from fake_patches import write_fake_patch
from safetensors.torch import save_file

from erasec.patches.errors import PatchError
from erasec.patches.packed import MAX_INFLATED_BYTES, pack_arrays, unpack_arrays
from erasec.patches.read import read_patch

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture()
def patch(tmp_path):
    return write_fake_patch(tmp_path / "p.safetensors")


def test_a_patch_reads_back_with_its_manifest(patch):
    read = read_patch(patch)
    assert read.name == "no-artists" and read.version == "1.0.0" and read.hash_matches
    assert read.spec["erase"][0]["concept"] == "Van Gogh"
    assert read.base["tensors"] == 1 and read.dtype == "fp32"
    (layer,) = read.layers()
    module = "lora_unet_" + layer.replace(".", "_")
    up = read.tensor(f"{module}.lora_up.weight")
    down = read.tensor(f"{module}.lora_down.weight")
    np.testing.assert_array_equal(read.layer_delta(layer), up @ down)  # alpha = r = 1


def test_a_single_flipped_bit_in_a_tensor_is_tampering(patch):
    raw = bytearray(patch.read_bytes())
    raw[-3] ^= 0x01  # inside the last tensor's bytes
    patch.write_bytes(bytes(raw))
    with pytest.raises(PatchError, match=r"p\.safetensors: tampered or corrupted: the tensor bytes hash to"):
        read_patch(patch)
    assert not read_patch(patch, check_hash=False).hash_matches


def test_a_truncated_file_is_refused(patch):
    raw = patch.read_bytes()
    patch.write_bytes(raw[:-5])
    with pytest.raises(PatchError, match=r"truncated or padded file \(\d+ bytes, header says \d+\)"):
        read_patch(patch)
    patch.write_bytes(raw[:5])
    with pytest.raises(PatchError, match="truncated safetensors file"):
        read_patch(patch)


def test_a_header_length_over_the_limit_is_refused_before_reading_it(tmp_path):
    path = tmp_path / "big.safetensors"
    path.write_bytes(struct.pack("<Q", 200_000_000) + b"{}")
    with pytest.raises(PatchError, match="not a safetensors file .a header of 200000000 bytes exceeds"):
        read_patch(path)


def test_a_plain_lora_is_a_foreign_file(tmp_path):
    path = tmp_path / "plain.safetensors"
    save_file({"lora_unet_x.lora_down.weight": torch.ones(1, 2)}, str(path), metadata={"ss_network_dim": "1"})
    with pytest.raises(PatchError, match=r"plain\.safetensors: not an erasec patch \(no erasec\.format key\)"):
        read_patch(path)


def test_a_pickle_is_not_opened(tmp_path):
    path = tmp_path / "model.ckpt"
    torch.save({"w": torch.ones(2)}, path)
    with pytest.raises(PatchError, match="model.ckpt: "):
        read_patch(path)


def test_an_unknown_format_version_is_refused(patch, tmp_path):
    raw = patch.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + length])
    header["__metadata__"]["erasec.format"] = "99"
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    patch.write_bytes(struct.pack("<Q", len(text)) + text + raw[8 + length :])
    with pytest.raises(PatchError, match="patch format '99' is not known; this erasec reads format 1"):
        read_patch(patch)


def test_reading_uses_no_code_executing_loader():
    """The patch readers parse bytes: no pickle, no torch.load, no eval."""
    for name in ("read.py", "packed.py", "link.py", "safetensors_io.py"):
        tree = ast.parse((ROOT / "patches" / name).read_text())
        names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
        attributes = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
        imports = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        assert not ({"pickle", "eval", "exec"} & (names | imports)), name
        assert "load" not in attributes, name  # torch.load, numpy.load, pickle.load


def test_packed_arrays_round_trip_losslessly_and_deterministically():
    rng = np.random.default_rng(0)
    arrays = {"a": rng.standard_normal((3, 4)), "b": rng.standard_normal(5).astype(np.float32).astype(np.float64)}
    text = pack_arrays(arrays, {"k": [1, "x"]})
    assert text == pack_arrays(arrays, {"k": [1, "x"]})
    back, meta = unpack_arrays(text, "t")
    assert meta == {"k": [1, "x"]}
    assert json.loads(text)["arrays"]["b"]["dtype"] == "<f4"  # float32 values stored as float32
    for key in arrays:
        np.testing.assert_array_equal(back[key], arrays[key])


def test_packed_arrays_refuse_what_is_not_plain_numbers():
    document = json.loads(pack_arrays({"a": np.ones(2)}, {}))
    document["arrays"]["a"]["dtype"] = "|O"
    with pytest.raises(PatchError, match="t: array 'a' has dtype '|O'"):
        unpack_arrays(json.dumps(document), "t")
    document["arrays"]["a"].update(dtype="<f8", shape=[1000])
    with pytest.raises(PatchError, match="runs past the end"):
        unpack_arrays(json.dumps(document), "t")
    with pytest.raises(PatchError, match="not valid base64/zlib"):
        unpack_arrays(json.dumps({**document, "data": "!!"}), "t")


def test_packed_arrays_bound_the_inflated_size(monkeypatch):
    import erasec.patches.packed as packed

    monkeypatch.setattr(packed, "MAX_INFLATED_BYTES", 100)
    with pytest.raises(PatchError, match="inflates beyond 100 bytes"):
        unpack_arrays(pack_arrays({"a": np.zeros(1000)}, {}), "t")
    assert MAX_INFLATED_BYTES > 1 << 30
