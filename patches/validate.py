"""What a patch may hold: the structure ``read_patch`` checks once, so every command can trust it.

A patch is what its manifest says (docs/patch-format.md, "Reading a patch"):

* every tensor is exactly the ``lora_down``/``lora_up``/``alpha`` (kohya) or ``lora_A``/``lora_B``
  (PEFT) of a layer ``erasec.spaces`` declares — a tensor a loader would apply to any other module
  (``…attn1_to_q``), a text-encoder LoRA or a stray non-LoRA tensor is refused, and so is a declared
  layer without its factors;
* a declared layer is an ``attn2.to_k``/``to_v`` of a UNet attention block or, for SDXL with
  ``options.pooled``, ``add_embedding.linear_1``, or a diffusion transformer's site
  (``erasec.ir.dit_naming``: ``context_embedder``, the pooled ``time_text_embed.text_embedder.linear_1``,
  Wan's ``blocks.{i}.attn2.to_k/to_v``): the modules erasec edits; their names map to tensor names one
  to one;
* every module has the rank ``ss_network_dim``, ``alpha`` = rank (kohya) or the PEFT config
  ``r`` = ``lora_alpha`` = rank (a PEFT patch has no ``ss_*`` keys) with exactly the declared target modules — so the scale a loader
  applies is 1 — one float dtype, the spec's ``output.dtype``, and the tensors tile the data;
* the JSON keys have the types the commands read (``erasec.spec``, ``erasec.base``,
  ``erasec.spaces``, ``erasec.report``, ``erasec.derived_from``), names hold no control characters
  and every string is valid Unicode (those checks: ``manifest_checks.py``).

A refusal is one line, ``<file>: <key>: <what is wrong>``. ``check_patch`` returns the parsed,
checked values (``Declared``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal, Mapping

from erasec.ir.errors import VerifyError
from erasec.ir.naming import kohya_module_name, peft_adapter_config, peft_module_name

from .manifest_checks import (
    ADAPTER_KEY,
    DTYPES,
    check_base,
    check_component,
    check_sequence_length,
    check_name,
    check_report,
    check_spaces,
    check_spec,
    fail,
    is_int,
    json_value,
    plain,
    rank_of,
)

_ITEM_BYTES = {"F32": 4, "F16": 2, "BF16": 2}


@dataclass(frozen=True, slots=True, kw_only=True)
class LoraModule:
    """One LoRA module as a loader applies it: ``ΔW = alpha/rank · up @ down`` on ``layer``."""

    layer: str  # diffusers module path
    space: str
    prefix: str  # the tensor names' common part (kohya ``lora_unet_…``, PEFT ``unet.…``)
    rank: int
    out_features: int
    in_features: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Declared:
    """The checked contents of a patch's manifest and tensor index."""

    spec: dict
    base: dict
    spaces: tuple[dict, ...]
    report: dict
    rank: int
    layout: Literal["kohya", "peft"]
    dtype: str  # fp32 | fp16 | bf16
    modules: tuple[LoraModule, ...]


def factor_names(layout: str, prefix: str) -> tuple[str, str, str | None]:
    """(up, down, alpha or None) tensor names of one module."""
    if layout == "peft":
        return f"{prefix}.lora_B.weight", f"{prefix}.lora_A.weight", None
    return f"{prefix}.lora_up.weight", f"{prefix}.lora_down.weight", f"{prefix}.alpha"


def check_patch(
    path: Path, entries: Mapping[str, object], metadata: Mapping[str, str], *, alphas: Callable[[str], float]
) -> Declared:
    """The checked manifest of a patch at ``path``; ``alphas(name)`` reads one alpha tensor's value."""
    for key in ("erasec.name", "erasec.version"):
        check_name(path, key, metadata.get(key))
    for key in ("erasec.compiler", "erasec.pipeline"):
        if not isinstance(metadata.get(key), str):
            raise fail(path, key, "missing; not a complete erasec patch")
    for key, value in metadata.items():
        plain(path, key, key)
        plain(path, key, value)
    spec = json_value(path, metadata, "erasec.spec", dict)
    base = json_value(path, metadata, "erasec.base", dict)
    spaces = json_value(path, metadata, "erasec.spaces", list)
    report = json_value(path, metadata, "erasec.report", dict)
    derived = json_value(path, metadata, "erasec.derived_from", list, optional=True)
    check_spec(path, spec, metadata)
    check_base(path, base)
    check_sequence_length(path, base, spec)
    check_component(path, base)
    layout = spec.get("output", {}).get("format", "kohya")
    rank = rank_of(path, metadata, layout, base["family"])
    pooled = (spec.get("options") or {}).get("pooled") is True
    check_spaces(path, spaces, base["family"], pooled, rank)
    check_report(path, report)
    if derived is not None and not all(isinstance(d, dict) and isinstance(d.get("name"), str) for d in derived):
        raise fail(path, "erasec.derived_from", "is not a list of {name, version, sha256}")
    device = json_value(path, metadata, "erasec.device", dict, optional=True)
    if device is not None and not (
        device.get("kind") in ("cpu", "cuda") and device.get("dtype") in ("fp32", "bf16")
        and type(device.get("batch")) is int and device["batch"] >= 1 and len(device) == 3
    ):
        raise fail(path, "erasec.device", f"{metadata['erasec.device']} is not {{kind: cpu|cuda, dtype: fp32|bf16, batch: n}}")
    for key in ("erasec.shared", "erasec.link"):
        if key in metadata and not metadata[key].startswith("{"):
            raise fail(path, key, "is not a packed-array record; the file is damaged")
    modules, dtype = _check_tensors(path, entries, spaces, base["family"], layout, rank, alphas)
    if dtype != spec.get("output", {}).get("dtype", "fp32"):
        raise fail(path, "erasec.spec.output.dtype", f"{spec['output'].get('dtype')!r}, but the tensors are {dtype}")
    _check_adapter(path, metadata, layout, base["family"], rank, sorted(m.layer for m in modules))
    return Declared(
        spec=spec, base=base, spaces=tuple(spaces), report=report, rank=rank, layout=layout, dtype=dtype,
        modules=modules,
    )


