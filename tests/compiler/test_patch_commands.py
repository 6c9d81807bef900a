"""The patch commands as a user runs them: inspect, verify, apply, compose, diff, publish, retarget.

Patches are built once per module from ``builtin:tiny-sd1``; OTHER is a copy of it whose UNet K/V
weights are perturbed (a "fine-tune" with the same text encoder).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from cli_helpers import ok_json, run
from erasec.patches.link import decode_shared
from erasec.patches.manifest import write_patch
from erasec.patches.read import read_patch

SPEC_A = """\
erasec: 1
name: no-artists
version: 1.0.0
model: builtin:tiny-sd1
method: uce
erase:
  - {concept: Van Gogh, anchor: art}
preserve: [Claude Monet, a photo of a cat]
output: {link: true}
"""
SPEC_B = """\
erasec: 1
name: more-artists
version: 1.0.0
model: builtin:tiny-sd1
method: uce
erase:
  - {concept: Kelly McKernan}
  - {concept: Greg Rutkowski, anchor: a painter}
preserve: [claude monet, Pablo Picasso]
output: {link: true}
"""
SPEC_UNION = """\
erasec: 1
name: no-artists
version: 1.1.0
model: builtin:tiny-sd1
method: uce
erase:
  - {concept: Van Gogh, anchor: art}
  - {concept: Kelly McKernan}
  - {concept: Greg Rutkowski, anchor: a painter}
