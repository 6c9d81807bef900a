"""Trust: reading a patch is data only, and a damaged, tampered or foreign file is refused by name."""

import ast
import json
import os
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from fake_patches import write_fake_patch
from safetensors.torch import save_file

from erasec.patches.errors import PatchError
from erasec.patches.packed import MAX_INFLATED_BYTES, pack_arrays, unpack_arrays
from erasec.patches.read import read_patch, read_raw

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
    assert read_raw(patch).problem.startswith("the tensor bytes hash to")


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
    with pytest.raises(PatchError, match="patch format '99' is not known; this erasec reads format 2"):
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


# --- a patch is what it says it is (issue 16 items 1, 8, 11, 12) ---------------------------------------

from fake_patches import LAYER, recraft  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from erasec.patches.manifest import DIGEST_KEY  # noqa: E402

MODULE = "lora_unet_" + LAYER.replace(".", "_")
ATTN1_Q = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"


def _one_line(error: pytest.ExceptionInfo, path: Path) -> str:
    message = str(error.value)
    assert message.startswith(f"{path}: ") and "\n" not in message, message
    return message


def test_format_1_patches_predate_the_digest_and_are_refused(patch, tmp_path):
    old = recraft(patch, tmp_path / "old.safetensors", metadata={"erasec.format": "1", DIGEST_KEY: None}, rehash=False)
    with pytest.raises(PatchError, match="patch format '1' predates the integrity digest .erasec.digest. of format 2; rebuild"):
        read_patch(old)


def test_a_format_2_patch_without_its_digest_is_tampered(patch, tmp_path):
    stripped = recraft(patch, tmp_path / "s.safetensors", metadata={DIGEST_KEY: None}, rehash=False)
    with pytest.raises(PatchError, match="tampered or corrupted: no erasec.digest key"):
        read_patch(stripped)


@pytest.mark.parametrize(
    ("tensors", "drop", "message"),
    [
        ({f"{ATTN1_Q}.lora_up.weight": torch.ones(8, 1), f"{ATTN1_Q}.lora_down.weight": torch.ones(1, 4),
          f"{ATTN1_Q}.alpha": torch.tensor(1.0)},
         (), f"tensor '{ATTN1_Q}.alpha': is not a LoRA factor or alpha of a layer erasec.spaces declares"),
        ({"model.embedding.weight": torch.ones(3)}, (), "tensor 'model.embedding.weight': is not a LoRA factor"),
        ({"lora_te_text_model_encoder_layers_0_mlp_fc1.lora_up.weight": torch.ones(2, 1)}, (), "is not a LoRA factor"),
        ({}, (f"{MODULE}.lora_up.weight",), f"erasec.spaces: {LAYER}: declared, but the patch has no tensor"),
        ({}, (f"{MODULE}.alpha",), "declared, but the patch has no tensor"),
        ({f"{MODULE}.lora_down.weight": torch.ones(2, 4), f"{MODULE}.lora_up.weight": torch.ones(8, 2)}, (),
         r"up \[8, 2\] and down \[2, 4\] are not a rank-1 \(ss_network_dim\) LoRA"),
        ({f"{MODULE}.alpha": torch.tensor(455.0)}, (), "alpha 455.0 is not the rank 1"),
        ({f"{MODULE}.lora_up.weight": torch.ones(8, 1, dtype=torch.float16)}, (), r"mix dtypes \['F16', 'F32'\]"),
    ],
)
def test_every_tensor_must_be_a_factor_of_a_declared_layer(patch, tmp_path, tensors, drop, message):
    """Hashes recomputed (anyone can): the structure alone must refuse what a loader would apply unseen."""
    crafted = recraft(patch, tmp_path / "c.safetensors", tensors=tensors, drop=drop)
    with pytest.raises(PatchError, match=message) as error:
        read_patch(crafted)
    _one_line(error, crafted)