def _check_adapter(
    path: Path, metadata: Mapping[str, str], layout: str, family: str, rank: int, layers: list[str]
) -> None:
    """PEFT's config decides what diffusers builds: exactly what ``backends/peft.py`` writes, so no
    extra target module, no ``rank_pattern``/``alpha_pattern``, no random initialisation."""
    if layout == "kohya":
        if ADAPTER_KEY in metadata:
            raise fail(path, ADAPTER_KEY, "a kohya patch carries no PEFT config; a loader would build other modules")
        return
    config = json_value(path, metadata, ADAPTER_KEY, dict)
    if config != peft_adapter_config(family, rank, layers):
        raise fail(path, ADAPTER_KEY, f"is not r = lora_alpha = {rank} over exactly the declared layers")


def _check_tensors(path, entries, spaces, family, layout, rank, alphas) -> tuple[tuple[LoraModule, ...], str]:
    expected: dict[str, tuple[str, str]] = {}  # tensor name → (layer, space)
    prefixes: list[tuple[str, str, str]] = []
    for space in spaces:
        for layer in space["layers"]:
            try:
                prefix = peft_module_name(layer, family) if layout == "peft" else kohya_module_name(layer, family)
            except VerifyError as error:
                raise fail(path, "erasec.spaces", str(error)) from None
            prefixes.append((layer, space["space"], prefix))
            for name in factor_names(layout, prefix):
                if name is not None:
                    expected[name] = (layer, space["space"])
    for name in sorted(entries):
        if name not in expected:
            raise fail(
                path, f"tensor {name!r}",
                "is not a LoRA factor or alpha of a layer erasec.spaces declares; a loader would apply it unseen",
            )
    kinds = set()
    ends = []
    for name, entry in entries.items():
        if not isinstance(entry, dict) or entry.get("dtype") not in DTYPES:
            raise fail(path, f"tensor {name!r}", "is not an fp32, fp16 or bf16 tensor")
        shape, offsets = entry.get("shape"), entry.get("data_offsets")
        if not (isinstance(shape, list) and all(is_int(n) and n >= 0 for n in shape)):
            raise fail(path, f"tensor {name!r}", f"shape {shape!r} is not a list of sizes")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(is_int(n) and n >= 0 for n in offsets)):
            raise fail(path, f"tensor {name!r}", f"data_offsets {offsets!r} are not two byte offsets")
        if offsets[1] - offsets[0] != math.prod(shape) * _ITEM_BYTES[entry["dtype"]]:
            raise fail(path, f"tensor {name!r}", f"data_offsets {offsets} do not hold shape {shape}")
        kinds.add(entry["dtype"])
        ends.append(tuple(offsets))
    position = 0
    for start, end in sorted(ends):
        if start != position:
            raise fail(path, "tensors", "their data overlap or leave gaps; the file is damaged or crafted")
        position = end
    if len(kinds) != 1:
        raise fail(path, "tensors", f"mix dtypes {sorted(kinds)}; a patch has one")
    modules, widths = [], {}
    for layer, space, prefix in prefixes:
        up_name, down_name, alpha_name = factor_names(layout, prefix)
        for name in (up_name, down_name, alpha_name):
            if name is not None and name not in entries:
                raise fail(path, f"erasec.spaces: {layer}", f"declared, but the patch has no tensor {name!r}")
        up, down = entries[up_name]["shape"], entries[down_name]["shape"]
        if len(up) != 2 or len(down) != 2 or up[1] != down[0] or down[0] != rank or 0 in up or 0 in down:
            source = "the PEFT config's r" if layout == "peft" else "ss_network_dim"
            raise fail(path, f"{layer}", f"up {up} and down {down} are not a rank-{rank} ({source}) LoRA")
        if widths.setdefault(space, down[1]) != down[1]:
            raise fail(path, f"{layer}", f"reads {down[1]} features, other layers of space {space!r} {widths[space]}")
        if alpha_name is not None:
            if entries[alpha_name]["shape"] not in ([], [1]):
                raise fail(path, f"tensor {alpha_name!r}", f"shape {entries[alpha_name]['shape']} is not a scalar")
            alpha = alphas(alpha_name)
            if alpha != rank:
                raise fail(path, f"tensor {alpha_name!r}", f"alpha {alpha} is not the rank {rank}: loaders would scale ΔW by {alpha}/{rank}")
        modules.append(LoraModule(layer=layer, space=space, prefix=prefix, rank=rank, out_features=up[0], in_features=down[1]))
    return tuple(modules), DTYPES[kinds.pop()]
