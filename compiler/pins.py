"""What a model contributes to a patch's pins: its touched K/V tensors, their storage dtype, and
its text encoder.

The digests themselves are ``erasec.patches.pin``'s; this module only finds the tensors in a
model's files. The text-encoder pin is what ``retarget`` compares: T depends only on text
embeddings (DESIGN.md §4), so two models with the same text encoder accept the same T.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np

from erasec.patches.pin import base_pin, text_encoder_pin

_DTYPES = {"F16": "fp16", "F32": "fp32", "BF16": "bf16", "F64": "fp64"}
_ENCODER_FOLDERS = ("text_encoder", "text_encoder_2")


def _header(path: Path) -> dict:
    with open(path, "rb") as stream:
        (length,) = struct.unpack("<Q", stream.read(8))
        return json.loads(stream.read(length))


def storage_dtype(model) -> str | None:
    """How the model's file stores its K/V tensors (``fp16``…), or ``None`` if unknown or mixed."""
    unet_file = getattr(model, "unet_weights_file", None)
    if unet_file is None or not Path(unet_file).is_file():
        return None
    header = _header(Path(unet_file))
    name = getattr(model, "weight_name", lambda site: site.weight_name)  # the file's own naming
    kinds = {_DTYPES.get(header.get(name(site), {}).get("dtype")) for site in model.target.sites}
    return kinds.pop() if len(kinds) == 1 else None


class _LazyTensors(Mapping):
    """name → float32 array, read from safetensors files one tensor at a time (a whole text encoder
    never sits in memory at once)."""

    def __init__(self, files: dict[str, tuple[Path, str]]) -> None:
        self._files = files

    def __getitem__(self, name: str) -> np.ndarray:
        import torch
        from safetensors import safe_open

        path, key = self._files[name]
        with safe_open(str(path), framework="pt") as handle:
            return handle.get_tensor(key).to(torch.float32).numpy()

    def __iter__(self) -> Iterator[str]:
        return iter(self._files)

    def __len__(self) -> int:
        return len(self._files)


def text_encoder_tensors(model) -> Mapping[str, np.ndarray] | None:
    """``folder/name`` → tensor of every text-encoder tensor of a diffusers folder; ``None`` for a
    layout this does not know (the patch then records no text-encoder pin)."""
    root = getattr(model, "path", None)
    if root is None or not Path(root).is_dir():
        return None
    files = {}
    for folder in _ENCODER_FOLDERS:
        for path in sorted((Path(root) / folder).glob("*.safetensors")):
            for key in _header(path):
                if key != "__metadata__":
                    files[f"{folder}/{key}"] = (path, key)
    return _LazyTensors(files) if files else None


def model_text_encoder_pin(model) -> dict | None:
    tensors = text_encoder_tensors(model)
    return None if tensors is None else text_encoder_pin(tensors)


def model_base_pin(model, module_paths) -> dict:
    """The ``base_pin`` of the model's tensors at ``module_paths`` (diffusers weight names)."""
    weights = model.kv_weights()
    touched = {f"{path}.weight": weights[path] for path in module_paths}
    return base_pin(touched, dtype=storage_dtype(model))
