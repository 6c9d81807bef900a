"""What a model contributes to a patch's pins: its touched K/V tensors, their storage dtype, and
its text encoder.

The digests themselves are ``erasec.patches.pin``'s; this module only finds the tensors in a
model's files. The text-encoder pin is what ``retarget`` compares: T depends only on text
embeddings (DESIGN.md §4), so two models with the same text encoder accept the same T.

Each function takes an opened ``SDModel`` (``sd.py``), unannotated: ``sd.py`` imports this module.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np

from erasec.patches.pin import base_pin, text_encoder_pin

from .families import FAMILIES
from .tensor_files import TensorFile


_DTYPES = {"F16": "fp16", "F32": "fp32", "BF16": "bf16", "F64": "fp64"}
_ENCODER_FOLDERS = ("text_encoder", "text_encoder_2", "text_encoder_3")


def storage_dtype(model) -> str | None:
    """How the model's file stores its K/V tensors (``fp16``…), or ``None`` if unknown or mixed."""
    file = model._file  # the opened TensorFile: safetensors or an allowed pickle
    kinds = {_DTYPES.get(file.dtypes.get(model.weight_name(site))) for site in model.target.sites}
    return kinds.pop() if len(kinds) == 1 else None


class _LazyTensors(Mapping):
    """name → array as stored (fp16 or fp32; other dtypes widened to fp32), read from the model's
    files one tensor at a time (a whole text encoder never sits in memory at once)."""

    def __init__(self, files: dict[str, tuple[TensorFile, str]]) -> None:
        self._files = {name: (file.path, key) for name, (file, key) in files.items()}  # what embedding_cache stamps
        self._opened = {file.path: file for file, _ in files.values()}

    def __getitem__(self, name: str) -> np.ndarray:
        import torch

        path, key = self._files[name]
        tensor = self._opened[path].tensors([key])[key]
        return (tensor if tensor.dtype in (torch.float16, torch.float32) else tensor.to(torch.float32)).numpy()

    def __iter__(self) -> Iterator[str]:
        return iter(self._files)

    def __len__(self) -> int:
        return len(self._files)


def _wanted(key: str) -> bool:
    return key != "__metadata__" and not key.endswith("position_ids")  # an integer buffer, not a weight


def _clip_name(key: str) -> str:
    """HF CLIP names with or without the ``text_model.`` level (exports differ) → without."""
    return key.removeprefix("text_model.")


def text_encoder_tensors(model) -> Mapping[str, np.ndarray] | None:
    """``component/name`` → tensor of every text-encoder weight, or ``None`` for a layout this does
    not know (the patch then records no text-encoder pin and cannot be retargeted).

    Names are diffusers' (``text_encoder/embeddings.…``, without ``text_model.``); a single file's CLIP-L tensors are renamed
    to them by dropping the LDM/SGM prefix (research/ecosystem.md §3.1), so an SD1 folder and its
    single-file export pin the same encoder. OpenCLIP tensors keep their own (fused) names under
    ``…/open_clip:``, so SD2/SDXL encoders match only within one layout. A diffusion transformer
    whose encoders came apart from its folder (``DiTModel.inputs``) pins the files it read them from.
    """
    projection = _projection_tensors(model)
    sources = getattr(model, "inputs", None)  # a DiT's encoders given apart or in its single file (dit_inputs.py)
    if sources is not None:
        files = {**sources.tensors(), **projection}
        return _LazyTensors(dict(sorted(files.items()))) if files else None
    root = model.path
    files = dict(projection)
    if Path(root).is_dir():
        for folder in _ENCODER_FOLDERS:
            for path in sorted((Path(root) / folder).glob("*.safetensors")):
                file = TensorFile(path, pickled=False)
                files.update({f"{folder}/{_clip_name(key)}": (file, key) for key in file.shapes if _wanted(key)})
    else:  # a single file: safetensors or an allowed pickle
        file = model._file
        keys = [key for key in file.shapes if _wanted(key)]
        for encoder in FAMILIES[model.target.family].single_file:
            prefix, component = encoder.prefix, encoder.component
            files.update(
                {
                    f"{component}/open_clip:{k.removeprefix(prefix)}" if encoder.open_clip
                    else f"{component}/{_clip_name(k.removeprefix(prefix))}": (file, k)
                    for k in keys if k.startswith(prefix)
                }
            )
    return _LazyTensors(dict(sorted(files.items()))) if files else None


def _projection_tensors(model) -> dict:
    """The transformer's own text projection, when the key rows pass it (Wan's text embedder): part of
    what the rows are, so of the pin the embedding cache keys rows by and retarget compares. Two Wan
    transformers sharing one umT5 but not the embedder have different key rows."""
    projection = FAMILIES[model.target.family].text_projection
    if projection is None:
        return {}
    names = [f"{projection}.linear_{i}.{kind}" for i in (1, 2) for kind in ("weight", "bias")]
    return {f"transformer/{name}": (model._file, model.tensor_name(name)) for name in names}


def model_text_encoder_pin(model) -> dict | None:
    tensors = text_encoder_tensors(model)
    return None if tensors is None else text_encoder_pin(tensors)


class _WeightNames(Mapping):
    """``module_path.weight`` → the model's K/V weight, read when asked for (SDXL's 140 matrices are
    read one at a time, never all held)."""

    def __init__(self, weights: Mapping[str, np.ndarray], module_paths) -> None:
        self._weights = weights
        self._paths = {f"{path}.weight": path for path in module_paths}

    def __getitem__(self, name: str) -> np.ndarray:
        return self._weights[self._paths[name]]

    def __contains__(self, name: object) -> bool:
        return name in self._paths

    def __iter__(self) -> Iterator[str]:
        return iter(self._paths)

    def __len__(self) -> int:
        return len(self._paths)


def model_base_pin(model, module_paths) -> dict:
    """The ``base_pin`` of the model's tensors at ``module_paths`` (diffusers weight names)."""
    return base_pin(_WeightNames(model.kv_weights(), module_paths), dtype=storage_dtype(model))
