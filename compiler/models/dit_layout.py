"""A diffusers transformer's state dict → its native single-file names (BFL's FLUX.1, SAI's MMDiT for
SD3, Wan's), for ``erasec export-single-file``: the inverse of diffusers 0.42.1's
``loaders/single_file_utils.py`` converters (``convert_flux_transformer_checkpoint_to_diffusers``,
``convert_sd3_transformer_checkpoint_to_diffusers``, ``convert_wan_transformer_to_diffusers``).

Only names change, plus what those converters undo: the fused ``qkv`` (and FLUX's single-block
``linear1`` = q, k, v, MLP) are concatenated back along the output rows, and the final AdaLN
(FLUX, SD3: and SD3's last context block) swaps its scale and shift halves back, as ComfyUI's
``flux_to_diffusers`` map (``comfy/utils.py``, Comfy-Org/ComfyUI@a125cd8) and SD3's converter say.
Every tensor of the input must find a native name, else ``ValueError`` names it: a transformer with
parts these maps do not know (a ControlNet, FLUX's guidance-less Chroma approximator) is refused,
never written half-named. Values are never touched, so the diffusers converters give the input back
exactly (tests/compiler/test_dit_single_file.py checks SD3 and Wan with them).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping

_FLUX_DOUBLE = {
    "attn.to_out.0": "img_attn.proj", "attn.to_add_out": "txt_attn.proj",
    "norm1.linear": "img_mod.lin", "norm1_context.linear": "txt_mod.lin",
    "ff.net.0.proj": "img_mlp.0", "ff.net.2": "img_mlp.2", "ff_context.net.0.proj": "txt_mlp.0",
    "ff_context.net.2": "txt_mlp.2",
}
_FLUX_DOUBLE_NORMS = {
    "attn.norm_q.weight": "img_attn.norm.query_norm.scale", "attn.norm_k.weight": "img_attn.norm.key_norm.scale",
    "attn.norm_added_q.weight": "txt_attn.norm.query_norm.scale",
    "attn.norm_added_k.weight": "txt_attn.norm.key_norm.scale",
}
_FLUX_SINGLE = {"norm.linear": "modulation.lin", "proj_out": "linear2"}
_FLUX_SINGLE_NORMS = {"attn.norm_q.weight": "norm.query_norm.scale", "attn.norm_k.weight": "norm.key_norm.scale"}
_FLUX_BASIC = {
    "proj_out": "final_layer.linear", "x_embedder": "img_in", "context_embedder": "txt_in",
    "time_text_embed.timestep_embedder.linear_1": "time_in.in_layer",
    "time_text_embed.timestep_embedder.linear_2": "time_in.out_layer",
    "time_text_embed.text_embedder.linear_1": "vector_in.in_layer",
    "time_text_embed.text_embedder.linear_2": "vector_in.out_layer",
    "time_text_embed.guidance_embedder.linear_1": "guidance_in.in_layer",
    "time_text_embed.guidance_embedder.linear_2": "guidance_in.out_layer",
}
_SD3_BASIC = {
    "pos_embed.proj": "x_embedder.proj", "context_embedder": "context_embedder", "proj_out": "final_layer.linear",
    "time_text_embed.timestep_embedder.linear_1": "t_embedder.mlp.0",
    "time_text_embed.timestep_embedder.linear_2": "t_embedder.mlp.2",
    "time_text_embed.text_embedder.linear_1": "y_embedder.mlp.0",
    "time_text_embed.text_embedder.linear_2": "y_embedder.mlp.2",
}
_SD3_BLOCK = {
    "attn.to_out.0": "x_block.attn.proj", "attn.to_add_out": "context_block.attn.proj",
    "attn.norm_q": "x_block.attn.ln_q", "attn.norm_k": "x_block.attn.ln_k",
    "attn.norm_added_q": "context_block.attn.ln_q", "attn.norm_added_k": "context_block.attn.ln_k",
    "attn2.to_out.0": "x_block.attn2.proj", "attn2.norm_q": "x_block.attn2.ln_q", "attn2.norm_k": "x_block.attn2.ln_k",
    "norm1.linear": "x_block.adaLN_modulation.1", "ff.net.0.proj": "x_block.mlp.fc1", "ff.net.2": "x_block.mlp.fc2",
    "ff_context.net.0.proj": "context_block.mlp.fc1", "ff_context.net.2": "context_block.mlp.fc2",
}
_WAN_FIXED = {
    "condition_embedder.time_embedder.linear_1": "time_embedding.0",
    "condition_embedder.time_embedder.linear_2": "time_embedding.2",
    "condition_embedder.text_embedder.linear_1": "text_embedding.0",
    "condition_embedder.text_embedder.linear_2": "text_embedding.2",
    "condition_embedder.time_proj": "time_projection.1", "proj_out": "head.head", "patch_embedding": "patch_embedding",
}
_WAN_ATTENTION = {"to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "o", "norm_q": "norm_q", "norm_k": "norm_k",
                  "add_k_proj": "k_img", "add_v_proj": "v_img", "norm_added_k": "norm_k_img"}
_WAN_BLOCK = {"ffn.net.0.proj": "ffn.0", "ffn.net.2": "ffn.2", "norm2": "norm3", "norm3": "norm2"}


def _swap_halves(tensor):
    """diffusers' AdaLN order (scale, shift) ↔ the native (shift, scale); its own inverse."""
    import torch

    first, second = tensor.chunk(2, dim=0)
    return torch.cat([second, first], dim=0).contiguous()


