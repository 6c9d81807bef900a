"""A diffusion transformer's text encoders and tokenizers from wherever they are: the diffusers folder,
the single file itself (ComfyUI's and SAI's all-in-one checkpoints), or separate inputs the user
names (docs/models.md, "Single files and separate encoders").

A transformer file usually ships without its text encoders: ComfyUI keeps ``t5xxl_fp16.safetensors``,
``clip_l.safetensors``, ``clip_g.safetensors`` and ``umt5_xxl_fp16.safetensors`` apart
(``comfy/sd.py`` ``load_clip``), each holding the HF state dict (``T5EncoderModel``:
``shared.weight``, ``encoder.block.N…``; ``CLIPTextModel[WithProjection]``: ``text_model.…``; an
OpenCLIP-named CLIP is converted as ComfyUI does). ``TextInputs`` is what the user gave, per
family slot (``Family.encoder_slots``: ``t5``, ``clip_l``, ``clip_g``); ``resolve_sources`` finds
each encoder the build needs — a given file first, then the folder's component, then the prefix
an all-in-one file keeps it under — and refuses in one line, naming the slot and every place it
looked, when one is missing.

A file carries no config, so it is read off the shapes (``infer_t5_config``; CLIP:
``text_encoders.infer_clip_config``), with what shapes cannot say in the file's ``erasec.text_encoders``
header (per slot) when erasec exported it. Tokenizers: CLIP's is erasec's shipped BPE with the
family's pad token unless given; a T5 vocabulary is not in the weights and erasec ships none
(only the tiny built-ins' in-process one, ``t5_tokenizer.py``), so a T5 encoder from a file needs a
tokenizer input: a folder (``tokenizer.json``, as ComfyUI's ``comfy/text_encoders/t5_tokenizer`` or a
FLUX folder's ``tokenizer_2``) or a ``tokenizer.json`` file.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, NamedTuple

from ..errors import ModelError
from .families import Family
from .layout import open_clip_to_clip
from .sd_components import TOKENIZER_OF
from .tensor_files import TensorFile, first_line, read_json, regular_file
from .text_encoders import (
    assemble_clip,
    config_errors,
    header_overrides,
    infer_clip_config,
)
from .tokenizer import EOS_TOKEN

_CLIP_SLOTS = ("clip_l", "clip_g")
_WHAT = {"t5": "T5", "clip_l": "CLIP-L", "clip_g": "CLIP-G"}
_COMFY_FILE = {"t5": "t5xxl_fp16.safetensors", "clip_l": "clip_l.safetensors", "clip_g": "clip_g.safetensors"}
_UMT5_FILE = "umt5_xxl_fp16.safetensors"
_T5_BLOCK = re.compile(r"^encoder\.block\.(\d+)\.")
_TOKENIZER_FILES = (".json", ".txt", ".model")


@dataclass(frozen=True, slots=True)
class TextInputs:
    """Text encoders and tokenizers given apart from the model: (slot, path) pairs, sorted by slot
    (the spec's ``text_encoders`` / ``tokenizers``, the CLI's ``--text-encoder`` / ``--tokenizer``)."""

    encoders: tuple[tuple[str, str], ...] = ()
    tokenizers: tuple[tuple[str, str], ...] = ()

    def __bool__(self) -> bool:
        return bool(self.encoders or self.tokenizers)

    def encoder(self, slot: str) -> Path | None:
        return next((Path(path) for name, path in self.encoders if name == slot), None)

    def tokenizer(self, slot: str) -> Path | None:
        return next((Path(path) for name, path in self.tokenizers if name == slot), None)


class Source(NamedTuple):
    """Where one text encoder's weights are: a diffusers component ``folder``, or a safetensors
    ``file`` whose tensors under ``prefix`` are the HF state dict."""

    kind: Literal["folder", "file"]
    path: Path
    prefix: str = ""
    slot: str = ""
    model_class: str = ""


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class TextSources:
    """The resolved text encoders (component → ``Source``) and tokenizers (component → a folder or
    a file; None: erasec's CLIP BPE padding with ``pads[component]``) a ``DiTModel`` reads."""

    encoders: Mapping[str, Source]
    tokenizers: Mapping[str, Path | None]
    pads: Mapping[str, str]
    _files: dict = field(default_factory=dict, repr=False)

    def has(self, component: str) -> bool:
        return component in self.encoders

    def from_file(self, component: str) -> bool:
        return self.encoders[component].kind == "file"

    def tensor_file(self, path: Path) -> TensorFile:
        if path not in self._files:
            self._files[path] = TensorFile(path, pickled=False)
        return self._files[path]

    def load_encoder(self, component: str):
        """The encoder read from a file source, fp32, in eval mode."""
        source = self.encoders[component]
        weights = self.tensor_file(source.path)
        if source.model_class.startswith("CLIP"):
            return _clip_from_file(weights, source).eval()
        return _t5_from_file(weights, source).eval()

    def encoder_width(self, component: str) -> int | None:
        """A T5 encoder's width: its folder's config.json, or its file's shapes; None without it."""
        if component not in self.encoders:
            return None
        source = self.encoders[component]
        if source.kind == "folder":
            config = read_json(source.path / "config.json")
            return config.get("d_model", config.get("hidden_size"))
        weights = self.tensor_file(source.path)
        shapes = {k.removeprefix(source.prefix): v for k, v in weights.shapes.items() if k.startswith(source.prefix)}
        return infer_t5_config(shapes, weights.path)["d_model"]

    def tensors(self) -> dict[str, tuple[TensorFile, str]]:
        """``component/name`` → (file, tensor name) of every encoder weight (the text-encoder pin;
        ``pins.text_encoder_tensors``): a folder's safetensors files, a file's tensors under its prefix."""
        out: dict[str, tuple[TensorFile, str]] = {}
        for component, source in sorted(self.encoders.items()):
            files = sorted(source.path.glob("*.safetensors")) if source.kind == "folder" else [source.path]
            for path in files:
                weights = self.tensor_file(path)
                for key in weights.shapes:
                    if key.startswith(source.prefix) and not key.endswith("position_ids"):
                        name = key.removeprefix(source.prefix).removeprefix("text_model.")
                        out[f"{component}/{name}"] = (weights, key)
        return out

    def files_digest(self) -> str:
        """A SHA-256 of what besides the weights decides the rows: each encoder folder's JSON, each
        file source's header metadata (its recorded config), each tokenizer's files, each shipped
        tokenizer's pad token."""
        digest = hashlib.sha256()
        for component, source in sorted(self.encoders.items()):
            digest.update(f"encoder {component} {source.kind} {source.prefix}\0".encode())
            if source.kind == "folder":
                _digest_folder(digest, source.path, (".json",))
            else:
                digest.update(json.dumps(self.tensor_file(source.path).metadata, sort_keys=True).encode())
        for component, path in sorted(self.tokenizers.items()):
            digest.update(f"tokenizer {component}\0".encode())
            if path is None:
                digest.update(self.pads[component].encode())
            elif path.is_dir():
                _digest_folder(digest, path, _TOKENIZER_FILES)
            else:
                digest.update(hashlib.sha256(path.read_bytes()).digest())
        return digest.hexdigest()


def _digest_folder(digest, folder: Path, suffixes: tuple[str, ...]) -> None:
    for path in sorted(p for p in folder.iterdir() if p.suffix in suffixes and p.is_file()):
        digest.update(f"{path.name}\0".encode())
        digest.update(hashlib.sha256(path.read_bytes()).digest())


# --- finding each encoder ---------------------------------------------------------------------------


def needed_components(facts: Family, pooled: bool) -> tuple[str, ...]:
    """The encoders a build reads: the family's sequence encoders, and the pooled one when edited
    (FLUX's CLIP-L is read only for ``options.pooled``)."""
    components = [encoder.component for encoder in facts.encoders]
    if pooled and facts.pooled_encoder is not None:
        components += [c for c in facts.pooled_encoder.split("+") if c not in components]
    return tuple(components)


def check_slots(family: Family, given: TextInputs, location: str) -> None:
    """Every slot the user named is one of the family's."""
    slots = [slot.slot for slot in family.encoder_slots]
    for kind, pairs in (("text_encoders", given.encoders), ("tokenizers", given.tokenizers)):
        for name, _ in pairs:
            if name not in slots:
                raise ModelError(
                    f"{location}: {kind}.{name}: a {family.pipeline} model has no {name!r} text encoder; "
                    f"its slots are {', '.join(slots)}"
                )


def resolve_sources(
    family: Family,
    components: tuple[str, ...],
    given: TextInputs,
    location: str,
    *,
    folder: Path | None = None,
    single_file: TensorFile | None = None,
    optional: tuple[str, ...] = (),
) -> TextSources:
    """The source of each of ``components`` (module docstring's order); a missing one that is not
    ``optional`` is a one-line ``ModelError`` naming the slot and where it was looked for."""
    check_slots(family, given, location)
    pads = {encoder.component: encoder.pad_token for encoder in family.encoders}
    encoders: dict[str, Source] = {}
    tokenizers: dict[str, Path | None] = {}
    for component in components:
        slot = family.encoder_slot(component)
        source = _encoder_source(slot, given, folder, single_file, location)
        if source is None:
            if component in optional:
                continue
            raise _missing_encoder(family, slot, folder, single_file, location)
        encoders[component] = source
        tokenizers[component] = _tokenizer_source(family, slot, given, folder, TOKENIZER_OF[component], location)
        pads.setdefault(component, EOS_TOKEN)  # FLUX's pooled CLIP-L: OpenAI CLIP-L's tokenizer pads with EoT
    return TextSources(encoders=encoders, tokenizers=tokenizers, pads=pads)


def _encoder_source(slot, given: TextInputs, folder: Path | None, single_file: TensorFile | None, location: str):
    path = given.encoder(slot.slot)
    if path is not None:
        path = regular_file(path, missing=f"no such file (text_encoders.{slot.slot}); give the {_WHAT[slot.slot]} encoder's .safetensors file")
        _check_kind(TensorFile(path, pickled=False), slot)
        return Source("file", path, "", slot.slot, slot.model_class)
    if folder is not None and (folder / slot.component).is_dir():
        return Source("folder", folder / slot.component, "", slot.slot, slot.model_class)
    if single_file is not None and any(key.startswith(slot.embedded_prefix) for key in single_file.shapes):
        return Source("file", single_file.path, slot.embedded_prefix, slot.slot, slot.model_class)
    return None


def _missing_encoder(family: Family, slot, folder: Path | None, single_file: TensorFile | None, location: str) -> ModelError:
    what = _WHAT[slot.slot] if slot.model_class != "UMT5EncoderModel" else "umT5"
    looked = [f"none given (text_encoders.{slot.slot} in the spec, --text-encoder {slot.slot}=FILE)"]
    if folder is not None:
        looked.append(f"no {slot.component}/ folder in {folder}")
    if single_file is not None:
        looked.append(f"none inside {single_file.path.name} (no {slot.embedded_prefix}* tensors)")
    example = _UMT5_FILE if slot.model_class == "UMT5EncoderModel" else _COMFY_FILE[slot.slot]
    return ModelError(
        f"{location}: no {what} text encoder ({slot.slot}, {family.pipeline}'s {slot.component}): "
        f"{'; '.join(looked)}; give its file, e.g. --text-encoder {slot.slot}={example}"
    )


def _check_kind(weights: TensorFile, slot) -> None:
    """A separate encoder file holds the slot's kind of encoder (a T5 file given as clip_l, say, is
    refused here rather than as a shape error later)."""
    keys = weights.shapes
    if slot.model_class.startswith("CLIP"):
        ok = any(k.startswith("text_model.") for k in keys) or "transformer.resblocks.0.ln_1.weight" in keys
        expected = "text_model.* tensors (an HF CLIP text model, as ComfyUI's clip_l/clip_g files)"
    else:
        ok = any(_T5_BLOCK.match(k) for k in keys)
        expected = "encoder.block.N.* tensors (an HF T5 encoder, as ComfyUI's t5xxl/umt5 files)"
    if not ok:
        raise ModelError(f"{weights.path}: text_encoders.{slot.slot}: holds no {expected}; not a {_WHAT[slot.slot]} encoder")


def _tokenizer_source(family: Family, slot, given: TextInputs, folder: Path | None, name: str, location: str):
    path = given.tokenizer(slot.slot)
    if path is not None:
        if not path.exists():
            raise ModelError(f"{path}: no such file or folder (tokenizers.{slot.slot}); give a tokenizer folder or tokenizer.json")
        return path
    if folder is not None and (folder / name).is_dir():
        return folder / name
    if slot.slot in _CLIP_SLOTS:
        return None  # erasec's shipped CLIP BPE
    where = f"; no {name}/ folder in {folder}" if folder is not None else ""
    vocabulary = "umT5's (google/umt5-xxl's tokenizer.json; a Wan diffusers folder's tokenizer/)" if (
        slot.model_class == "UMT5EncoderModel") else (
        "T5's (ComfyUI's comfy/text_encoders/t5_tokenizer/, or a FLUX diffusers folder's tokenizer_2/)")
    raise ModelError(
        f"{location}: no tokenizer for the {slot.slot} encoder: none given (tokenizers.{slot.slot} in the spec, "
        f"--tokenizer {slot.slot}=PATH){where}; an encoder file holds no vocabulary and erasec ships none, "
        f"so give {vocabulary}"
    )


def load_tokenizer_path(path: Path, *, clip: bool):
    """A tokenizer from a folder or a ``tokenizer.json`` file, offline: CLIP's BPE or a T5 Unigram."""
    if path.is_dir():
        return None  # the caller loads folders as the diffusers layout does (dit._load_tokenizer)
    regular_file(path)
    if path.suffix != ".json":
        raise ModelError(f"{path}: a tokenizer file must be a tokenizer.json; for spiece.model give its folder "
                         "(it needs the sentencepiece package)")
    from transformers import CLIPTokenizerFast, T5TokenizerFast

    try:
        if clip:
            return CLIPTokenizerFast(tokenizer_file=str(path), model_max_length=77)
        return T5TokenizerFast(tokenizer_file=str(path), extra_ids=0, additional_special_tokens=[])
    except Exception as error:  # the Rust tokenizers raise a bare Exception: add where, keep the text
        raise ModelError(f"{path}: cannot load the tokenizer ({first_line(error)})") from error


# --- encoders from files ----------------------------------------------------------------------------


def infer_t5_config(shapes: Mapping[str, tuple], where) -> dict[str, object]:
    """A ``T5Config``/``UMT5Config`` dict from an HF T5 encoder's tensor shapes: widths, heads and
    buckets from the relative-attention table, ``gated-gelu`` where the feed-forward has ``wi_0``
    (T5 v1.1, umT5) else ``relu``; T5's defaults for the rest (``relative_attention_max_distance``
    128, ``layer_norm_epsilon`` 1e-6, as T5-XXL and umT5-XXL)."""
    try:
        embedding = shapes.get("shared.weight") or shapes["encoder.embed_tokens.weight"]
        buckets, heads = shapes["encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"]
        layers = 1 + max(int(m[1]) for m in map(_T5_BLOCK.match, shapes) if m)
        query = shapes["encoder.block.0.layer.0.SelfAttention.q.weight"]
        gated = "encoder.block.0.layer.1.DenseReluDense.wi_0.weight" in shapes
        ff = shapes["encoder.block.0.layer.1.DenseReluDense." + ("wi_0" if gated else "wi") + ".weight"]
    except (KeyError, TypeError, ValueError) as error:
        raise ModelError(f"{where}: not a complete T5 encoder (no {error})") from None
    return {
        "vocab_size": embedding[0], "d_model": embedding[1], "d_kv": query[0] // heads, "d_ff": ff[0],
        "num_layers": layers, "num_heads": heads, "relative_attention_num_buckets": buckets,
        "feed_forward_proj": "gated-gelu" if gated else "relu", "pad_token_id": 0, "eos_token_id": 1,
        "decoder_start_token_id": 0,
    }


def t5_config_overrides(config: Mapping[str, object], shapes: Mapping[str, tuple]) -> dict:
    """The fields of a T5 ``config`` that ``infer_t5_config`` would get wrong (what an exported file carries)."""
    inferred = infer_t5_config(shapes, "config")
    keys = ("vocab_size", "d_model", "d_kv", "d_ff", "num_layers", "num_heads", "relative_attention_num_buckets",
            "relative_attention_max_distance", "layer_norm_epsilon", "dense_act_fn", "is_gated_act")
    defaults = _t5_class("T5EncoderModel")[1](**inferred).to_dict()
    return {key: config[key] for key in keys if key in config and config[key] != inferred.get(key, defaults.get(key))}


def _t5_class(name: str):
    import transformers

    if name == "UMT5EncoderModel":
        return transformers.UMT5EncoderModel, transformers.UMT5Config
    return transformers.T5EncoderModel, transformers.T5Config


def _state(weights: TensorFile, prefix: str) -> dict:
    names = [key for key in weights.shapes if key.startswith(prefix) and not key.endswith("position_ids")]
    return {key.removeprefix(prefix): value for key, value in weights.tensors(names).items()}


def _where(weights: TensorFile, source: Source) -> str:
    return f"{weights.path}" + (f" ({source.prefix}*)" if source.prefix else "")


def _t5_from_file(weights: TensorFile, source: Source):
    """An HF ``T5EncoderModel``/``UMT5EncoderModel`` holding the file's tensors, widened to fp32 (as
    a folder's encoder is loaded: the same rows from either)."""
    import torch

    where = _where(weights, source)
    shapes = {k.removeprefix(source.prefix): v for k, v in weights.shapes.items() if k.startswith(source.prefix)}
    config = infer_t5_config(shapes, where)
    config.update(header_overrides(weights, source.slot))
    model_class, config_class = _t5_class(source.model_class)
    state = {key: value.to(torch.float32) for key, value in _state(weights, source.prefix).items()}
    embedding = state.get("shared.weight", state.get("encoder.embed_tokens.weight"))
    state = {**state, "shared.weight": embedding, "encoder.embed_tokens.weight": embedding}
    with torch.device("meta"), config_errors(where):
        model = model_class(config_class(**config))
    _assign(model, state, where)
    return model


def _clip_from_file(weights: TensorFile, source: Source):
    """An HF CLIP text model from the file's ``text_model.*`` tensors (or OpenCLIP's, converted as
    ComfyUI's ``load_text_encoder_state_dicts`` does), config from the shapes: ``quick_gelu`` for
    CLIP-L, ``gelu`` for CLIP-G (OpenCLIP bigG)."""
    where = _where(weights, source)
    state = _state(weights, source.prefix)
    if "transformer.resblocks.0.ln_1.weight" in state:
        state = open_clip_to_clip(state, drop_last_block=False)
    state = {key.removeprefix("text_model."): value for key, value in state.items()}
    try:
        config = infer_clip_config({k: tuple(v.shape) for k, v in state.items()}, open_clip=source.slot == "clip_g")
    except (KeyError, ValueError) as error:
        raise ModelError(f"{where}: not a complete CLIP text encoder (no {error})") from None
    config.update(header_overrides(weights, source.slot))
    projected = source.model_class == "CLIPTextModelWithProjection"
    return assemble_clip("", config, state, where, projected=projected)


def _assign(model, state: dict, where) -> None:
    """Give a meta-device model ``state`` by assignment; a missing or extra tensor is a one-line error."""
    try:
        missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    except RuntimeError as error:
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        detail = next((line for line in lines if line.startswith("size mismatch")), lines[0] if lines else "")
        raise ModelError(f"{where}: the text encoder's tensors do not fit its shapes' config ({detail})") from None
    if missing or unexpected:
        raise ModelError(f"{where}: the text encoder does not match its class (missing {missing[:2]}, unexpected {unexpected[:2]})")
    left = [name for name, tensor in (*model.named_parameters(), *model.named_buffers()) if tensor.is_meta]
    if left:
        raise ModelError(f"{where}: the text encoder has no value for {left[0]}")
