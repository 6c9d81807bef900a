"""What a patch may hold: the structure ``read_patch`` checks once, so every command can trust it.

A patch is what its manifest says (docs/patch-format.md, "Reading a patch"):

* every tensor is exactly the ``lora_down``/``lora_up``/``alpha`` (kohya) or ``lora_A``/``lora_B``
  (PEFT) of a layer ``erasec.spaces`` declares — a tensor a loader would apply to any other module
  (``…attn1_to_q``), a text-encoder LoRA or a stray non-LoRA tensor is refused, and so is a declared
  layer without its factors;
* a declared layer is an ``attn2.to_k``/``to_v`` of a UNet attention block or, for SDXL with
  ``options.pooled``, ``add_embedding.linear_1``: the modules erasec edits; their names map to
  tensor names one to one;
* every module has the rank ``ss_network_dim``, ``alpha`` = rank (kohya) or the PEFT config
  ``r`` = ``lora_alpha`` = rank with exactly the declared target modules — so the scale a loader
  applies is 1 — one float dtype, the spec's ``output.dtype``, and the tensors tile the data;
* the JSON keys have the types the commands read (``erasec.spec``, ``erasec.base``,
  ``erasec.spaces``, ``erasec.report``, ``erasec.derived_from``), names hold no control characters
  and every string is valid Unicode.

A refusal is one line, ``<file>: <key>: <what is wrong>``. ``check_patch`` returns the parsed,
checked values (``Declared``).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal, Mapping

from erasec.ir.errors import VerifyError
from erasec.ir.naming import kohya_module_name, peft_module_name

from .errors import PatchError

FAMILIES = ("sd1", "sd2", "sdxl")
POOLED_LAYER = "add_embedding.linear_1"
DTYPES = {"F32": "fp32", "F16": "fp16", "BF16": "bf16"}
_ITEM_BYTES = {"F32": 4, "F16": 2, "BF16": 2}
_KV_LAYER = re.compile(
    r"(?:(?:down|up)_blocks\.\d{1,3}\.attentions\.\d{1,3}|mid_block\.attentions\.0)"
    r"\.transformer_blocks\.\d{1,3}\.attn2\.to_[kv]"
)
_HEX64 = re.compile(r"[0-9a-f]{64}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
ADAPTER_KEY = "lora_adapter_metadata"
_KINDS = {dict: "object", list: "list", str: "string", int: "number", float: "number", bool: "boolean", type(None): "null"}


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


def _fail(path: Path, key: str, what: str) -> PatchError:
    return PatchError(f"{path}: {key}: {what}")


def _plain(path: Path, key: str, value: object) -> None:
    """Every string in a parsed value is valid Unicode without NUL; numbers are not booleans' cousins."""
    if isinstance(value, str):
        if "\x00" in value:
            raise _fail(path, key, "holds a NUL character; the file is damaged or crafted")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise _fail(path, key, "holds a lone surrogate (not valid Unicode); the file is damaged") from None
    elif isinstance(value, dict):
        for inner_key, inner in value.items():
            _plain(path, key, inner_key)
            _plain(path, key, inner)
    elif isinstance(value, list):
        for inner in value:
            _plain(path, key, inner)


def _name(path: Path, key: str, value: object) -> str:
    if not isinstance(value, str) or not value.strip() or _CONTROL.search(value):
        raise _fail(path, key, f"{value!r} is not a name (a non-empty string without control characters)")
    return value


def _json(path: Path, metadata: Mapping[str, str], key: str, kind: type, *, optional: bool = False):
    if key not in metadata:
        if optional:
            return None
        raise _fail(path, key, "missing; not a complete erasec patch")
    try:
        value = json.loads(metadata[key])
    except (json.JSONDecodeError, RecursionError):
        raise _fail(path, key, "is not valid JSON; the file is damaged") from None
    if not isinstance(value, kind):
        raise _fail(path, key, f"is a JSON {_KINDS.get(type(value), 'value')}, expected a JSON {_KINDS[kind]}")
    _plain(path, key, value)
    return value


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _strings(path: Path, key: str, value: object) -> None:
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise _fail(path, key, f"{value!r} is not a list of strings")