preserve: [Claude Monet, a photo of a cat, Pablo Picasso]
output: {link: true}
"""
KV = (".attn2.to_k.", ".attn2.to_v.")
UNET = Path("unet") / "diffusion_pytorch_model.safetensors"


def _perturbed_copy(source: Path, target: Path, select, scale: float, file: Path = UNET) -> Path:
    shutil.copytree(source, target)
    tensors = load_file(str(target / file))
    generator = torch.Generator().manual_seed(0)
    for name in sorted(tensors):
        if select(name):
            tensors[name] = tensors[name] + scale * torch.randn(tensors[name].shape, generator=generator)
    save_file(tensors, str(target / file))
    return target


def _without(path: Path, key: str, output: Path) -> Path:
    with safe_open(str(path), "pt") as handle:
        metadata = dict(handle.metadata())
        tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    metadata.pop(key)
    write_patch(output, tensors, metadata)
    return output


@pytest.fixture(scope="module")
def built(tmp_path_factory, tiny_sd1_path):
    root = tmp_path_factory.mktemp("patches")
    other = _perturbed_copy(tiny_sd1_path, root / "other", lambda n: any(k in n for k in KV), 0.05)
    out = {"root": root, "base": tiny_sd1_path, "other": other}
    for key, text, extra in (
        ("a", SPEC_A, ()),
        ("b", SPEC_B, ()),
        ("union", SPEC_UNION, ()),
        ("a_other", SPEC_A, ("--model", other)),
    ):
        spec = root / f"{key}.yaml"
        spec.write_text(text)
        out[key] = root / f"{key}.safetensors"
        result = run("build", spec, "-o", out[key], *extra)
        assert result.exit_code == 0, result.output
    return out


def _deltas(path: Path, base: Path) -> dict[str, np.ndarray]:
    """float64 ΔW per site from a patch's recorded shared factors and the base's W0."""
    patch = read_patch(path)
    solution = decode_shared(patch.metadata["erasec.shared"])
    weights = load_file(str(base / UNET))
    return {
        layer: solution.space(space["space"]).delta(layer, weights[f"{layer}.weight"].double().numpy())
        for space in patch.spaces
        for layer in space["layers"]
    }


def _lora_products(path: Path) -> dict[str, np.ndarray]:
    patch = read_patch(path)
    return {layer: patch.layer_delta(layer) for layer in patch.layers()}


def _relative(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


# --- inspect, verify --------------------------------------------------------------------------------


def test_inspect_shows_what_the_patch_does(built):
    facts = ok_json("inspect", built["a"])
    assert facts["name"] == "no-artists" and facts["version"] == "1.0.0"
    assert [e["concept"] for e in facts["erase"]] == ["Van Gogh"] and sorted(facts["preserve"]) == ["Claude Monet", "a photo of a cat"]
    assert facts["base"]["tensors"] == 32 and len(facts["layers"]) == 32 and facts["rank"] == 1
    assert facts["linked"] and facts["retargetable"] and facts["base"]["text_encoder_sha256"]
    text = run("inspect", built["a"]).output
    assert "no-artists 1.0.0" in text and "Van Gogh" in text and "sha256 (fp16-rounded)" in text


def test_verify_answers_yes_for_the_base(built):
    result = ok_json("verify", built["a"], "--model", "builtin:tiny-sd1")
    assert result["ok"] and [c["check"] for c in result["checks"]] == [
        "integrity", "layers", "finite", "sites", "base", "delta", "efficacy"
    ]
    assert "verified against builtin:tiny-sd1" in run("verify", built["a"], "--model", "builtin:tiny-sd1").output


def test_verify_detects_a_flipped_bit_in_a_patch_tensor(built, tmp_path):
    flipped = tmp_path / "flipped.safetensors"
    raw = bytearray(built["a"].read_bytes())
    start = 8 + int.from_bytes(raw[:8], "little")  # the tensor bytes follow the header
    raw[(start + len(raw)) // 2] ^= 0x01
    flipped.write_bytes(bytes(raw))
    result = run("verify", flipped, "--model", "builtin:tiny-sd1")
    assert result.exit_code == 1
    assert f"{flipped}: does NOT verify: integrity: the tensor bytes hash to" in result.output
    refused = run("inspect", flipped)
    assert refused.exit_code == 2 and "tampered or corrupted" in refused.output
    assert "Traceback" not in refused.output and len(refused.output.strip().splitlines()) == 1


def test_verify_names_the_base_tensor_that_differs(built, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(built["base"], model)
    tensors = load_file(str(model / UNET))
    name = "mid_block.attentions.0.transformer_blocks.0.attn2.to_v.weight"
    tensors[name].view(torch.int32)[0, 0] ^= 1  # one low mantissa bit of an fp32 base
    save_file(tensors, str(model / UNET))
    result = run("verify", built["a"], "--model", model, "--json")
    assert result.exit_code == 1
    answer = json.loads(result.output)
    assert not answer["ok"]
    assert answer["reason"] == f"base: 1 of 32 touched tensors differ from the pin: {name.removesuffix('.weight')}"


def test_the_fp16_release_of_the_base_verifies_too(built, tmp_path):
    model = tmp_path / "fp16"
    shutil.copytree(built["base"], model)
    tensors = load_file(str(model / UNET))
    save_file({name: tensor.half() for name, tensor in tensors.items()}, str(model / UNET))
    result = ok_json("verify", built["a"], "--model", model)
    base = next(check for check in result["checks"] if check["check"] == "base")
    assert result["ok"] and base["detail"] == "the 32 touched tensors match the pin (fp16-rounded)"


# --- apply ------------------------------------------------------------------------------------------


def test_apply_merges_and_scale_minus_one_restores_the_base(built, tmp_path):
    merged, restored = tmp_path / "merged", tmp_path / "restored"
    result = ok_json("apply", built["a"], "--model", "builtin:tiny-sd1", "-o", merged)
    assert result["tensors_changed"] == 32 and result["layout"] == "diffusers"
    base = load_file(str(built["base"] / UNET))
    after = load_file(str(merged / UNET))
    products = _lora_products(built["a"])
    for name, tensor in base.items():
        if any(k in name for k in KV):
            expected = tensor.double().numpy() + products[name.removesuffix(".weight")]
            np.testing.assert_allclose(after[name].double().numpy(), expected, rtol=0, atol=1e-6)
        else:
            assert torch.equal(after[name], tensor), name
    ok_json("apply", built["a"], "--model", merged, "-o", restored, "--scale", "-1")
    back = load_file(str(restored / UNET))
    for name, tensor in base.items():  # fp32: W0 + ΔW − ΔW is W0 to a few units of rounding
        np.testing.assert_allclose(back[name].numpy(), tensor.numpy(), rtol=0, atol=1e-6)
    assert (restored / "text_encoder" / "model.safetensors").read_bytes() == (
        built["base"] / "text_encoder" / "model.safetensors"
    ).read_bytes()


def test_apply_refuses_a_model_that_is_not_the_base(built, tmp_path):
    result = run("apply", built["a"], "--model", built["other"], "-o", tmp_path / "x")
    assert result.exit_code == 2
    assert "not this patch's base (32 touched tensors differ" in result.output and "erasec retarget" in result.output
    assert not (tmp_path / "x").exists()


# --- compose ----------------------------------------------------------------------------------------


def test_compose_equals_building_the_union_spec(built, tmp_path):
    composed = tmp_path / "c.safetensors"
    result = ok_json("compose", built["a"], built["b"], "-o", composed, "--version", "1.1.0")
    assert result["rank"] == 3
    ours, theirs = _deltas(composed, built["base"]), _deltas(built["union"], built["base"])
    for layer in theirs:
        assert _relative(ours[layer], theirs[layer]) < 1e-8, layer
    lora_ours, lora_theirs = _lora_products(composed), _lora_products(built["union"])
    for module in lora_theirs:
        np.testing.assert_allclose(lora_ours[module], lora_theirs[module], rtol=1e-5, atol=1e-7)
    assert read_patch(composed).spec == read_patch(built["union"]).spec
    derived = json.loads(read_patch(composed).metadata["erasec.derived_from"])
    assert [d["name"] for d in derived] == ["no-artists", "more-artists"]


def test_compose_is_not_the_sum_of_the_loras(built, tmp_path):
    composed = tmp_path / "c.safetensors"
    ok_json("compose", built["a"], built["b"], "-o", composed)
    ours, a, b = (_lora_products(p) for p in (composed, built["a"], built["b"]))
    gaps = [_relative(a[m] + b[m], ours[m]) for m in ours]
    assert min(gaps) > 1e-3, min(gaps)  # the joint solve differs in every layer


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("other-base", "pins another base than"),
        ("lambda", "options.lambda is 1.0, "),
        ("no-link", "records no text encodings (built without output.link: true)"),
        ("same-concept", "erases 'Van Gogh', which "),
    ],
)
def test_compose_refuses_with_the_reason(built, tmp_path, case, message):
    second = {
        "other-base": lambda: built["a_other"],
        "lambda": lambda: _build_with_lambda(built, tmp_path),
        "no-link": lambda: _without(built["b"], "erasec.link", tmp_path / "nolink.safetensors"),
        "same-concept": lambda: built["a"],
    }[case]()
    result = run("compose", built["a"], second, "-o", tmp_path / "c.safetensors")
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert not (tmp_path / "c.safetensors").exists()


def _build_with_lambda(built, tmp_path) -> Path:
    spec = tmp_path / "lam.yaml"
    spec.write_text(SPEC_B.replace("output:", "options: {lambda: 1.0}\noutput:"))
    out = tmp_path / "lam.safetensors"
    assert run("build", spec, "-o", out).exit_code == 0
    return out


# --- diff, publish ----------------------------------------------------------------------------------


def test_diff_reports_the_added_concepts_and_the_bump(built):
    result = ok_json("diff", built["a"], built["union"])
    assert sorted(result["concepts"]["added"]) == ["Greg Rutkowski", "Kelly McKernan"]
    assert result["preserve"]["added"] == ["Pablo Picasso"]
    assert result["version"]["bump"] == result["version"]["required"] == "minor" and result["version"]["matches"]
    assert result["version"]["reasons"][1:] == ["preserve list, options or pipeline changed"]
    answered_no = run("diff", built["union"], built["a"], "--json")
    assert answered_no.exit_code == 1  # the version check answered no (issue 12 item 7)
    backwards = json.loads(answered_no.output)
    assert sorted(backwards["concepts"]["removed"]) == ["Greg Rutkowski", "Kelly McKernan"]
    assert backwards["version"]["required"] == "major" and not backwards["version"]["matches"]


def test_publish_makes_a_hub_folder_and_refuses_to_overwrite_a_version(built, tmp_path):
    hub = tmp_path / "hub"
    result = ok_json("publish", built["a"], "--to", hub, "--base-model", "org/tiny")
    assert result["file"] == "no-artists-1.0.0.safetensors" and result["status"] == "published"
    assert (hub / "README.md").read_text().startswith("---\nbase_model: org/tiny\n")
    again = ok_json("publish", built["a"], "--to", hub)
    assert again["status"] == "unchanged"
    clash = run("publish", built["a_other"], "--to", hub)
    assert clash.exit_code == 2 and "already published with different bytes" in clash.output


# --- retarget ---------------------------------------------------------------------------------------


def test_retarget_equals_compiling_the_spec_against_the_other_model(built, tmp_path):
    moved = tmp_path / "r.safetensors"
    result = ok_json("retarget", built["a"], "--model", built["other"], "-o", moved)
    assert result["layers"] == 32
    ours, theirs = load_file(str(moved)), load_file(str(built["a_other"]))
    assert sorted(ours) == sorted(theirs)
    for name in theirs:
        torch.testing.assert_close(ours[name], theirs[name], rtol=1e-6, atol=1e-7)
    assert ok_json("verify", moved, "--model", built["other"])["ok"]
    same = read_patch(moved).metadata, read_patch(built["a_other"]).metadata
    assert same[0]["erasec.base"] == same[1]["erasec.base"] and same[0]["erasec.report"] == same[1]["erasec.report"]


def test_retarget_refuses_another_text_encoder(built, tmp_path):
    encoder = Path("text_encoder") / "model.safetensors"
    model = _perturbed_copy(built["other"], tmp_path / "m", lambda n: "final_layer_norm.weight" in n, 0.01, encoder)
    result = run("retarget", built["a"], "--model", model, "-o", tmp_path / "r.safetensors")
    assert result.exit_code == 2
    assert "its text encoder differs from the patch's" in result.output


def test_retarget_refuses_a_patch_without_shared_factors(built, tmp_path):
    plain = _without(built["a"], "erasec.shared", tmp_path / "plain.safetensors")
    result = run("retarget", plain, "--model", built["other"], "-o", tmp_path / "r.safetensors")
    assert result.exit_code == 2
    assert "not of the shared kind" in result.output


def test_a_linked_build_is_byte_identical_when_repeated(built, tmp_path):
    spec = tmp_path / "a.yaml"
    spec.write_text(SPEC_A)
    assert run("build", spec, "-o", tmp_path / "again.safetensors").exit_code == 0
    assert (tmp_path / "again.safetensors").read_bytes() == built["a"].read_bytes()


def test_a_peft_patch_verifies_applies_and_retargets_like_the_kohya_one(built, tmp_path):
    spec = tmp_path / "p.yaml"
    spec.write_text(SPEC_A.replace("{link: true}", "{link: true, format: peft}"))
    peft = tmp_path / "p.safetensors"
    assert run("build", spec, "-o", peft).exit_code == 0
    assert ok_json("verify", peft, "--model", "builtin:tiny-sd1")["ok"]
    kohya_products, peft_products = _lora_products(built["a"]), _lora_products(peft)
    for layer in kohya_products:
        np.testing.assert_array_equal(peft_products[layer], kohya_products[layer])
    moved = tmp_path / "moved.safetensors"
    ok_json("retarget", peft, "--model", built["other"], "-o", moved)
    assert all(name.startswith("unet.") for name in load_file(str(moved)))
    expected = _lora_products(built["a_other"])
    for layer, delta in _lora_products(moved).items():
        np.testing.assert_array_equal(delta, expected[layer])


# --- a patch is what it says it is (issue 16 items 1, 7, 8) ---------------------------------------------

from fake_patches import recraft  # noqa: E402

ATTN1_Q = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"


def _refused_by_every_command(patch: Path, tmp_path: Path, message: str) -> None:
    for args in (("inspect", patch), ("verify", patch, "--model", "builtin:tiny-sd1"),
                 ("apply", patch, "--model", "builtin:tiny-sd1", "-o", tmp_path / "merged"),
                 ("diff", patch, patch)):
        result = run(*args)
        assert result.exit_code in (1, 2) and "Traceback" not in result.output, (args, result.output)
        assert message in result.output, (args, result.output)
    assert not (tmp_path / "merged").exists()


def test_a_hidden_attn1_module_with_recomputed_hashes_is_refused(built, tmp_path):
    """Issue 16 item 1: it used to verify, inspect did not show it, and diffusers applied it."""
    extra = {f"{ATTN1_Q}.lora_up.weight": torch.full((32, 1), 20.0), f"{ATTN1_Q}.lora_down.weight": torch.ones(1, 32),
             f"{ATTN1_Q}.alpha": torch.tensor(1.0)}
    crafted = recraft(built["a"], tmp_path / "c.safetensors", tensors=extra)
    _refused_by_every_command(crafted, tmp_path, f"tensor '{ATTN1_Q}.alpha': is not a LoRA factor or alpha")
    stray = recraft(built["a"], tmp_path / "s.safetensors", tensors={"time_embedding.linear_1.weight": torch.ones(2)})
    _refused_by_every_command(stray, tmp_path, "tensor 'time_embedding.linear_1.weight': is not a LoRA factor")


def test_inspect_lists_every_module_a_loader_applies(built):
    facts = ok_json("inspect", built["a"])
    assert len(facts["modules"]) == 32 and {m["rank"] for m in facts["modules"]} == {1}
    first = facts["modules"][0]
    assert first["tensor"].startswith("lora_unet_") and len(first["shape"]) == 2
    assert first["tensor"] in run("inspect", built["a"]).output


def test_flipped_metadata_bits_fail_inspect_verify_and_apply(built, tmp_path):
    """Issue 16 item 8, through the commands: one flip in each erasec.*/ss_*/modelspec.* value."""
    raw = built["a"].read_bytes()
    length = int.from_bytes(raw[:8], "little")
    metadata = json.loads(raw[8 : 8 + length])["__metadata__"]
    for key in ("erasec.name", "erasec.report", "erasec.spaces", "ss_network_dim", "ss_output_name", "modelspec.title"):
        marker = (json.dumps(key) + ':"').encode()
        index = raw.index(marker, 8) + len(marker) + min(3, len(metadata[key]) - 1)
        flipped = bytearray(raw)
        flipped[index] ^= 0x02
        path = tmp_path / f"{key}.safetensors"
        path.write_bytes(bytes(flipped))
        _refused_by_every_command(path, tmp_path, str(path))


def test_verify_fails_a_nan_delta_error(built, tmp_path, monkeypatch):
    """Issue 16 item 7: `error > worst` is False for NaN, so a NaN ΔW error used to pass."""
    from erasec.compiler.tools import verify as patch_verify
    from erasec.compiler.models.open import open_model

    patch = read_patch(built["a"])
    layer = patch.layers()[5]
    real = patch.layer_delta
    monkeypatch.setattr(type(patch), "layer_delta", lambda self, name: real(name) * (np.nan if name == layer else 1.0))
    check = patch_verify._delta_check(patch, open_model("builtin:tiny-sd1").kv_weights(), "fp32")
    assert not check["ok"] and f"nan at {layer}" in check["detail"]


def test_verify_refuses_a_non_finite_factor(built, tmp_path):
    patch = read_patch(built["a"])
    module = patch.modules[0]
    up = torch.tensor(patch.tensor(f"{module.prefix}.lora_up.weight"), dtype=torch.float32)
    up[0, 0] = float("inf")
    crafted = recraft(built["a"], tmp_path / "inf.safetensors", tensors={f"{module.prefix}.lora_up.weight": up})
    result = run("verify", crafted, "--model", "builtin:tiny-sd1", "--json")
    assert result.exit_code == 1
    assert json.loads(result.output)["reason"] == f"finite: {module.layer}: its up factor holds NaN or infinity"


def test_verify_re_measures_the_claimed_efficacy(built, tmp_path):
    """A spec edited to claim another concept over untouched tensors (digest recomputed) fails."""
    patch = read_patch(built["a"])
    spec = json.loads(patch.metadata["erasec.spec"])
    spec["erase"][0]["concept"] = "Mickey Mouse"
    report = {**patch.report, "efficacy": {"Mickey Mouse": patch.report["efficacy"]["Van Gogh"]}}
    crafted = recraft(built["a"], tmp_path / "m.safetensors", metadata={
        "erasec.spec": json.dumps(spec, sort_keys=True, separators=(",", ":")),
        "erasec.report": json.dumps(report, sort_keys=True, separators=(",", ":")),
    })
    assert ok_json("inspect", crafted)["erase"][0]["concept"] == "Mickey Mouse"  # well-formed: only verify can tell
    result = run("verify", crafted, "--model", "builtin:tiny-sd1", "--json")
    assert result.exit_code == 1
    reason = json.loads(result.output)["reason"]
    assert reason.startswith("efficacy: 1 concepts re-measured; largest gap at 'Mickey Mouse': claimed 0.9"), reason
    inflated = recraft(built["a"], tmp_path / "i.safetensors", metadata={
        "erasec.report": json.dumps({**patch.report, "efficacy": {"Van Gogh": 1.0}})})
    assert not _ok_or_one(inflated)["ok"]


def _ok_or_one(path: Path) -> dict:
    result = run("verify", path, "--model", "builtin:tiny-sd1", "--json")
    assert result.exit_code in (0, 1), result.output
    return json.loads(result.output)


def test_a_speed_patch_declares_only_the_layers_it_edits(tmp_path):
    """SPEED edits to_v only: erasec.spaces used to list the 16 to_k layers too, with no tensors."""
    spec = tmp_path / "s.yaml"
    spec.write_text(SPEC_A.replace("method: uce", "method: speed"))
    out = tmp_path / "s.safetensors"
    assert run("build", spec, "-o", out).exit_code == 0
    assert len(ok_json("inspect", out)["modules"]) == 16
    assert _ok_or_one(out)["ok"]
    ok_json("apply", out, "--model", "builtin:tiny-sd1", "-o", tmp_path / "merged")


# --- SDXL's pooled path (issue 12 item 1) -----------------------------------------------------------


@pytest.mark.parametrize("model", ["builtin:tiny-sdxl.safetensors", "builtin:tiny-sdxl"])
def test_a_pooled_sdxl_patch_verifies_and_applies_against_its_own_model(tmp_path, model):
    """examples/sdxl-single-file.yaml (``options.pooled: true``) through build, verify and apply, on
    the single file it names and on the diffusers folder it was exported from."""
    from erasec.compiler.models.open import open_model

    example = Path(__file__).parents[2] / "examples" / "sdxl-single-file.yaml"
    spec = tmp_path / "sdxl.yaml"
    spec.write_text(example.read_text().replace("builtin:tiny-sdxl.safetensors", model))
    patch = tmp_path / "patch.safetensors"
    assert run("build", spec, "-o", patch).exit_code == 0
    verified = ok_json("verify", patch, "--model", model)
    assert verified["ok"], verified["reason"]
    assert next(c for c in verified["checks"] if c["check"] == "sites")["detail"] == "141 modules present with matching shapes"
    merged = tmp_path / ("merged.safetensors" if model.endswith(".safetensors") else "merged")
    assert ok_json("apply", patch, "--model", model, "-o", merged)["tensors_changed"] == 141
    opened = open_model(model, pooled=True)
    site = opened.target.spaces[1].sites[0]
    name = opened.weight_name(site)
    weights_file = opened.unet_weights_file
    before = load_file(str(weights_file))[name].double().numpy()
    after = load_file(str(merged if merged.suffix else merged / UNET))[name].double().numpy()
    expected = before + read_patch(patch).layer_delta(site.module_path)
    np.testing.assert_allclose(after, expected, rtol=0, atol=2e-3)  # fp16 file: one rounding of W0 + ΔW
    np.testing.assert_array_equal(after[:, site.in_features:], before[:, site.in_features:])  # size/crop columns keep W0
    assert not np.allclose(after[:, : site.in_features], before[:, : site.in_features])


# --- a PEFT patch carries no kohya ss_* keys (issue 12 item 15) -------------------------------------


def _metadata(path: Path) -> dict:
    with safe_open(str(path), "pt") as handle:
        return dict(handle.metadata())


def test_a_peft_patch_has_no_ss_keys_and_its_rank_comes_from_its_config(built, tmp_path):
    """A1111 lists a file with ss_* keys as a LoRA it applies, and applies nothing of a PEFT one: a
    PEFT patch has none (kohya keeps them), and every command reads its rank from the PEFT config."""
    spec = tmp_path / "p.yaml"
    spec.write_text(SPEC_A.replace("{link: true}", "{link: true, format: peft}"))
    peft = tmp_path / "p.safetensors"
    assert run("build", spec, "-o", peft).exit_code == 0
    metadata = _metadata(peft)
    assert not [key for key in metadata if key.startswith("ss_")]
    assert json.loads(metadata["lora_adapter_metadata"])["unet.r"] == 1
    assert {"ss_network_dim", "ss_network_alpha", "ss_output_name"} <= set(_metadata(built["a"]))
    assert ok_json("inspect", peft)["rank"] == 1
    layers = next(c for c in ok_json("verify", peft, "--model", "builtin:tiny-sd1")["checks"] if c["check"] == "layers")
    assert layers["detail"].startswith("32 LoRA modules at rank 1 (the PEFT config's r), exactly the declared layers")
    assert ok_json("apply", peft, "--model", "builtin:tiny-sd1", "-o", tmp_path / "merged")["tensors_changed"] == 32
    moved = tmp_path / "moved.safetensors"
    ok_json("retarget", peft, "--model", built["other"], "-o", moved)
    assert not [key for key in _metadata(moved) if key.startswith("ss_")]
    # one written before, with ss_* keys, still reads when they agree with its config; not otherwise
    older = recraft(peft, tmp_path / "older.safetensors", metadata={
        "ss_network_dim": "1", "ss_network_alpha": "1", "ss_network_module": "networks.lora", "ss_network_args": "{}"})
    assert ok_json("inspect", older)["rank"] == 1
    crafted = recraft(peft, tmp_path / "crafted.safetensors", metadata={
        "ss_network_dim": "4", "ss_network_alpha": "4", "ss_network_module": "networks.lora", "ss_network_args": "{}"})
    refused = run("inspect", crafted)
    assert refused.exit_code == 2
    assert refused.output.strip() == f"erasec: error: {crafted}: ss_network_dim: '4', but the PEFT config's r is 1"
