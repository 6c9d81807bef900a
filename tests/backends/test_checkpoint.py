"""Merged checkpoints: same layout as the input, W0 + ΔW in the edited K/V tensors, all else unchanged.

Each output is loaded the way a user would — ``from_pretrained`` for a folder, ``from_single_file``
with the local diffusers config for a single file (never the hub, research/ecosystem.md §3.5) — and
compared with the float64 solution (1e-5 relative, fp32). Every other tensor, and the safetensors
header with its metadata, must be byte-identical to the input's.
"""

from __future__ import annotations

import struct

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from erasec.compiler.build import BuildOptions, build
from erasec.compiler.models.builtin import builtin_model_path
from erasec.compiler.models.open import open_model

from test_kohya_diffusers import REL_TOL, SPEC, expected_deltas


def _split(path):
    raw = path.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    return raw[: 8 + length], raw[8 + length :]


def _check_unet(unet, base_unet, expected) -> None:
    after, before = unet.state_dict(), base_unet.state_dict()
    assert sorted(after) == sorted(before)
    edited = {f"{path}.weight": path for path in expected}
    for key, value in after.items():
        if key in edited:
            want = before[key].double().numpy() + expected[edited[key]]
            error = np.linalg.norm(value.double().numpy() - want) / np.linalg.norm(want)
            assert error < REL_TOL, f"{key}: relative error {error:.2e}"
        else:
            assert torch.equal(value, before[key]), f"{key} changed"


@pytest.mark.parametrize("name", ["tiny-sd1", pytest.param("tiny-sdxl", marks=pytest.mark.slow)])
def test_folder_in_folder_out(tmp_path, name) -> None:
    from diffusers import UNet2DConditionModel

    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC.format(model=f"builtin:{name}", method="uce", format="checkpoint"))
    merged = tmp_path / "merged"
    result = build(spec, merged)
    assert result.format == "checkpoint" and merged.is_dir()
    base = builtin_model_path(name)
    files = sorted(str(p.relative_to(base)) for p in base.rglob("*") if p.is_file())
    assert sorted(str(p.relative_to(merged)) for p in merged.rglob("*") if p.is_file()) == files
    unet_file = "unet/diffusion_pytorch_model.safetensors"
    for file in files:
        if file != unet_file:
            assert (merged / file).read_bytes() == (base / file).read_bytes(), file
    assert _split(merged / unet_file)[0] == _split(base / unet_file)[0]  # header and metadata
    unet = UNet2DConditionModel.from_pretrained(merged / "unet", local_files_only=True)
    base_unet = UNet2DConditionModel.from_pretrained(base / "unet", local_files_only=True)
    _check_unet(unet, base_unet, expected_deltas(spec))


@pytest.mark.parametrize(
    ("name", "dtype", "pooled"), [("tiny-sd2", None, False), ("tiny-sdxl", None, True), ("tiny-sd1", torch.float16, False)]
)
def test_single_file_in_single_file_out(tmp_path, name, dtype, pooled) -> None:
    from diffusers import UNet2DConditionModel

    source = builtin_model_path(f"{name}.safetensors")
    if dtype is not None:
        from safetensors import safe_open

        with safe_open(str(source), framework="pt") as handle:
            metadata = handle.metadata()
        half = tmp_path / "half.safetensors"
        save_file({k: v.to(dtype) for k, v in load_file(str(source)).items()}, str(half), metadata=metadata)
        source = half
    spec = tmp_path / "spec.yaml"
    text = SPEC.format(model=source, method="uce", format="checkpoint")
    spec.write_text(text.replace("preserve:", "options: {pooled: true}\npreserve:") if pooled else text)
    merged = tmp_path / "merged.safetensors"
    build(spec, merged, options=BuildOptions(allow_outside_spec=True))  # the model sits in the erasec cache
    header, data = _split(merged)
    base_header, base_data = _split(source)
    assert header == base_header  # tensor table and __metadata__ unchanged
    model = open_model(str(source), pooled=pooled)
    edited = {model.weight_name(site) for site in model.target.sites}
    assert ("model.diffusion_model.label_emb.0.0.weight" in edited) == pooled
    ours, theirs = load_file(str(merged)), load_file(str(source))
    assert sorted(ours) == sorted(theirs)
    changed = {k for k in ours if not torch.equal(ours[k], theirs[k])}
    assert changed == edited

    config = builtin_model_path(name)
    unet = UNet2DConditionModel.from_single_file(str(merged), config=str(config), subfolder="unet", local_files_only=True)
    base_unet = UNet2DConditionModel.from_single_file(str(source), config=str(config), subfolder="unet", local_files_only=True)
    if dtype is None:
        _check_unet(unet, base_unet, expected_deltas(spec))
    else:
        # fp16 storage: the file holds fp16(W0 + ΔW), the best an fp16 checkpoint can hold: within half
        # an fp16 spacing of W0 + ΔW. The rows are the build's bit for bit (expected_deltas encodes
        # as a build does); the slack (1e-6 relative) covers the float64 solve, run here outside the
        # build's one-BLAS-thread context (~1e-14), for a value next to a rounding midpoint.
        expected = expected_deltas(spec)
        for path, delta in expected.items():
            w0 = base_unet.state_dict()[f"{path}.weight"].double().numpy()
            got = unet.state_dict()[f"{path}.weight"].to(torch.float16).numpy()
            spacing = np.spacing(np.abs(got)).astype(np.float64)
            error = np.abs(got.astype(np.float64) - (w0 + delta))
            assert (error <= 0.5 * spacing + 1e-6 * np.abs(w0 + delta)).all(), path
            assert not np.array_equal(got, w0.astype(np.float16)), f"{path} unchanged"


def test_checkpoint_from_a_pickle_is_refused(tmp_path) -> None:
    from erasec.backends.errors import BackendError

    checkpoint = tmp_path / "model.ckpt"
    torch.save({"state_dict": load_file(str(builtin_model_path("tiny-sd1.safetensors")))}, str(checkpoint))
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC.format(model=checkpoint, method="uce", format="checkpoint"))
    with pytest.raises(BackendError) as caught:
        build(spec, tmp_path / "merged.ckpt", BuildOptions(allow_pickle=True))
    assert str(caught.value) == (
        f"checkpoint: {checkpoint} is not a safetensors file; convert the model to .safetensors "
        "to write a merged checkpoint"
    )


def test_existing_output_folder_is_refused(tmp_path) -> None:
    from erasec.backends.errors import BackendError

    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC.format(model="builtin:tiny-sd1", method="uce", format="checkpoint"))
    (tmp_path / "merged").mkdir()
    with pytest.raises(BackendError) as caught:
        build(spec, tmp_path / "merged")
    assert str(caught.value) == f"checkpoint: {tmp_path / 'merged'} exists; a merged folder is written to a new path"