def _cat(state: Mapping, names: list[str]):
    import torch

    return torch.cat([state[name] for name in names], dim=0).contiguous()


class _Writer:
    """Collects native tensors and the diffusers names they used; ``done`` refuses leftovers."""

    def __init__(self, state: Mapping) -> None:
        self.state, self.out, self.used = state, {}, set()

    def take(self, native: str, *names: str, fuse: Callable | None = None) -> None:
        if not all(name in self.state for name in names):
            return
        self.used.update(names)
        value = _cat(self.state, list(names)) if len(names) > 1 else self.state[names[0]]
        self.out[native] = fuse(value) if fuse is not None else value

    def rename(self, table: Mapping[str, str], source: str = "", target: str = "") -> None:
        for module, native in table.items():
            for leaf in ("weight", "bias"):
                self.take(f"{target}{native}.{leaf}", f"{source}{module}.{leaf}")

    def done(self, family: str) -> dict:
        left = sorted(set(self.state) - self.used)
        if left:
            raise ValueError(f"{left[0]} (and {len(left) - 1} more) have no native {family} name")
        return self.out


def _blocks(state: Mapping, prefix: str) -> list[int]:
    return sorted({int(m[1]) for m in (re.match(rf"^{re.escape(prefix)}(\d+)\.", k) for k in state) if m})


def flux_to_native(state: Mapping) -> dict:
    """A ``FluxTransformer2DModel`` state dict under BFL's names."""
    writer = _Writer(state)
    writer.rename(_FLUX_BASIC)
    for leaf in ("weight", "bias"):
        writer.take(f"final_layer.adaLN_modulation.1.{leaf}", f"norm_out.linear.{leaf}", fuse=_swap_halves)
    for i in _blocks(state, "transformer_blocks."):
        source, target = f"transformer_blocks.{i}.", f"double_blocks.{i}."
        for leaf in ("weight", "bias"):
            writer.take(f"{target}img_attn.qkv.{leaf}", *(f"{source}attn.to_{p}.{leaf}" for p in "qkv"))
            writer.take(f"{target}txt_attn.qkv.{leaf}", *(f"{source}attn.add_{p}_proj.{leaf}" for p in "qkv"))
        writer.rename(_FLUX_DOUBLE, source, target)
        for name, native in _FLUX_DOUBLE_NORMS.items():
            writer.take(target + native, source + name)
    for i in _blocks(state, "single_transformer_blocks."):
        source, target = f"single_transformer_blocks.{i}.", f"single_blocks.{i}."
        for leaf in ("weight", "bias"):
            names = [f"{source}attn.to_{p}.{leaf}" for p in "qkv"] + [f"{source}proj_mlp.{leaf}"]
            writer.take(f"{target}linear1.{leaf}", *names)
        writer.rename(_FLUX_SINGLE, source, target)
        for name, native in _FLUX_SINGLE_NORMS.items():
            writer.take(target + native, source + name)
    return writer.done("FLUX.1")


def sd3_to_native(state: Mapping) -> dict:
    """An ``SD3Transformer2DModel`` state dict under SAI's MMDiT names."""
    writer = _Writer(state)
    writer.take("pos_embed", "pos_embed.pos_embed")
    writer.rename(_SD3_BASIC)
    for leaf in ("weight", "bias"):
        writer.take(f"final_layer.adaLN_modulation.1.{leaf}", f"norm_out.linear.{leaf}", fuse=_swap_halves)
    blocks = _blocks(state, "transformer_blocks.")
    for i in blocks:
        source, target = f"transformer_blocks.{i}.", f"joint_blocks.{i}."
        for leaf in ("weight", "bias"):
            writer.take(f"{target}x_block.attn.qkv.{leaf}", *(f"{source}attn.to_{p}.{leaf}" for p in "qkv"))
            writer.take(f"{target}context_block.attn.qkv.{leaf}", *(f"{source}attn.add_{p}_proj.{leaf}" for p in "qkv"))
            writer.take(f"{target}x_block.attn2.qkv.{leaf}", *(f"{source}attn2.to_{p}.{leaf}" for p in "qkv"))
            # the last block's context AdaLN is diffusers' AdaLayerNormContinuous: halves swapped
            swap = _swap_halves if i == blocks[-1] else None
            writer.take(f"{target}context_block.adaLN_modulation.1.{leaf}", f"{source}norm1_context.linear.{leaf}", fuse=swap)
        writer.rename(_SD3_BLOCK, source, target)
    return writer.done("SD3")


def wan_to_native(state: Mapping) -> dict:
    """A ``WanTransformer3DModel`` state dict under Wan's names."""
    writer = _Writer(state)
    writer.rename(_WAN_FIXED)
    writer.take("head.modulation", "scale_shift_table")
    for i in _blocks(state, "blocks."):
        source, target = f"blocks.{i}.", f"blocks.{i}."
        for attention, native in (("attn1", "self_attn"), ("attn2", "cross_attn")):
            table = {f"{attention}.{k}": f"{native}.{v}" for k, v in _WAN_ATTENTION.items()}
            writer.rename(table, source, target)
        writer.rename(_WAN_BLOCK, source, target)
        writer.take(f"{target}modulation", f"{source}scale_shift_table")
    return writer.done("Wan")