def _check_spec(path: Path, spec: dict, metadata: Mapping[str, str]) -> None:
    key = "erasec.spec"
    for field in ("name", "version", "method"):
        if not isinstance(spec.get(field), str):
            raise _fail(path, f"{key}.{field}", f"{spec.get(field)!r} is not a string")
    if spec["name"] != metadata["erasec.name"] or spec["version"] != metadata["erasec.version"]:
        raise _fail(path, key, "its name/version disagree with erasec.name/erasec.version; the file was edited")
    if not isinstance(spec.get("model"), (str, type(None))):
        raise _fail(path, f"{key}.model", f"{spec.get('model')!r} is not a string")
    if not isinstance(spec.get("erase"), list):
        raise _fail(path, f"{key}.erase", "is not a list")
    for i, entry in enumerate(spec["erase"]):
        where = f"{key}.erase[{i}]"
        if not isinstance(entry, dict) or not isinstance(entry.get("concept"), str) or not entry["concept"]:
            raise _fail(path, where, "is not an entry with a concept")
        if not isinstance(entry.get("anchor", ""), (str, type(None))):
            raise _fail(path, f"{where}.anchor", f"{entry['anchor']!r} is not a string")
        for field in ("synonyms", "templates"):
            _strings(path, f"{where}.{field}", entry.get(field, []))
        if not _is_number(entry.get("strength", 1.0)) or not math.isfinite(entry.get("strength", 1.0)):
            raise _fail(path, f"{where}.strength", f"{entry['strength']!r} is not a finite number")
    _strings(path, f"{key}.preserve", spec.get("preserve", []))
    for field in ("options", "output"):
        if not isinstance(spec.get(field, {}), dict):
            raise _fail(path, f"{key}.{field}", "is not a JSON object")
    output = spec.get("output", {})
    if output.get("format", "kohya") not in ("kohya", "peft") or output.get("dtype", "fp32") not in DTYPES.values():
        raise _fail(path, f"{key}.output", f"format {output.get('format')!r} / dtype {output.get('dtype')!r} is not a LoRA patch's")


def _check_base(path: Path, base: dict) -> None:
    key = "erasec.base"
    if base.get("family") not in FAMILIES:
        raise _fail(path, f"{key}.family", f"{base.get('family')!r} is not one of {', '.join(FAMILIES)}")
    if not isinstance(base.get("model"), (str, type(None))) or not _is_int(base.get("tensors")):
        raise _fail(path, key, "model must be a string and tensors an integer")
    for field in ("sha256", "sha256_fp16"):
        if not isinstance(base.get(field), str) or not _HEX64.fullmatch(base[field]):
            raise _fail(path, f"{key}.{field}", f"{base.get(field)!r} is not a sha256 (64 hex digits)")
    per_tensor = base.get("per_tensor", {})
    if not isinstance(per_tensor, dict) or not all(
        isinstance(v, list) and len(v) == 2 and all(isinstance(h, str) for h in v) for v in per_tensor.values()
    ):
        raise _fail(path, f"{key}.per_tensor", "is not a map of tensor name → [hex, hex]")
    if base.get("dtype") not in (None, *DTYPES.values()):
        raise _fail(path, f"{key}.dtype", f"{base['dtype']!r} is not fp32, fp16, bf16 or null")
    encoder = base.get("text_encoder")
    if encoder is not None and (not isinstance(encoder, dict) or not isinstance(encoder.get("sha256"), str)):
        raise _fail(path, f"{key}.text_encoder", "is not a pin (an object with a sha256) or null")


def _check_spaces(path: Path, spaces: list, family: str, pooled: bool, rank: int) -> None:
    if not spaces:
        raise _fail(path, "erasec.spaces", "is empty; the patch declares no layer")
    seen_spaces, seen_layers = set(), set()
    for i, space in enumerate(spaces):
        where = f"erasec.spaces[{i}]"
        if not isinstance(space, dict):
            raise _fail(path, where, f"is a JSON {_KINDS.get(type(space), 'value')}, expected an object")
        name = _name(path, f"{where}.space", space.get("space"))
        if name in seen_spaces:
            raise _fail(path, f"{where}.space", f"{name!r} is declared twice")
        seen_spaces.add(name)
        if space.get("form") not in ("shared", "per-layer"):
            raise _fail(path, f"{where}.form", f"{space.get('form')!r} is not shared or per-layer")
        if not _is_int(space.get("rank")) or not 1 <= space["rank"] <= rank:
            raise _fail(path, f"{where}.rank", f"{space.get('rank')!r} is not an integer in [1, ss_network_dim = {rank}]")
        if not _is_number(space.get("condition", 0.0)):
            raise _fail(path, f"{where}.condition", f"{space['condition']!r} is not a number")
        layers = space.get("layers")
        if not isinstance(layers, list) or not layers:
            raise _fail(path, f"{where}.layers", "is not a non-empty list of module paths")
        for layer in layers:
            allowed = isinstance(layer, str) and (
                _KV_LAYER.fullmatch(layer) or (layer == POOLED_LAYER and family == "sdxl" and pooled)
            )
            if not allowed:
                raise _fail(
                    path, f"{where}.layers",
                    f"{layer!r} is not a module erasec edits (attn2.to_k/to_v, or SDXL's {POOLED_LAYER} "
                    "with options.pooled)",
                )
            if layer in seen_layers:
                raise _fail(path, f"{where}.layers", f"{layer} is declared twice")
            seen_layers.add(layer)


