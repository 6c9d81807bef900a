"""CLIP text encoders: configs read off tensor shapes, and models assembled from tensors as stored.

A single file carries no text-encoder config, so ``infer_clip_config`` reads it off the shapes: CLIP
head width 64 (CLIP-L 12×64, OpenCLIP-H 16×64, bigG 20×64), ``quick_gelu`` for OpenAI CLIP-L in the
HF layout, ``gelu`` for OpenCLIP. A model the rule does not describe carries the differing fields in
its header as ``erasec.text_encoders`` (``clip_config_overrides``; written by export-single-file).

``assemble_clip`` builds the model on the meta device and assigns the tensors as stored (no random
initialisation, no second copy); ``computing_in_fp32`` keeps fp16/bf16 weights in their dtype and
widens each module to fp32 only while it runs — bit-identical outputs to an fp32 copy at half the
memory (docs/performance.md).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from contextlib import contextmanager

from . import layout as layouts
from .layout import TEXT_CONFIG_METADATA
from ..errors import ModelError
from .families import FAMILIES
from .tensor_files import TensorFile, first_line

_CLIP_HEAD_WIDTH = 64


def infer_clip_config(shapes: Mapping[str, tuple], *, open_clip: bool) -> dict[str, object]:
    """A ``CLIPTextConfig`` dict from HF-layout tensor shapes (no ``text_model.`` prefix)."""
    vocab, hidden = shapes["embeddings.token_embedding.weight"]
    layers = 1 + max(int(key.split(".")[2]) for key in shapes if key.startswith("encoder.layers."))
    config = {
        "vocab_size": vocab,
        "hidden_size": hidden,
        "intermediate_size": shapes["encoder.layers.0.mlp.fc1.weight"][0],
        "num_hidden_layers": layers,
        "num_attention_heads": max(1, hidden // _CLIP_HEAD_WIDTH),
        "max_position_embeddings": shapes["embeddings.position_embedding.weight"][0],
        "hidden_act": "gelu" if open_clip else "quick_gelu",
        "layer_norm_eps": 1e-5,
        "bos_token_id": 49406,
        "eos_token_id": 49407,
    }
    if "text_projection.weight" in shapes:
        config["projection_dim"] = shapes["text_projection.weight"][0]
    return config


def clip_config_overrides(config: Mapping[str, object], shapes: Mapping[str, tuple], *, open_clip: bool) -> dict:
    """The fields of ``config`` that ``infer_clip_config`` would get wrong (what a single file must carry)."""
    inferred = infer_clip_config(shapes, open_clip=open_clip)
    compared = [k for k in inferred if k not in ("bos_token_id", "eos_token_id")]
    return {key: config[key] for key in compared if key in config and config[key] != inferred[key]}


def header_overrides(weights: TensorFile, component: str) -> dict:
    """``component``'s fields of the file's ``erasec.text_encoders`` header ({} without one)."""
    text = weights.metadata.get(TEXT_CONFIG_METADATA)
    if not text:
        return {}
    where = f"{weights.path}: its {TEXT_CONFIG_METADATA} header"
    try:
        overrides = json.loads(text)
    except ValueError as error:
        raise ModelError(f"{where} is not JSON ({first_line(error)}); re-export the file") from None
    if not isinstance(overrides, dict) or not all(isinstance(v, dict) for v in overrides.values()):
        raise ModelError(f"{where} is not a JSON object of component → config fields; re-export the file")
    return overrides.get(component, {})


# --- tensor sources ---------------------------------------------------------------------------------


def assemble_clip(
    component: str, config: dict, state: dict, where, *, fp32_compute: bool = True, projected: bool | None = None
) -> object:
    """A CLIP text model of ``config`` holding ``state`` (HF names without ``text_model.``) as is.

    Built on the meta device and given the tensors by assignment: no random initialisation and no
    second copy, so loading peaks at the encoder's stored size (docs/performance.md).
    ``fp32_compute=False``: the plain model, without ``computing_in_fp32``'s hooks (an exporter
    traces it, after casting it to fp32 itself). ``projected``: a ``CLIPTextModelWithProjection``
    (None: as SDXL, for ``text_encoder_2`` only).
    """
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    projected = component == "text_encoder_2" if projected is None else projected
    cls = CLIPTextModelWithProjection if projected else CLIPTextModel
    if cls is CLIPTextModel:
        state.pop("text_projection.weight", None)
    with torch.device("meta"), config_errors(where):
        model = cls(CLIPTextConfig(**config))
    if any(k.startswith("text_model.") for k in model.state_dict()):
        state = {k if k == "text_projection.weight" else f"text_model.{k}": v for k, v in state.items()}
    storage = {v.dtype for v in state.values()}
    dtype = storage.pop() if len(storage) == 1 else torch.float32
    try:
        missing, unexpected = model.load_state_dict(
            {k: v.to(dtype) for k, v in state.items()}, strict=False, assign=True
        )
    except RuntimeError as error:  # torch lists every size mismatch under a generic first line
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        detail = next((line for line in lines if line.startswith("size mismatch")), lines[0] if lines else "")
        raise ModelError(f"{where}: the text encoder's tensors do not fit its config ({detail})") from None
    missing = [k for k in missing if not k.endswith("position_ids")]
    if missing or unexpected:
        raise ModelError(
            f"{where}: the text encoder does not match a CLIP text model "
            f"(missing {missing[:2]}, unexpected {unexpected[:2]})"
        )
    for module in model.modules():  # non-persistent buffers are not in any file: make them again
        if getattr(module, "position_ids", None) is not None and module.position_ids.is_meta:
            count = module.position_ids.shape[-1]
            module.register_buffer("position_ids", torch.arange(count).expand((1, -1)), persistent=False)
    left = [name for name, tensor in (*model.named_parameters(), *model.named_buffers()) if tensor.is_meta]
    if left:
        raise ModelError(f"{where}: the text encoder has no value for {left[0]}")
    return computing_in_fp32(model) if fp32_compute else model


@contextmanager
def config_errors(where):
    """A CLIP config that transformers refuses (a wrong type, heads not dividing the width) as a
    one-line ``ModelError`` naming ``where``: what a damaged or contradictory header or config.json gives."""
    from huggingface_hub.errors import StrictDataclassError

    try:
        yield
    except (TypeError, ValueError, StrictDataclassError) as error:
        lines = [line.strip() for line in str(error).splitlines() if line.strip()] or [type(error).__name__]
        detail = lines[-1] if isinstance(error, StrictDataclassError) else lines[0]  # the cause is the last line
        raise ModelError(f"{where}: not a usable CLIP text config ({detail})") from None


def computing_in_fp32(model):
    """``model`` with its weights kept in their stored dtype, each module computing in fp32.

    fp16 and bf16 values widen to fp32 exactly, so every output is bit-identical to an fp32 copy's,
    while memory holds the stored size (SDXL's encoders: 1.6 GB in fp16 instead of 3.3 GB in fp32;
    docs/performance.md). Embedding lookups run in the stored dtype and their outputs are widened.
    Just before any other module with weights runs, its weights are copied into an
    fp32 workspace the size of the largest such module (a few MB) and the module is pointed at it;
    just after, its own tensors are put back. Each thread has a workspace of its own, allocated on
    its first pass, and threads that encode at once each run a ``replica`` (the hooks point a
    running module at the workspace, so two threads must not run one module). Nothing is allocated
    per call: casting each module with ``Module.to`` instead cost a fresh fp32 copy of the whole
    encoder on every forward pass (≈ 2 s per batch for CLIP-L on 2 cores). fp32 weights are left alone.
    """
    import threading

    import torch

    storage = {p.dtype for p in model.parameters()}
    if storage == {torch.float32}:
        return model
    if len(storage) != 1:
        return model.to(torch.float32)

    def widen_output(module, args, output):
        return output.to(torch.float32)

    holders, handles = [], []
    for module in model.modules():
        if isinstance(module, torch.nn.Embedding):
            # a lookup copies stored values: widening its output is exact, and spares copying the table
            handles.append(module.register_forward_hook(widen_output))
        elif next(module.parameters(recurse=False), None) is not None:
            holders.append(module)
    size = max(sum(p.numel() for p in m.parameters(recurse=False)) for m in holders)
    local = threading.local()  # per thread: .workspace, and .stored (module id -> its own tensors)

    def widen(module, args) -> None:
        narrow(module, args, None)  # a forward that raised left its module pointing at the workspace
        if not hasattr(local, "workspace"):
            local.workspace, local.stored = torch.empty(size), {}
        local.stored[id(module)] = own = {k: p for k, p in module._parameters.items() if p is not None}
        offset = 0
        for name, parameter in own.items():
            view = local.workspace[offset : offset + parameter.numel()].view(parameter.shape)
            view.copy_(parameter)
            module._parameters[name] = torch.nn.Parameter(view, requires_grad=False)
            offset += parameter.numel()

    def narrow(module, args, output) -> None:
        module._parameters.update(getattr(local, "stored", {}).pop(id(module), {}))

    for module in holders:
        handles.append(module.register_forward_pre_hook(widen))
        handles.append(module.register_forward_hook(narrow))
    model._erasec_widening = tuple(handles)  # without_fp32_compute removes them
    return model


def without_fp32_compute(model):
    """``model`` without ``computing_in_fp32``'s hooks, in its stored dtype (the device path,
    ``placement.py``, casts it to the device's dtype: the hooks widen into a host workspace)."""
    for handle in getattr(model, "_erasec_widening", ()):
        handle.remove()
    model._erasec_widening = ()
    return model


