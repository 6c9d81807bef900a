"""Single-file (LDM/SGM) ↔ diffusers tensor names for whole components.

The inverse of diffusers' ``single_file_utils`` converters (``convert_ldm_unet_checkpoint``,
``convert_ldm_vae_checkpoint``, ``convert_ldm_clip_checkpoint``, ``convert_open_clip_checkpoint``),
following research/ecosystem.md §3.1–§3.2. Used to write any built-in model as one file
(``erasec export-single-file``) and to read a single file's text encoders. Only names and the
documented reshapes change; no value is touched, so a round trip is bit-exact.

Text encoder prefixes (§3.1): SD1 ``cond_stage_model.transformer.text_model.`` (HF CLIP layout),
SD2 ``cond_stage_model.model.`` (OpenCLIP, fused ``in_proj``), SDXL ``conditioner.embedders.0.
transformer.text_model.`` (CLIP-L) and ``conditioner.embedders.1.model.`` (OpenCLIP-bigG). SD2 uses
the penultimate OpenCLIP block: its checkpoints hold one more resblock than the diffusers encoder,
which diffusers (and this reader) skip. Each family records its prefixes (``Family.single_file``,
``families/sd.py``).
"""

from __future__ import annotations

import re
from typing import Mapping

from erasec.ir.naming import LAYERS_PER_BLOCK, LDM_UNET_PREFIX

VAE_PREFIX = "first_stage_model."
# header keys of a single file erasec writes: the text encoders' configs its shapes cannot give, and
# the folder's unet/config.json (read by compiler/models/unet_configs.py)
TEXT_CONFIG_METADATA = "erasec.text_encoders"
UNET_CONFIG_METADATA = "erasec.unet_config"

_RESNET = (
    ("norm1", "in_layers.0"),
    ("conv1", "in_layers.2"),
    ("time_emb_proj", "emb_layers.1"),
    ("norm2", "out_layers.0"),
    ("conv2", "out_layers.3"),
    ("conv_shortcut", "skip_connection"),
)
_UNET_FIXED = {
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "conv_in": "input_blocks.0.0",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
    "add_embedding.linear_1": "label_emb.0.0",
    "add_embedding.linear_2": "label_emb.0.2",
}


def _resnet(rest: str) -> str:
    head, _, tail = rest.partition(".")
    return dict(_RESNET).get(head, head) + "." + tail


def unet_key_to_ldm(key: str, attention_up_blocks: frozenset[int], lpb: int = LAYERS_PER_BLOCK) -> str:
    """A diffusers UNet tensor name → its name under ``model.diffusion_model.``."""
    module, _, leaf = key.rpartition(".")
    if module in _UNET_FIXED:
        return f"{_UNET_FIXED[module]}.{leaf}"
    step = lpb + 1
    if match := re.match(r"^down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)$", key):
        block, kind, index, rest = int(match[1]), match[2], int(match[3]), match[4]
        n = 1 + block * step + index
        return f"input_blocks.{n}.0.{_resnet(rest)}" if kind == "resnets" else f"input_blocks.{n}.1.{rest}"
    if match := re.match(r"^down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)$", key):
        return f"input_blocks.{(int(match[1]) + 1) * step}.0.op.{match[2]}"
    if match := re.match(r"^mid_block\.(resnets|attentions)\.(\d+)\.(.+)$", key):
        kind, index, rest = match[1], int(match[2]), match[3]
        return f"middle_block.{2 * index}.{_resnet(rest)}" if kind == "resnets" else f"middle_block.1.{rest}"
    if match := re.match(r"^up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)$", key):
        block, kind, index, rest = int(match[1]), match[2], int(match[3]), match[4]
        n = block * step + index
        return f"output_blocks.{n}.0.{_resnet(rest)}" if kind == "resnets" else f"output_blocks.{n}.1.{rest}"
    if match := re.match(r"^up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)$", key):
        block = int(match[1])
        slot = 2 if block in attention_up_blocks else 1
        return f"output_blocks.{block * step + lpb}.{slot}.conv.{match[2]}"
    raise ValueError(f"unet tensor {key}: no LDM name")


def _vae_resnet(rest: str) -> str:
    return rest.replace("conv_shortcut", "nin_shortcut")


_VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def vae_key_to_ldm(key: str, up_blocks: int) -> tuple[str, bool]:
    """A diffusers VAE tensor name → (LDM name, whether a Linear weight becomes a 1×1 conv)."""
    key = re.sub(r"^(encoder|decoder)\.conv_norm_out\.", r"\1.norm_out.", key)
    if match := re.match(r"^(encoder|decoder)\.mid_block\.attentions\.0\.(.+)\.(weight|bias)$", key):
        part, module, leaf = match.groups()
        return f"{part}.mid.attn_1.{_VAE_ATTENTION[module]}.{leaf}", module != "group_norm" and leaf == "weight"
    if match := re.match(r"^(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(.+)$", key):
        return f"{match[1]}.mid.block_{int(match[2]) + 1}.{_vae_resnet(match[3])}", False
    if match := re.match(r"^encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)$", key):
        return f"encoder.down.{match[1]}.block.{match[2]}.{_vae_resnet(match[3])}", False
    if match := re.match(r"^encoder\.down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)$", key):
        return f"encoder.down.{match[1]}.downsample.conv.{match[2]}", False
    if match := re.match(r"^decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)$", key):
        return f"decoder.up.{up_blocks - 1 - int(match[1])}.block.{match[2]}.{_vae_resnet(match[3])}", False
    if match := re.match(r"^decoder\.up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)$", key):
        return f"decoder.up.{up_blocks - 1 - int(match[1])}.upsample.conv.{match[2]}", False
    return key, False


_OPEN_CLIP_LAYER = (("layer_norm1", "ln_1"), ("layer_norm2", "ln_2"), ("mlp.fc1", "mlp.c_fc"), ("mlp.fc2", "mlp.c_proj"))


def clip_to_open_clip(state: Mapping[str, object], extra_block: bool) -> dict[str, object]:
    """An HF ``CLIPTextModel[WithProjection]`` state dict (``text_model.`` prefix optional) → OpenCLIP names.

    ``extra_block``: append a copy of the last block as the one SD2 never runs (its checkpoints carry
    the full OpenCLIP tower and diffusers drops the last block).
    """
    import torch

    plain = {key.removeprefix("text_model."): value for key, value in state.items()}
    out: dict[str, object] = {
        "token_embedding.weight": plain["embeddings.token_embedding.weight"],
        "positional_embedding": plain["embeddings.position_embedding.weight"],
        "ln_final.weight": plain["final_layer_norm.weight"],
        "ln_final.bias": plain["final_layer_norm.bias"],
    }
    hidden = plain["embeddings.token_embedding.weight"].shape[1]
    projection = plain.get("text_projection.weight")
    out["text_projection"] = (torch.eye(hidden) if projection is None else projection.T).contiguous()
    layers = 1 + max(int(k.split(".")[2]) for k in plain if k.startswith("encoder.layers."))
    for source in range(layers + (1 if extra_block else 0)):
        i = min(source, layers - 1)
        base, new = f"encoder.layers.{i}.", f"transformer.resblocks.{source}."
        for leaf in ("weight", "bias"):
            out[f"{new}attn.in_proj_{leaf}"] = torch.cat(
                [plain[f"{base}self_attn.{p}_proj.{leaf}"] for p in "qkv"]
            ).contiguous()
            out[f"{new}attn.out_proj.{leaf}"] = plain[f"{base}self_attn.out_proj.{leaf}"]
            for hf, oc in _OPEN_CLIP_LAYER:
                out[f"{new}{oc}.{leaf}"] = plain[f"{base}{hf}.{leaf}"]
    # safetensors refuses tensors that share storage: the copied block gets its own.
    extra = f"transformer.resblocks.{layers}."
    return {key: value.clone() if key.startswith(extra) else value for key, value in out.items()}


def open_clip_to_clip(state: Mapping[str, object], drop_last_block: bool) -> dict[str, object]:
    """OpenCLIP names (prefix removed) → HF CLIP names without ``text_model.``, plus ``text_projection.weight``."""
    hidden = state["token_embedding.weight"].shape[1]
    blocks = sorted({int(k.split(".")[2]) for k in state if k.startswith("transformer.resblocks.")})
    if drop_last_block:
        blocks = blocks[:-1]
    out: dict[str, object] = {
        "embeddings.token_embedding.weight": state["token_embedding.weight"],
        "embeddings.position_embedding.weight": state["positional_embedding"],
        "final_layer_norm.weight": state["ln_final.weight"],
        "final_layer_norm.bias": state["ln_final.bias"],
    }
    if "text_projection" in state:
        out["text_projection.weight"] = state["text_projection"].T.contiguous()
    for i in blocks:
        base, new = f"transformer.resblocks.{i}.", f"encoder.layers.{i}."
        for leaf in ("weight", "bias"):
            fused = state[f"{base}attn.in_proj_{leaf}"]
            for n, p in enumerate("qkv"):
                out[f"{new}self_attn.{p}_proj.{leaf}"] = fused[n * hidden : (n + 1) * hidden].contiguous()
            out[f"{new}self_attn.out_proj.{leaf}"] = state[f"{base}attn.out_proj.{leaf}"]
            for hf, oc in _OPEN_CLIP_LAYER:
                out[f"{new}{hf}.{leaf}"] = state[f"{base}{oc}.{leaf}"]
    return out
