"""The manifest half of a patch's check (``validate.check_patch``): every ``erasec.*`` and ``ss_*``
key has the type and values the commands read, names hold no control characters and every string
is valid Unicode. A refusal is one line, ``<file>: <key>: <what is wrong>``.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Mapping

from erasec.ir.dit_naming import CONTEXT_SITE, DIT_FAMILIES, MAX_SEQUENCE_LENGTH, POOLED_SITE, is_dit, is_dit_site, sites_text
from erasec.ir.naming import peft_component

from .errors import PatchError

FAMILIES = ("sd1", "sd2", "sdxl", *DIT_FAMILIES)
POOLED_LAYER = "add_embedding.linear_1"
# ss_network_module: the kohya network a file of the family is trained with (sd-scripts
# networks/lora.py, lora_flux.py — FLUX and Chroma —, lora_sd3.py; musubi-tuner networks/lora_wan.py)
NETWORK_MODULES = {
    "sd1": "networks.lora", "sd2": "networks.lora", "sdxl": "networks.lora",
    "flux": "networks.lora_flux", "chroma": "networks.lora_flux", "sd3": "networks.lora_sd3", "wan": "networks.lora_wan",
}
# erasec.base.component: the denoiser folders of a family with several, the first its default
# (compiler/models/families Family.denoisers; tests/compiler/test_wan_experts.py keeps them equal)
DENOISERS = {"wan": ("transformer", "transformer_2")}
DTYPES = {"F32": "fp32", "F16": "fp16", "BF16": "bf16"}
KV_LAYER = re.compile(
    r"(?:(?:down|up)_blocks\.\d{1,3}\.attentions\.\d{1,3}|mid_block\.attentions\.0)"
    r"\.transformer_blocks\.\d{1,3}\.attn2\.to_[kv]"
)
_HEX64 = re.compile(r"[0-9a-f]{64}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
KINDS = {dict: "object", list: "list", str: "string", int: "number", float: "number", bool: "boolean", type(None): "null"}


def fail(path: Path, key: str, what: str) -> PatchError:
    return PatchError(f"{path}: {key}: {what}")


def plain(path: Path, key: str, value: object) -> None:
    """Every string in a parsed value is valid Unicode without NUL; numbers are not booleans' cousins."""
    if isinstance(value, str):
        if "\x00" in value:
            raise fail(path, key, "holds a NUL character; the file is damaged or crafted")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise fail(path, key, "holds a lone surrogate (not valid Unicode); the file is damaged") from None
    elif isinstance(value, dict):
        for inner_key, inner in value.items():
            plain(path, key, inner_key)
            plain(path, key, inner)
    elif isinstance(value, list):
        for inner in value:
            plain(path, key, inner)


def check_name(path: Path, key: str, value: object) -> str:
    if not isinstance(value, str) or not value.strip() or _CONTROL.search(value):
        raise fail(path, key, f"{value!r} is not a name (a non-empty string without control characters)")
    return value


def json_value(path: Path, metadata: Mapping[str, str], key: str, kind: type, *, optional: bool = False):
    if key not in metadata:
        if optional:
            return None
        raise fail(path, key, "missing; not a complete erasec patch")
    try:
        value = json.loads(metadata[key])
    except (json.JSONDecodeError, RecursionError):
        raise fail(path, key, "is not valid JSON; the file is damaged") from None
    if not isinstance(value, kind):
        raise fail(path, key, f"is a JSON {KINDS.get(type(value), 'value')}, expected a JSON {KINDS[kind]}")
    plain(path, key, value)
    return value


def is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def strings(path: Path, key: str, value: object) -> None:
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise fail(path, key, f"{value!r} is not a list of strings")


def check_spec(path: Path, spec: dict, metadata: Mapping[str, str]) -> None:
    key = "erasec.spec"
    for field in ("name", "version", "method"):
        if not isinstance(spec.get(field), str):
            raise fail(path, f"{key}.{field}", f"{spec.get(field)!r} is not a string")
    if spec["name"] != metadata["erasec.name"] or spec["version"] != metadata["erasec.version"]:
        raise fail(path, key, "its name/version disagree with erasec.name/erasec.version; the file was edited")
    if not isinstance(spec.get("model"), (str, type(None))):
        raise fail(path, f"{key}.model", f"{spec.get('model')!r} is not a string")
    if not isinstance(spec.get("erase"), list):
        raise fail(path, f"{key}.erase", "is not a list")
    for i, entry in enumerate(spec["erase"]):
        where = f"{key}.erase[{i}]"
        if not isinstance(entry, dict) or not isinstance(entry.get("concept"), str) or not entry["concept"]:
            raise fail(path, where, "is not an entry with a concept")
        if not isinstance(entry.get("anchor", ""), (str, type(None))):
            raise fail(path, f"{where}.anchor", f"{entry['anchor']!r} is not a string")
        for field in ("synonyms", "templates"):
            strings(path, f"{where}.{field}", entry.get(field, []))
        if not is_number(entry.get("strength", 1.0)) or not math.isfinite(entry.get("strength", 1.0)):
            raise fail(path, f"{where}.strength", f"{entry['strength']!r} is not a finite number")
    strings(path, f"{key}.preserve", spec.get("preserve", []))
    for field in ("options", "output"):
        if not isinstance(spec.get(field, {}), dict):
            raise fail(path, f"{key}.{field}", "is not a JSON object")
    output = spec.get("output", {})
    if output.get("format", "kohya") not in ("kohya", "peft") or output.get("dtype", "fp32") not in DTYPES.values():
        raise fail(path, f"{key}.output", f"format {output.get('format')!r} / dtype {output.get('dtype')!r} is not a LoRA patch's")


