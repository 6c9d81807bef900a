"""Single-file UNet configs: the family tables, the header record, and refusals (compiler/models/unet_configs.py)."""

from __future__ import annotations

import json

import pytest
from safetensors.torch import load_file, save_file

from erasec.compiler.models import layout
from erasec.compiler.models.builtin import builtin_model_path
from erasec.compiler.models.layout import UNET_CONFIG_METADATA
from erasec.compiler.errors import ModelError
from erasec.compiler.onnx_graphs.export import ExportOptions
from erasec.compiler.onnx_graphs.export_model import export_onnx
from erasec.compiler.models.tensor_files import TensorFile
from erasec.compiler.models.families import FAMILIES
from erasec.compiler.models.unet_configs import load_single_file_unet, single_file_unet

# research/ecosystem.md §3.3–§3.4: UNet parameters of SD1.5, SD2.x and SDXL base
PARAMETERS = {"sd1": 859_520_964, "sd2": 865_910_724, "sdxl": 2_567_463_684}


def _ldm_shapes(unet) -> dict[str, tuple]:
    """The header a single file of ``unet`` would have: names by erasec's own diffusers → LDM table."""
    attention_up = frozenset(i for i, kind in enumerate(unet.config.up_block_types) if "CrossAttn" in kind)
    return {
        layout.LDM_UNET_PREFIX + layout.unet_key_to_ldm(name, attention_up): tuple(tensor.shape)
        for name, tensor in unet.state_dict().items()
    }


class _Header:
    """What ``single_file_unet`` reads of a TensorFile: its shapes and metadata."""

    def __init__(self, shapes: dict, metadata: dict | None = None) -> None:
        self.shapes, self.metadata = shapes, metadata or {}


@pytest.mark.parametrize("family", sorted(name for name, family in FAMILIES.items() if not family.transformer))
def test_family_configs_fit_their_own_ldm_layout(family):
    """Each table builds the real model (its parameter count), and diffusers' converter maps the LDM
    names erasec writes for it back onto it: two independent name tables agree on real shapes."""
    import torch
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        unet = UNet2DConditionModel(**FAMILIES[family].unet_config)
    assert sum(p.numel() for p in unet.parameters()) == PARAMETERS[family]
    assert single_file_unet(_Header(_ldm_shapes(unet)), family, "x").config == unet.config


def test_single_file_records_the_folders_unet_config(erasec_cache_dir):
    folder_config = json.loads((builtin_model_path("tiny-sd1") / "unet" / "config.json").read_text())
    recorded = json.loads(TensorFile(builtin_model_path("tiny-sd1.safetensors"), pickled=False).metadata[UNET_CONFIG_METADATA])
    assert recorded == {key: value for key, value in folder_config.items() if not key.startswith("_")}


@pytest.mark.parametrize("model", ["tiny-sd1", "tiny-sd2", "tiny-sdxl"])
def test_single_file_unet_is_the_folders_bit_for_bit(erasec_cache_dir, model):
    """What export-onnx traces for ``builtin:NAME.safetensors``: the folder's UNet, same config, every
    tensor equal (the graphs are compared in test_onnx_parity.py)."""
    import torch
    from diffusers import UNet2DConditionModel

    from erasec.compiler.models.open import open_model

    opened = open_model(f"builtin:{model}.safetensors")
    ours = load_single_file_unet(opened._file, opened.family, opened.location)
    theirs = UNet2DConditionModel.from_pretrained(str(builtin_model_path(model) / "unet"))
    assert dict(ours.config) == {key: value for key, value in theirs.config.items() if not key.startswith("_")}
    a, b = ours.state_dict(), theirs.state_dict()
    assert sorted(a) == sorted(b)
    assert all(a[name].dtype == torch.float32 and torch.equal(a[name], b[name]) for name in b)


def _rewritten(path, metadata: dict) -> str:
    tensors = load_file(str(builtin_model_path("tiny-sd2.safetensors")))
    save_file(tensors, str(path), metadata=metadata)
    return str(path)


def test_a_unet_that_fits_no_config_is_refused_in_one_line(erasec_cache_dir, tmp_path):
    # tiny-sd2 without its header record: the SD2.x table's shapes do not fit the tiny UNet
    bare = _rewritten(tmp_path / "bare.safetensors", {})
    with pytest.raises(ModelError) as error:
        export_onnx(bare, tmp_path / "out", ExportOptions(exporter="legacy", components=("unet",)))
    assert str(error.value) == (
        f"{bare}: its UNet does not fit the SD2.x UNet: 685 tensors differ, first model.diffusion_model."
        "input_blocks.0.0.bias is [32], its conv_in.bias is [320]; a single file needs an SD1.x, SD2.x or "
        "SDXL base UNet, or its UNet config in the header as erasec.unet_config: save other models as diffusers folders"
    )
    assert not (tmp_path / "out").exists()
    # a header record that does not describe the file's UNet is refused the same way
    sd1_config = json.loads(TensorFile(builtin_model_path("tiny-sd1.safetensors"), pickled=False).metadata[UNET_CONFIG_METADATA])
    wrong = _rewritten(tmp_path / "wrong.safetensors", {UNET_CONFIG_METADATA: json.dumps(sd1_config)})
    with pytest.raises(ModelError, match=r"wrong.safetensors: its UNet does not fit its erasec.unet_config header: 64 tensors"):
        export_onnx(wrong, tmp_path / "out", ExportOptions(exporter="legacy", components=("unet",)))
    broken = _rewritten(tmp_path / "broken.safetensors", {UNET_CONFIG_METADATA: "[1, 2"})
    with pytest.raises(ModelError, match=r"broken.safetensors: its erasec.unet_config header is not JSON \("):
        export_onnx(broken, tmp_path / "out", ExportOptions(exporter="legacy", components=("unet",)))
