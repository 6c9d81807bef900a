"""The UNet of a single-file checkpoint: its diffusers config, confirmed by its shapes, and the model.

A single file (LDM/SGM names, research/ecosystem.md §3.1–§3.2) carries no UNet config. The three
families erasec reads have fixed UNet architectures (§3.3–§3.5), so the config comes from the
family (``Family.unet_config``, ``families/sd.py``), offline — never fetched from a hub as
diffusers' ``from_single_file`` would (§3.5):

* ``sd1`` — SD1.x (v1.4, v1.5): 4 blocks (320, 640, 1280, 1280), 8 heads, 1×1-conv ``proj_in``,
  cross-attention 768 (CLIP-L); 859.5M parameters;
* ``sd2`` — SD2.x: the same blocks, heads (5, 10, 20, 20) of 64, Linear ``proj_in``,
  cross-attention 1024 (OpenCLIP-H); 865.9M. 768-v and 512-base share every shape; the config is
  stabilityai's 2.1 (768-v: ``sample_size`` 96, ``upcast_attention``, a no-op in fp32), so a
  512-base export with ``--static`` gets 96×96 example latents;
* ``sdxl`` — SDXL base: 3 blocks (320, 640, 1280), transformer depth (1, 2, 10), cross-attention
  2048, ``add_embedding`` reading the 1280-d pooled embedding and six 256-d time ids; 2567.5M.

A file may instead describe its own UNet: ``erasec export-single-file`` writes the folder's
``unet/config.json`` into the header as ``erasec.unet_config`` (the tiny built-in models have
non-standard configs), and that record is read first. Either way the config is *confirmed*: the
file's UNet tensors, renamed by diffusers' own ``convert_ldm_unet_checkpoint``, must give exactly
the names and shapes of the config's model (built on the meta device, no memory), else the file is
refused — an inpainting UNet (9 input channels), a refiner or a pruned file never gets a wrong graph.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from erasec.ir.naming import LDM_UNET_PREFIX

from .families import FAMILIES
from .layout import UNET_CONFIG_METADATA
from ..errors import ModelError
from .tensor_files import TensorFile, first_line


def _meta_unet(config: Mapping, location: str, source: str):
    """The config's UNet on the meta device: names and shapes, no memory, no random init."""
    import torch
    from diffusers import UNet2DConditionModel

    try:
        with torch.device("meta"):
            return UNet2DConditionModel.from_config(dict(config))
    except (TypeError, ValueError, KeyError, IndexError, ZeroDivisionError) as error:  # a zero head or width divides
        raise ModelError(f"{location}: {source} is not a UNet2DConditionModel config ({first_line(error)})") from None


def _convert(checkpoint: Mapping, unet) -> dict:
    """LDM names (with the ``model.diffusion_model.`` prefix) → diffusers names, by diffusers' own
    converter given the full config (research/ecosystem.md §3.2); values pass through untouched."""
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    return convert_ldm_unet_checkpoint(checkpoint, dict(unet.config))


def _misfits(shapes: Mapping[str, tuple], unet) -> list[str]:
    """Each way the file's UNet tensors differ from ``unet``'s, in name order; [] when they fit."""
    ldm = {name: (name, tuple(shape)) for name, shape in shapes.items() if name.startswith(LDM_UNET_PREFIX)}
    try:
        converted = _convert(ldm, unet)
    except KeyError as error:  # the converter indexes the tensors a config implies (label_emb for SDXL)
        return [f"no tensor {LDM_UNET_PREFIX}{error.args[0]}"]
    except (ZeroDivisionError, IndexError, TypeError, ValueError) as error:  # a config it cannot lay out
        return [f"its layout cannot be converted ({first_line(error)})"]
    expected = {name: tuple(tensor.shape) for name, tensor in unet.state_dict().items()}
    misfits = []
    for name in sorted(set(expected) | set(converted)):
        found = converted.get(name)
        if name not in expected:
            misfits.append(f"{found[0]} has no place in it")
        elif found is None:
            misfits.append(f"no tensor for its {name}")
        elif found[1] != expected[name]:
            misfits.append(f"{found[0]} is {list(found[1])}, its {name} is {list(expected[name])}")
    return misfits


def single_file_unet(weights: TensorFile, family: str, location: str):
    """The UNet of ``weights`` (a ``family`` single file) as a meta-device diffusers model whose
    config fits every UNet tensor of the file (module docstring); refused in one line otherwise."""
    recorded = weights.metadata.get(UNET_CONFIG_METADATA)
    if recorded is not None:
        source = f"its {UNET_CONFIG_METADATA} header"
        try:
            config = json.loads(recorded)
        except ValueError as error:
            raise ModelError(f"{location}: {source} is not JSON ({first_line(error)})") from None
        if not isinstance(config, dict):
            raise ModelError(f"{location}: {source} is not a JSON object")
    else:
        config = FAMILIES[family].unet_config
        source = f"the {FAMILIES[family].unet_name} UNet"
    unet = _meta_unet(config, location, source)
    misfits = _misfits(weights.shapes, unet)
    if misfits:
        names = [candidate.unet_name for candidate in FAMILIES.values() if candidate.unet_name]
        known = ", ".join(names[:-1]) + " or " + names[-1]
        raise ModelError(
            f"{location}: its UNet does not fit {source}: {len(misfits)} tensors differ, first {misfits[0]}; "
            f"a single file needs an {known} UNet, or its UNet config in the header as {UNET_CONFIG_METADATA}: "
            "save other models as diffusers folders"
        )
    return unet


def load_single_file_unet(weights: TensorFile, family: str, location: str):
    """The float32 diffusers UNet of a single-file checkpoint (what ``export-onnx`` traces).

    The model is made on the meta device and takes the file's tensors by assignment, so no random
    initialisation runs and no second fp32 copy exists beside the loaded one.
    """
    import torch

    unet = single_file_unet(weights, family, location)
    names = [name for name in weights.shapes if name.startswith(LDM_UNET_PREFIX)]
    state = _convert(weights.tensors(names), unet)
    for name in list(state):  # one tensor at a time, so a half-precision file is never held twice
        state[name] = state[name].to(torch.float32)
    unet.load_state_dict(state, strict=True, assign=True)
    return unet.eval()