def check_base(path: Path, base: dict) -> None:
    key = "erasec.base"
    if base.get("family") not in FAMILIES:
        raise fail(path, f"{key}.family", f"{base.get('family')!r} is not one of {', '.join(FAMILIES)}")
    if not isinstance(base.get("model"), (str, type(None))) or not is_int(base.get("tensors")):
        raise fail(path, key, "model must be a string and tensors an integer")
    for field in ("sha256", "sha256_fp16"):
        if not isinstance(base.get(field), str) or not _HEX64.fullmatch(base[field]):
            raise fail(path, f"{key}.{field}", f"{base.get(field)!r} is not a sha256 (64 hex digits)")
    per_tensor = base.get("per_tensor", {})
    if not isinstance(per_tensor, dict) or not all(
        isinstance(v, list) and len(v) == 2 and all(isinstance(h, str) for h in v) for v in per_tensor.values()
    ):
        raise fail(path, f"{key}.per_tensor", "is not a map of tensor name → [hex, hex]")
    if base.get("dtype") not in (None, *DTYPES.values()):
        raise fail(path, f"{key}.dtype", f"{base['dtype']!r} is not fp32, fp16, bf16 or null")
    encoder = base.get("text_encoder")
    if encoder is not None and (not isinstance(encoder, dict) or not isinstance(encoder.get("sha256"), str)):
        raise fail(path, f"{key}.text_encoder", "is not a pin (an object with a sha256) or null")


def check_sequence_length(path: Path, base: dict, spec: dict) -> None:
    """A diffusion transformer's patch records the T5 padding it was solved at (``erasec.base``'s
    ``sequence_length``), the spec's ``options.sequence_length`` when it gave one; an SD patch none.
    A DiT patch without it cannot be re-measured at its own rows, so it is refused, not guessed."""
    key = "erasec.base.sequence_length"
    length = base.get("sequence_length")
    if not is_dit(base["family"]):
        if "sequence_length" in base:
            raise fail(path, key, f"{length!r} recorded for {base['family']}, which has no T5 padding")
        return
    if length is None:
        raise fail(path, key, f"missing: a {base['family']} patch records the T5 padding it was built at; "
                              "the manifest was edited or written by an older erasec — rebuild the patch")
    if not is_int(length) or not 1 <= length <= MAX_SEQUENCE_LENGTH:
        raise fail(path, key, f"{length!r} is not an integer in 1..{MAX_SEQUENCE_LENGTH}")
    asked = (spec.get("options") or {}).get("sequence_length")
    if asked is not None and asked != length:
        raise fail(path, key, f"{length} disagrees with erasec.spec options.sequence_length {asked!r}; the file was edited")


def check_component(path: Path, base: dict) -> None:
    """Which denoiser a patch edits (``erasec.base``'s ``component``): one of its family's folders for
    a family with several (Wan 2.2's ``transformer``, ``transformer_2``; absent: the first, as erasec
    wrote before it edited the second), never recorded for a family with one."""
    key = "erasec.base.component"
    component = base.get("component")
    allowed = DENOISERS.get(base["family"])
    if allowed is None:
        if "component" in base:
            raise fail(path, key, f"{component!r} recorded for {base['family']}, which has one denoiser")
        return
    if "component" in base and component not in allowed:
        raise fail(path, key, f"{component!r} is not one of {', '.join(allowed)}")


def layer_role(layer: str) -> str:
    """The role of a declared layer's site: pooled, context (a DiT's text entry), k or v."""
    if layer in (POOLED_LAYER, POOLED_SITE):
        return "pooled"
    if layer == CONTEXT_SITE:
        return "context"
    return "k" if layer.endswith(".to_k") else "v"


def editable_layer(layer: object, family: str, pooled: bool) -> bool:
    """Whether a patch of ``family`` may declare ``layer``: a UNet ``attn2.to_k/to_v`` (SDXL's pooled
    layer with ``options.pooled``), or one of a diffusion transformer's sites (``ir/dit_naming.py``;
    FLUX's and SD3's pooled site is part of the family's target, not an option)."""
    if not isinstance(layer, str):
        return False
    if is_dit(family):
        return is_dit_site(layer, family)
    return bool(KV_LAYER.fullmatch(layer)) or (layer == POOLED_LAYER and family == "sdxl" and pooled)