def _check_report(path: Path, report: dict) -> None:
    efficacy = report.get("efficacy", {})
    if not isinstance(efficacy, dict) or not all(v is None or _is_number(v) for v in efficacy.values()):
        raise _fail(path, "erasec.report.efficacy", "is not a map of concept → number")
    if not (report.get("specificity") is None or _is_number(report["specificity"])):
        raise _fail(path, "erasec.report.specificity", f"{report['specificity']!r} is not a number")


def _rank(path: Path, metadata: Mapping[str, str]) -> int:
    dim = metadata.get("ss_network_dim", "")
    if not dim.isascii() or not dim.isdigit() or not 1 <= int(dim) <= 1 << 20:
        raise _fail(path, "ss_network_dim", f"{dim!r} is not a rank (a positive integer)")
    rank = int(dim)
    expected = {"ss_network_alpha": str(rank), "ss_network_module": "networks.lora", "ss_network_args": "{}"}
    for key, value in expected.items():
        if metadata.get(key) != value:
            raise _fail(path, key, f"{metadata.get(key)!r}, expected {value!r}: loaders would scale or build the modules otherwise")
    return rank


def check_patch(
    path: Path, entries: Mapping[str, object], metadata: Mapping[str, str], *, alphas: Callable[[str], float]
) -> Declared:
    """The checked manifest of a patch at ``path``; ``alphas(name)`` reads one alpha tensor's value."""
    for key in ("erasec.name", "erasec.version"):
        _name(path, key, metadata.get(key))
    for key in ("erasec.compiler", "erasec.pipeline"):
        if not isinstance(metadata.get(key), str):
            raise _fail(path, key, "missing; not a complete erasec patch")
    for key, value in metadata.items():
        _plain(path, key, key)
        _plain(path, key, value)
    spec = _json(path, metadata, "erasec.spec", dict)
    base = _json(path, metadata, "erasec.base", dict)
    spaces = _json(path, metadata, "erasec.spaces", list)
    report = _json(path, metadata, "erasec.report", dict)
    derived = _json(path, metadata, "erasec.derived_from", list, optional=True)
    _check_spec(path, spec, metadata)
    _check_base(path, base)
    rank = _rank(path, metadata)
    pooled = (spec.get("options") or {}).get("pooled") is True
    _check_spaces(path, spaces, base["family"], pooled, rank)
    _check_report(path, report)
    if derived is not None and not all(isinstance(d, dict) and isinstance(d.get("name"), str) for d in derived):
        raise _fail(path, "erasec.derived_from", "is not a list of {name, version, sha256}")
    for key in ("erasec.shared", "erasec.link"):
        if key in metadata and not metadata[key].startswith("{"):
            raise _fail(path, key, "is not a packed-array record; the file is damaged")
    layout = spec.get("output", {}).get("format", "kohya")
    modules, dtype = _check_tensors(path, entries, spaces, base["family"], layout, rank, alphas)
    if dtype != spec.get("output", {}).get("dtype", "fp32"):
        raise _fail(path, "erasec.spec.output.dtype", f"{spec['output'].get('dtype')!r}, but the tensors are {dtype}")
    _check_adapter(path, metadata, layout, rank, sorted(m.layer for m in modules))
    return Declared(
        spec=spec, base=base, spaces=tuple(spaces), report=report, rank=rank, layout=layout, dtype=dtype,
        modules=modules,
    )


