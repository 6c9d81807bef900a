"""What an ONNX rewrite applies: per site, the low-rank factors of ΔW, read from a patch or a solution.

A site is named by its kohya module name (``lora_unet_<diffusers path, dots → underscores>``,
research/ecosystem.md §1.2), the one name both sources share: a patch file carries only these
names, and the graph's module paths are matched to them exactly (``locate.py``), never guessed
back from the underscores. ``ΔW = up @ down`` in float64 with the LoRA scale ``alpha / r``
folded into ``up``; zero rank components (kohya's uniform-rank padding, §1.7) are dropped, so a
graph carries only the rank the edit has.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np

from erasec.ir import ModelTarget, Solution
from erasec.patches.safetensors_io import read_header

from ..errors import BackendError
from ..kohya import kohya_module_name

_KEY = re.compile(r"^(?P<name>lora_[a-z0-9]+_.+)\.(?P<part>lora_down\.weight|lora_up\.weight|alpha)$")


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class SiteDelta:
    """``ΔW = up @ down`` for one Linear site, float64, read-only."""

    name: str  # kohya module name, e.g. lora_unet_down_blocks_0_attentions_0_..._attn2_to_k
    up: np.ndarray  # (out, r)
    down: np.ndarray  # (r, in)

    def __post_init__(self) -> None:
        up = np.array(self.up, dtype=np.float64)
        down = np.array(self.down, dtype=np.float64)
        if up.ndim != 2 or down.ndim != 2 or up.shape[1] != down.shape[0]:
            raise BackendError(f"onnx: {self.name}: up {up.shape} and down {down.shape} are not (out, r) and (r, in)")
        keep = np.any(down != 0, axis=1) & np.any(up != 0, axis=0)
        up, down = up[:, keep], down[keep, :]
        up.flags.writeable = False
        down.flags.writeable = False
        object.__setattr__(self, "up", up)
        object.__setattr__(self, "down", down)

    @property
    def rank(self) -> int:
        return self.down.shape[0]

    @property
    def shape(self) -> tuple[int, int]:
        """(out, in) of the Linear weight this delta adds to."""
        return self.up.shape[0], self.down.shape[1]

    def delta(self) -> np.ndarray:
        return self.up @ self.down


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class PatchDeltas:
    """Every site delta of one patch, plus what identifies the base it was compiled against."""

    source: str  # where the deltas came from, for messages
    sites: tuple[SiteDelta, ...]
    base_pin: Mapping[str, object] | None = None  # erasec.base of the patch (sha256, sha256_fp16), if any
    metadata: Mapping[str, str] | None = None  # erasec.* keys to carry into the graph's metadata

    def site(self, name: str) -> SiteDelta:
        for site in self.sites:
            if site.name == name:
                return site
        raise KeyError(name)


def deltas_from_solution(
    solution: Solution, target: ModelTarget, base_weights: Mapping[str, np.ndarray], *, source: str
) -> PatchDeltas:
    """The deltas of a build, straight from the float64 solution (no rounding through a file)."""
    sites = []
    for space in solution.spaces:
        for site in target.space(space.space).sites:
            up, down = space.factors(site.module_path, base_weights[site.module_path])
            sites.append(SiteDelta(name=kohya_module_name(site.module_path), up=up, down=down))
    return PatchDeltas(source=source, sites=tuple(sites))


def _scalar(tensor) -> float:
    array = np.asarray(tensor, dtype=np.float64)
    if array.size != 1:
        raise ValueError(f"shape {array.shape}")
    return float(array.reshape(()))


def read_patch_deltas(path: str | Path) -> PatchDeltas:
    """The deltas of a kohya LoRA patch file: ``up ← up · alpha / r`` (kohya's scale, §1.2).

    Reads the header first (``read_header`` checks sizes without executing anything), then the
    tensors with safetensors' numpy loader. Text-encoder keys (``lora_te_*``) are refused: an ONNX
    rewrite here edits the UNet graph only.
    """
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    path = Path(path)
    _, metadata = read_header(path)
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as error:
        raise BackendError(f"{path}: cannot read the patch tensors ({error})") from None
    parts: dict[str, dict[str, np.ndarray]] = {}
    for key, value in tensors.items():
        match = _KEY.match(key)
        if match is None:
            raise BackendError(f"{path}: {key}: not a kohya LoRA key (<name>.lora_down.weight, .lora_up.weight, .alpha)")
        parts.setdefault(match["name"], {})[match["part"]] = value
    text_encoder = sorted(name for name in parts if not name.startswith("lora_unet_"))
    if text_encoder:
        raise BackendError(f"{path}: {text_encoder[0]}: only UNet sites (lora_unet_*) can be written into a UNet graph")
    if not parts:
        raise BackendError(f"{path}: no LoRA tensors")
    sites = []
    for name in sorted(parts):
        found = parts[name]
        if "lora_down.weight" not in found or "lora_up.weight" not in found:
            missing = "lora_down.weight" if "lora_down.weight" not in found else "lora_up.weight"
            raise BackendError(f"{path}: {name}: no {name}.{missing}")
        down = found["lora_down.weight"].astype(np.float64)
        up = found["lora_up.weight"].astype(np.float64)
        if down.ndim != 2 or up.ndim != 2:
            raise BackendError(f"{path}: {name}: factors of shape {up.shape} and {down.shape}; only Linear sites are supported")
        rank = down.shape[0]
        scale = 1.0
        if "alpha" in found:
            try:
                scale = _scalar(found["alpha"]) / rank
            except ValueError as error:
                raise BackendError(f"{path}: {name}.alpha: expected one number, got {error}") from None
        sites.append(SiteDelta(name=name, up=up * scale, down=down))
    pin = None
    if "erasec.base" in metadata:
        try:
            pin = json.loads(metadata["erasec.base"])
        except json.JSONDecodeError:
            raise BackendError(f"{path}: erasec.base is not valid JSON") from None
    carried = {key: value for key, value in metadata.items() if key.startswith("erasec.") and key != "erasec.report"}
    return PatchDeltas(source=str(path), sites=tuple(sites), base_pin=pin, metadata=carried)