def check_spaces(path: Path, spaces: list, family: str, pooled: bool, rank: int) -> None:
    if not spaces:
        raise fail(path, "erasec.spaces", "is empty; the patch declares no layer")
    seen_spaces, seen_layers = set(), set()
    for i, space in enumerate(spaces):
        where = f"erasec.spaces[{i}]"
        if not isinstance(space, dict):
            raise fail(path, where, f"is a JSON {KINDS.get(type(space), 'value')}, expected an object")
        name = check_name(path, f"{where}.space", space.get("space"))
        if name in seen_spaces:
            raise fail(path, f"{where}.space", f"{name!r} is declared twice")
        seen_spaces.add(name)
        if space.get("form") not in ("shared", "per-layer"):
            raise fail(path, f"{where}.form", f"{space.get('form')!r} is not shared or per-layer")
        if not is_int(space.get("rank")) or not 1 <= space["rank"] <= rank:
            raise fail(path, f"{where}.rank", f"{space.get('rank')!r} is not an integer in [1, ss_network_dim = {rank}]")
        if not is_number(space.get("condition", 0.0)):
            raise fail(path, f"{where}.condition", f"{space['condition']!r} is not a number")
        layers = space.get("layers")
        if not isinstance(layers, list) or not layers:
            raise fail(path, f"{where}.layers", "is not a non-empty list of module paths")
        for layer in layers:
            if not editable_layer(layer, family, pooled):
                edited = (
                    sites_text(family) if is_dit(family)
                    else f"attn2.to_k/to_v, or SDXL's {POOLED_LAYER} with options.pooled"
                )
                raise fail(path, f"{where}.layers", f"{layer!r} is not a module erasec edits ({edited})")
            if layer in seen_layers:
                raise fail(path, f"{where}.layers", f"{layer} is declared twice")
            seen_layers.add(layer)


def check_report(path: Path, report: dict) -> None:
    efficacy = report.get("efficacy", {})
    if not isinstance(efficacy, dict) or not all(v is None or is_number(v) for v in efficacy.values()):
        raise fail(path, "erasec.report.efficacy", "is not a map of concept → number")
    if not (report.get("specificity") is None or is_number(report["specificity"])):
        raise fail(path, "erasec.report.specificity", f"{report['specificity']!r} is not a number")
    dropped = report.get("dropped_preserve", [])
    if not isinstance(dropped, list) or not all(isinstance(prompt, str) for prompt in dropped):
        raise fail(path, "erasec.report.dropped_preserve", "is not a list of preserve prompts")
    check_drift(path, report.get("drift", {}))


DRIFT_NUMBERS = ("max_drift", "scale", "drift", "efficacy", "full_drift", "full_efficacy", "floor")


def check_drift(path: Path, drift: object) -> None:
    """``erasec.report.drift``: key space → where ``options.max_drift`` landed (docs/patch-format.md)."""
    for space, landed in drift.items() if isinstance(drift, dict) else [(None, None)]:
        where = "erasec.report.drift" + ("" if space is None else f".{space}")
        if not isinstance(landed, dict) or not isinstance(landed.get("binding"), bool) or not is_int(landed.get("preserve_rows")):
            raise fail(path, where, "is not a drift-budget record (binding, preserve_rows and numbers)")
        bad = [key for key in DRIFT_NUMBERS if not is_number(landed.get(key))]
        if bad:
            raise fail(path, f"{where}.{bad[0]}", f"{landed.get(bad[0])!r} is not a number")


ADAPTER_KEY = "lora_adapter_metadata"  # a PEFT patch's LoraConfig (backends/peft.py)


def rank_of(path: Path, metadata: Mapping[str, str], layout: str = "kohya", family: str = "sd1") -> int:
    """The patch's rank: kohya's ``ss_network_dim`` (with alpha, module and args as erasec writes
    them, ``NETWORK_MODULES`` by ``family``), or a PEFT patch's config ``<component>.r`` (``unet``, or
    ``transformer`` for a diffusion transformer: ``ir.naming.peft_component``;
    ``validate._check_adapter`` checks the rest of it).
    erasec writes no ``ss_*`` keys into a PEFT patch (A1111 would list it as a LoRA it applies, then
    apply nothing); one written before that still has them, and they must agree."""
    if layout == "peft":
        component = peft_component(family)
        rank = json_value(path, metadata, ADAPTER_KEY, dict).get(f"{component}.r")
        if not is_int(rank) or not 1 <= rank <= 1 << 20:
            raise fail(path, ADAPTER_KEY, f"{component}.r {rank!r} is not a rank (a positive integer)")
        if "ss_network_dim" in metadata and rank_of(path, metadata, "kohya", family) != rank:
            raise fail(path, "ss_network_dim", f"{metadata['ss_network_dim']!r}, but the PEFT config's r is {rank}")
        return rank
    dim = metadata.get("ss_network_dim", "")
    if not dim.isascii() or not dim.isdigit() or not 1 <= int(dim) <= 1 << 20:
        raise fail(path, "ss_network_dim", f"{dim!r} is not a rank (a positive integer)")
    rank = int(dim)
    expected = {"ss_network_alpha": str(rank), "ss_network_module": NETWORK_MODULES[family], "ss_network_args": "{}"}
    for key, value in expected.items():
        if metadata.get(key) != value:
            raise fail(path, key, f"{metadata.get(key)!r}, expected {value!r}: loaders would scale or build the modules otherwise")
    return rank