def _metadata(path: Path) -> dict[str, str]:
    raw = path.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8 : 8 + length])["__metadata__"]


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("erasec.spaces", '"clip-l"', "erasec.spaces: is a JSON string, expected a JSON list"),
        ("erasec.spaces", "7", "erasec.spaces: is a JSON number, expected a JSON list"),
        ("erasec.spaces", "[1, 2]", r"erasec.spaces\[0\]: is a JSON number, expected an object"),
        ("erasec.spaces", "[]", "erasec.spaces: is empty"),
        ("erasec.spaces", '[{"space":"clip-l","form":"shared","rank":0,"layers":["%s"]}]' % LAYER, r"erasec.spaces\[0\].rank: 0 is not"),
        ("erasec.spaces", '[{"space":"clip-l","form":"shared","rank":1,"layers":["%s\\u0000"]}]' % LAYER, "NUL"),
        ("erasec.spaces", '[{"space":"clip-l","form":"shared","rank":1,"layers":["add_embedding.linear_1"]}]',
         "is not a module erasec edits"),
        ("erasec.spec", "[]", "erasec.spec: is a JSON list, expected a JSON object"),
        ("erasec.spec", "{", "erasec.spec: is not valid JSON"),
        ("erasec.base", '{"family": "sd9"}', "erasec.base.family: 'sd9' is not one of"),
        ("erasec.report", '{"efficacy": [1]}', "erasec.report.efficacy: is not a map"),
        ("erasec.name", "a\x00b", "erasec.name: 'a\\\\x00b' is not a name"),
        ("erasec.name", None, "erasec.name: None is not a name"),
        ("erasec.spec", None, "erasec.spec: missing"),
        ("ss_network_dim", "0", "ss_network_dim: '0' is not a rank"),
        ("ss_network_alpha", "455", "ss_network_alpha: '455', expected '1'"),
        ("lora_adapter_metadata", "{}", "a kohya patch carries no PEFT config"),
        ("erasec.device", "[]", "erasec.device: is a JSON list, expected a JSON object"),
        ("erasec.device", '{"kind":"tpu","dtype":"fp32","batch":1}', r"erasec.device: .* is not \{kind: cpu\|cuda"),
        ("erasec.device", '{"kind":"cuda","dtype":"fp32","batch":0}', r"erasec.device: .* is not \{kind: cpu\|cuda"),
    ],
)
def test_crafted_metadata_is_one_line_naming_the_file_and_key(patch, tmp_path, key, value, message):
    crafted = recraft(patch, tmp_path / "c.safetensors", metadata={key: value})
    with pytest.raises(PatchError, match=message) as error:
        read_patch(crafted)
    _one_line(error, crafted)


def _flips(path: Path):
    """(key, header byte index) for one-bit flips spread over every metadata value, ≥ 3 per key."""
    raw = path.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    header = raw[8 : 8 + length]
    for key, value in sorted(_metadata(path).items()):
        encoded = json.dumps(value, ensure_ascii=False)[1:-1].encode()
        start = header.index(json.dumps(key, ensure_ascii=False).encode() + b":" + b'"' + encoded[:16]) + len(key) + 4
        span = len(encoded)
        for position in sorted({0, span // 2, span - 1, *range(0, span, max(1, span // 24))}):
            yield key, 8 + start + position


def test_every_single_bit_flip_in_the_metadata_is_refused(patch, tmp_path):
    """Issue 16 item 8: 21 of 45 such flips used to pass. Every key, ≥ 3 positions each, bit 0..6."""
    raw = patch.read_bytes()
    flipped = tmp_path / "f.safetensors"
    keys = set()
    for n, (key, index) in enumerate(_flips(patch)):
        changed = bytearray(raw)
        changed[index] ^= 1 << (n % 7)
        flipped.write_bytes(bytes(changed))
        with pytest.raises(PatchError) as error:
            read_patch(flipped)
        _one_line(error, flipped)
        keys.add(key)
    assert keys == set(_metadata(patch)) and len(keys) >= 25


def test_a_fifo_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "p.safetensors"
    os.mkfifo(fifo)
    with pytest.raises(PatchError, match="not a regular file"):
        read_patch(fifo)


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 2**70) | st.floats() | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_crafted_metadata_never_escapes_as_a_traceback(patch, tmp_path_factory, data):
    """Any key, any JSON at any top-level field of it, hashes recomputed: read_patch accepts (and
    inspect renders) or refuses in one line naming the file."""
    from erasec.patches.inspect import describe, render

    metadata = _metadata(patch)
    key = data.draw(st.sampled_from(sorted(metadata)))
    try:
        value = json.loads(metadata[key])
    except json.JSONDecodeError:
        value = metadata[key]
    if isinstance(value, dict) and value and data.draw(st.booleans()):
        field = data.draw(st.sampled_from(sorted(value)))
        value = {**value, field: data.draw(_JSON)}
    elif isinstance(value, list) and value and isinstance(value[0], dict) and data.draw(st.booleans()):
        field = data.draw(st.sampled_from(sorted(value[0])))
        value = [{**value[0], field: data.draw(_JSON)}, *value[1:]]
    else:
        value = data.draw(_JSON)
    text = value if isinstance(value, str) and data.draw(st.booleans()) else json.dumps(value)
    crafted = recraft(patch, tmp_path_factory.mktemp("h") / "c.safetensors", metadata={key: text})
    try:
        read = read_patch(crafted)
    except PatchError as error:
        message = str(error)
        assert message.startswith(f"{crafted}: ") and "\n" not in message, message
        return
    render(describe(read))
