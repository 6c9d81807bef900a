import json
import struct
import subprocess
import sys

import pytest
import torch
from safetensors import safe_open

from erasec.patches.errors import PatchError
from erasec.patches.manifest import write_patch
from erasec.patches.safetensors_io import atomic_write, data_sha256, read_header, serialize


def _tensors():
    return {"b.lora_up.weight": torch.arange(6.0).reshape(3, 2), "a.alpha": torch.tensor(2.0)}


def test_header_is_sorted_and_parses():
    raw = serialize(_tensors(), {f"k{i}": str(i) for i in range(40)})
    (length,) = struct.unpack("<Q", raw[:8])
    assert length % 8 == 0
    header = json.loads(raw[8 : 8 + length])
    assert list(header) == ["__metadata__", "a.alpha", "b.lora_up.weight"]
    assert list(header["__metadata__"]) == sorted(header["__metadata__"])


def test_bytes_do_not_depend_on_the_process():
    """safetensors' own header order is a per-process hash order; ours is not."""
    code = (
        "import sys, torch; from erasec.patches.safetensors_io import serialize;"
        "sys.stdout.buffer.write(serialize({'w': torch.ones(2)}, {f'k{i}': str(i) for i in range(40)}))"
    )
    runs = {subprocess.run([sys.executable, "-c", code], capture_output=True, check=True).stdout for _ in range(3)}
    assert len(runs) == 1


def test_write_patch_records_the_data_hash(tmp_path):
    path = tmp_path / "p.safetensors"
    write_patch(path, _tensors(), {"erasec.name": "x"})
    raw = path.read_bytes()
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    assert meta["sshs_model_hash"] == data_sha256(raw)
    assert meta["modelspec.hash_sha256"] == "0x" + data_sha256(raw)


def test_metadata_must_be_strings():
    with pytest.raises(PatchError, match="^metadata 'n': safetensors metadata is str → str, got int$"):
        serialize(_tensors(), {"n": 3})


def test_atomic_write_makes_folders_and_refuses_a_bad_file(tmp_path):
    target = tmp_path / "no" / "p.safetensors"
    with pytest.raises(PatchError, match=f"^{target}: refusing to write an invalid safetensors file"):
        atomic_write(target, b"")
    assert not (tmp_path / "no").exists()  # nothing is left behind, not even the folder it made
    (tmp_path / "file").write_text("")
    with pytest.raises(PatchError, match="cannot write here"):
        atomic_write(tmp_path / "file" / "p.safetensors", b"")


def test_truncated_files_are_refused(tmp_path):
    path = tmp_path / "p.safetensors"
    write_patch(path, _tensors(), {})
    raw = path.read_bytes()
    path.write_bytes(raw[:-3])
    with pytest.raises(PatchError, match="truncated or padded file"):
        read_header(path)
    path.write_bytes(raw[:5])
    with pytest.raises(PatchError, match="truncated safetensors file"):
        read_header(path)
    path.write_bytes(struct.pack("<Q", 10**9) + b"{}")
    with pytest.raises(PatchError, match="exceeds safetensors' limit"):
        read_header(path)