def replica(model):
    """Another module tree over ``model``'s tensors (only the modules are copied, ≈ 6 ms for CLIP-L),
    for a thread that encodes while others do: ``computing_in_fp32``'s hooks point a running module
    at its thread's workspace, so concurrent passes must run modules of their own. Its hooks are
    ``model``'s, which keep their workspace per thread."""
    import copy
    import itertools

    tensors = itertools.chain(model.parameters(), model.buffers())
    return copy.deepcopy(model, {id(tensor): tensor for tensor in tensors})


def load_single_file_encoder(weights: TensorFile, family: str, component: str, *, fp32_compute: bool = True):
    """The ``component`` text encoder of a single-file checkpoint of ``family`` (research/ecosystem.md §3.1);
    ``fp32_compute`` as in ``assemble_clip``."""
    encoder = FAMILIES[family].single_file_encoder(component)
    prefix, open_clip = encoder.prefix, encoder.open_clip
    if open_clip:
        names = [k for k in weights.shapes if k.startswith(prefix)]
        raw = {k.removeprefix(prefix): v for k, v in weights.tensors(names).items()}
        try:
            state = layouts.open_clip_to_clip(raw, drop_last_block=encoder.extra_block)
        except KeyError as error:
            raise ModelError(f"{weights.path}: the OpenCLIP text encoder lacks {prefix}{error.args[0]}") from None
    else:
        names = [k for k in weights.shapes if k.startswith(prefix) and not k.endswith("position_ids")]
        state = {
            k.removeprefix(prefix).removeprefix("text_model."): v for k, v in weights.tensors(names).items()
        }
    try:
        config = infer_clip_config({k: tuple(v.shape) for k, v in state.items()}, open_clip=open_clip)
    except (KeyError, ValueError) as error:
        raise ModelError(f"{weights.path}: the text encoder under {prefix} is incomplete ({error})") from None
    overrides = header_overrides(weights, component)
    config.update(overrides)
    where = f"{weights.path} ({prefix}{', as its ' + TEXT_CONFIG_METADATA + ' header sets' if overrides else ''})"
    return assemble_clip(component, config, state, where, fp32_compute=fp32_compute)