def _check_adapter(path: Path, metadata: Mapping[str, str], layout: str, rank: int, layers: list[str]) -> None:
    """PEFT's config decides what diffusers builds: exactly what ``backends/peft.py`` writes, so no
    extra target module, no ``rank_pattern``/``alpha_pattern``, no random initialisation."""
    if layout == "kohya":
        if ADAPTER_KEY in metadata:
            raise _fail(path, ADAPTER_KEY, "a kohya patch carries no PEFT config; a loader would build other modules")
        return
    config = _json(path, metadata, ADAPTER_KEY, dict)
    expected = {"unet.r": rank, "unet.lora_alpha": rank, "unet.target_modules": layers}
    if config != expected:
        raise _fail(path, ADAPTER_KEY, f"is not r = lora_alpha = {rank} over exactly the declared layers")


def _check_tensors(path, entries, spaces, family, layout, rank, alphas) -> tuple[tuple[LoraModule, ...], str]:
    expected: dict[str, tuple[str, str]] = {}  # tensor name → (layer, space)
    prefixes: list[tuple[str, str, str]] = []
    for space in spaces:
        for layer in space["layers"]:
            try:
                prefix = peft_module_name(layer) if layout == "peft" else kohya_module_name(layer, family)
            except VerifyError as error:
                raise _fail(path, "erasec.spaces", str(error)) from None
            prefixes.append((layer, space["space"], prefix))
            for name in factor_names(layout, prefix):
                if name is not None:
                    expected[name] = (layer, space["space"])
    for name in sorted(entries):
        if name not in expected:
            raise _fail(
                path, f"tensor {name!r}",
                "is not a LoRA factor or alpha of a layer erasec.spaces declares; a loader would apply it unseen",
            )
    kinds = set()
    ends = []
    for name, entry in entries.items():
        if not isinstance(entry, dict) or entry.get("dtype") not in DTYPES:
            raise _fail(path, f"tensor {name!r}", "is not an fp32, fp16 or bf16 tensor")
        shape, offsets = entry.get("shape"), entry.get("data_offsets")
        if not (isinstance(shape, list) and all(_is_int(n) and n >= 0 for n in shape)):
            raise _fail(path, f"tensor {name!r}", f"shape {shape!r} is not a list of sizes")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_int(n) and n >= 0 for n in offsets)):
            raise _fail(path, f"tensor {name!r}", f"data_offsets {offsets!r} are not two byte offsets")
        if offsets[1] - offsets[0] != math.prod(shape) * _ITEM_BYTES[entry["dtype"]]:
            raise _fail(path, f"tensor {name!r}", f"data_offsets {offsets} do not hold shape {shape}")
        kinds.add(entry["dtype"])
        ends.append(tuple(offsets))
    position = 0
    for start, end in sorted(ends):
        if start != position:
            raise _fail(path, "tensors", "their data overlap or leave gaps; the file is damaged or crafted")
        position = end
    if len(kinds) != 1:
        raise _fail(path, "tensors", f"mix dtypes {sorted(kinds)}; a patch has one")
    modules, widths = [], {}
    for layer, space, prefix in prefixes:
        up_name, down_name, alpha_name = factor_names(layout, prefix)
        for name in (up_name, down_name, alpha_name):
            if name is not None and name not in entries:
                raise _fail(path, f"erasec.spaces: {layer}", f"declared, but the patch has no tensor {name!r}")
        up, down = entries[up_name]["shape"], entries[down_name]["shape"]
        if len(up) != 2 or len(down) != 2 or up[1] != down[0] or down[0] != rank or 0 in up or 0 in down:
            raise _fail(path, f"{layer}", f"up {up} and down {down} are not a rank-{rank} (ss_network_dim) LoRA")
        if widths.setdefault(space, down[1]) != down[1]:
            raise _fail(path, f"{layer}", f"reads {down[1]} features, other layers of space {space!r} {widths[space]}")
        if alpha_name is not None:
            if entries[alpha_name]["shape"] not in ([], [1]):
                raise _fail(path, f"tensor {alpha_name!r}", f"shape {entries[alpha_name]['shape']} is not a scalar")
            alpha = alphas(alpha_name)
            if alpha != rank:
                raise _fail(path, f"tensor {alpha_name!r}", f"alpha {alpha} is not the rank {rank}: loaders would scale ΔW by {alpha}/{rank}")
        modules.append(LoraModule(layer=layer, space=space, prefix=prefix, rank=rank, out_features=up[0], in_features=down[1]))
    return tuple(modules), DTYPES[kinds.pop()]
