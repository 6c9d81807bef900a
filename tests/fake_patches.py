"""Small erasec patch files written without a model, for the artifact tests (inspect, diff, publish)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from erasec.patches.manifest import Manifest, write_patch
from erasec.patches.pin import base_pin

LAYER = "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k"


def spec_data(concepts=("Van Gogh",), preserve=("Claude Monet",), version="1.0.0", lam=None) -> dict:
    return {
        "erasec": 1,
        "name": "no-artists",
        "version": version,
        "model": "builtin:tiny-sd1",
        "method": "uce",
        "erase": [
            {"concept": c, "anchor": "art", "synonyms": [], "templates": [], "strength": 1.0} for c in concepts
        ],
        "preserve": list(preserve),
        "options": {"lambda": lam, "erase_scale": None, "preserve_scale": None, "pipeline": None},
        "output": {"format": "kohya", "dtype": "fp32", "rank": "auto"},
    }


def write_fake_patch(path: Path, *, seed: int = 0, base_seed: int = 0, **spec_options) -> Path:
    """A one-module rank-1 kohya patch with a full manifest; ``base_seed`` picks the pinned base."""
    import torch

    spec = spec_data(**spec_options)
    rng = np.random.default_rng(seed)
    base = {f"{LAYER}.weight": np.random.default_rng(base_seed).standard_normal((8, 4)).astype(np.float32)}
    name = "lora_unet_" + LAYER.replace(".", "_")
    tensors = {
        f"{name}.lora_down.weight": torch.tensor(rng.standard_normal((1, 4)), dtype=torch.float32),
        f"{name}.lora_up.weight": torch.tensor(rng.standard_normal((8, 1)), dtype=torch.float32),
        f"{name}.alpha": torch.tensor(1.0),
    }
    manifest = Manifest(
        name=spec["name"],
        version=spec["version"],
        compiler="0.1.0",
        family="sd1",
        model=spec["model"],
        spec_json=json.dumps(spec, sort_keys=True, separators=(",", ":")),
        pipeline="canonicalize,solve",
        rank=1,
        spaces=({"space": "clip-l", "form": "shared", "rank": 1, "layers": [LAYER], "condition": 10.0},),
        report={"efficacy": {c: 0.9 for c in spec_options.get("concepts", ("Van Gogh",))}, "specificity": 0.99},
        base_pin=base_pin(base, dtype="fp32"),
    )
    write_patch(path, tensors, manifest.metadata())
    return path


def recraft(path: Path, output: Path, *, tensors: dict | None = None, drop=(), metadata: dict | None = None,
            rehash: bool = True) -> Path:
    """``path`` rewritten as an attacker would: tensors added, replaced or dropped, metadata keys set
    (``None`` removes one), and — with ``rehash`` — ``sshs_model_hash`` and ``erasec.digest``
    recomputed, which anyone can do (they are checksums, not signatures). No validation."""
    from safetensors import safe_open

    from erasec.patches.manifest import DIGEST_KEY, patch_digest
    from erasec.patches.safetensors_io import encode, header_bytes

    with safe_open(str(path), "pt") as handle:
        old_metadata = dict(handle.metadata())
        new_tensors = {name: handle.get_tensor(name) for name in handle.keys() if name not in drop}
    new_tensors.update(tensors or {})
    for key, value in (metadata or {}).items():
        if value is None:
            old_metadata.pop(key, None)
        else:
            old_metadata[key] = value
    entries, data = encode(new_tensors)
    if rehash:
        digest = hashlib.sha256(data).hexdigest()
        old_metadata.update({"sshs_model_hash": digest, "modelspec.hash_sha256": "0x" + digest})
        old_metadata[DIGEST_KEY] = patch_digest(old_metadata, entries, digest)
    output.write_bytes(header_bytes(entries, old_metadata) + bytes(data))
    return output
