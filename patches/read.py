"""Reading a patch file: data only, checked before anything trusts it.

A patch is parsed by hand from its bytes — an 8-byte length, a JSON header (size-checked against
safetensors' 100 MB limit, ``safetensors_io.read_header``), raw little-endian tensors — so nothing
in it can execute (no pickle, no ``torch.load``). ``read_patch`` refuses, with a one-line reason:

* a truncated or padded file (the header's offsets must tile the data section exactly);
* a foreign file: a safetensors file without ``erasec.format`` (a plain LoRA, a checkpoint);
* a format version this erasec does not know;
* a tampered file: the sha256 of the tensor bytes differs from the ``sshs_model_hash`` the
  compiler wrote (research/ecosystem.md §2.4), so one flipped bit in any tensor is caught.

``verify`` reads with ``check_hash=False`` and reports a hash mismatch as its answer instead.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from erasec.ir.naming import kohya_module_name, peft_module_name

from .errors import PatchError
from .manifest import FORMAT_VERSION
from .safetensors_io import read_header

_NUMPY_DTYPES = {"F64": "<f8", "F32": "<f4", "F16": "<f2"}


def _bf16_to_f32(raw: np.ndarray) -> np.ndarray:
    return (raw.astype(np.uint32) << 16).view(np.float32)


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class PatchFile:
    """A read patch: its path, tensor index, ``str → str`` metadata and the hashes of its bytes."""

    path: Path
    size: int  # bytes
    entries: dict  # tensor name -> {"dtype", "shape", "data_offsets"}
    metadata: dict[str, str]
    data_offset: int  # where the data section starts
    data_sha256: str  # sha256 of the bytes after the header (the addnet hash)
    _cache: dict = field(default_factory=dict, repr=False)

    @property
    def hash_matches(self) -> bool:
        return self.metadata.get("sshs_model_hash") == self.data_sha256

    def json(self, key: str):
        """A JSON-valued ``erasec.*`` key, parsed; a missing or malformed one is a damaged patch."""
        if key not in self.metadata:
            raise PatchError(f"{self.path}: no {key} key; not a complete erasec patch")
        try:
            return json.loads(self.metadata[key])
        except json.JSONDecodeError:
            raise PatchError(f"{self.path}: {key} is not valid JSON; the file is damaged") from None

    @property
    def spec(self) -> dict:
        return self.json("erasec.spec")

    @property
    def base(self) -> dict:
        return self.json("erasec.base")

    @property
    def spaces(self) -> list:
        return self.json("erasec.spaces")

    @property
    def name(self) -> str:
        return self.metadata.get("erasec.name", "")

    @property
    def version(self) -> str:
        return self.metadata.get("erasec.version", "")

    @property
    def dtype(self) -> str:
        kinds = {entry["dtype"] for name, entry in self.entries.items() if not name.endswith(".alpha")}
        return {"F32": "fp32", "F16": "fp16", "BF16": "bf16"}.get(kinds.pop(), "?") if len(kinds) == 1 else "mixed"

    def tensor(self, name: str) -> np.ndarray:
        """The tensor ``name`` as float64, read from the file's bytes."""
        try:
            entry = self.entries[name]
        except KeyError:
            raise PatchError(f"{self.path}: no tensor {name!r}") from None
        start, end = (int(n) for n in entry["data_offsets"])
        shape = tuple(int(n) for n in entry["shape"])
        with open(self.path, "rb") as stream:
            stream.seek(self.data_offset + start)
            raw = stream.read(end - start)
        if entry["dtype"] == "BF16":
            array = _bf16_to_f32(np.frombuffer(raw, dtype="<u2"))
        elif entry["dtype"] in _NUMPY_DTYPES:
            array = np.frombuffer(raw, dtype=_NUMPY_DTYPES[entry["dtype"]])
        else:
            raise PatchError(f"{self.path}: tensor {name!r} has dtype {entry['dtype']}; a patch holds floats only")
        if array.size != int(np.prod(shape, dtype=np.int64)):
            raise PatchError(f"{self.path}: tensor {name!r} has {array.size} values for shape {shape}")
        return array.astype(np.float64).reshape(shape)

    def layer_factors(self, layer: str) -> tuple[np.ndarray, np.ndarray]:
        """(up, down) with ``ΔW = up @ down`` of the site at diffusers module path ``layer``, in float64,
        from a kohya (``lora_unet_…``, alpha/r folded into ``up``) or PEFT (``unet.….lora_A/B``) file."""
        kohya = kohya_module_name(layer, self.base.get("family", ""))
        if f"{kohya}.lora_down.weight" in self.entries:
            up, down = self.tensor(f"{kohya}.lora_up.weight"), self.tensor(f"{kohya}.lora_down.weight")
            alpha_key = f"{kohya}.alpha"
            scale = float(self.tensor(alpha_key)) / down.shape[0] if alpha_key in self.entries else 1.0
            return up * scale, down
        peft = peft_module_name(layer)
        if f"{peft}.lora_A.weight" in self.entries:
            up, down = self.tensor(f"{peft}.lora_B.weight"), self.tensor(f"{peft}.lora_A.weight")
            config = json.loads(self.metadata.get("lora_adapter_metadata", "{}") or "{}")
            rank = config.get("unet.r", down.shape[0])
            return up * (float(config.get("unet.lora_alpha", rank)) / float(rank)), down
        raise PatchError(f"{self.path}: no LoRA tensors for {layer}")

    def layers(self) -> list[str]:
        """The diffusers module paths the patch edits (from ``erasec.spaces``)."""
        return sorted(layer for space in self.spaces for layer in space.get("layers", []))

    def layer_delta(self, layer: str) -> np.ndarray:
        up, down = self.layer_factors(layer)
        return up @ down


def _data_sha256(path: Path, offset: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        stream.seek(offset)
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_patch(path: str | os.PathLike, *, check_hash: bool = True) -> PatchFile:
    """Read and check the patch at ``path``; raises ``PatchError`` with the reason."""
    path = Path(path)
    if not path.exists():
        raise PatchError(f"{path}: no such file")
    if path.is_dir():
        raise PatchError(f"{path}: is a folder; give a patch file (.safetensors)")
    entries, metadata = read_header(path)
    with open(path, "rb") as stream:
        (length,) = struct.unpack("<Q", stream.read(8))
    if "erasec.format" not in metadata:
        raise PatchError(f"{path}: not an erasec patch (no erasec.format key); a plain LoRA or checkpoint cannot be used here")
    if metadata["erasec.format"] != FORMAT_VERSION:
        raise PatchError(
            f"{path}: patch format {metadata['erasec.format']!r} is not known; this erasec reads format {FORMAT_VERSION}"
        )
    for name, entry in entries.items():
        if not isinstance(entry, dict) or "dtype" not in entry or "shape" not in entry:
            raise PatchError(f"{path}: tensor {name!r} has no dtype/shape in the header; the file is damaged")
    patch = PatchFile(
        path=path,
        size=os.path.getsize(path),
        entries=entries,
        metadata=metadata,
        data_offset=8 + length,
        data_sha256=_data_sha256(path, 8 + length),
    )
    if check_hash and not patch.hash_matches:
        raise PatchError(
            f"{path}: tampered or corrupted: the tensor bytes hash to {patch.data_sha256[:12]}…, "
            f"the header records {metadata.get('sshs_model_hash', '(none)')[:12]}…; rebuild or re-download it"
        )
    return patch
