"""The patch commands on diffusion-transformer patches (issue 14 deliverable 5): verify, inspect,
retarget, compose, diff, eval and apply (and ``output.format: checkpoint``) on ``builtin:tiny-flux``
and ``builtin:tiny-sd3``, pooled path included, and the T5 padding every one of them re-opens the
model at (``erasec.base.sequence_length``).

Patches are built once per module and family at 8 T5 rows (``LENGTH``), fewer than any pipeline's
default (FLUX 512, SD3 256), so a command that re-opened the model at the default would measure
other rows and the tests below would see it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file
from safetensors.torch import load_file as load_torch, save_file

from cli_helpers import fails, ok_json, run
from erasec.compiler.models.builtin import builtin_model_path
from erasec.compiler.models.families import FAMILIES
from erasec.compiler.models.open import open_model
from erasec.patches.link import decode_shared
from erasec.patches.read import read_patch
from fake_patches import recraft

LENGTH = 8
TRANSFORMER = Path("transformer") / "diffusion_pytorch_model.safetensors"
MODELS = {"flux": "tiny-flux", "sd3": "tiny-sd3"}
T5 = {"flux": "text_encoder_2", "sd3": "text_encoder_3"}
PIPELINES = {"flux": "FluxPipeline", "sd3": "StableDiffusion3Pipeline"}
ERASE_A, ERASE_B = "{concept: Van Gogh, anchor: a painter}", "{concept: Kelly McKernan, anchor: an artist}"


def _spec(model: str, erase: tuple[str, ...], preserve: tuple[str, ...], *, version: str = "1.0.0", name: str = "dit",
          length: int | None = LENGTH, output: str = "{format: peft, link: true}") -> str:
    entries = "".join(f"  - {entry}\n" for entry in erase)
    padding = f"  sequence_length: {length}\n" if length is not None else ""
    return (
        f"erasec: 1\nname: {name}\nversion: {version}\nmodel: {model}\nmethod: uce\nerase:\n{entries}"
        f"preserve: [{', '.join(preserve)}]\noptions:\n  lambda: 0.1\n  pooled: true\n{padding}output: {output}\n"
    )


def _build(folder: Path, key: str, text: str, *extra) -> Path:
    (folder / f"{key}.yaml").write_text(text)
    out = folder / (f"{key}.safetensors" if "checkpoint" not in text else key)
    result = run("build", folder / f"{key}.yaml", "-o", out, *extra)
    assert result.exit_code == 0, result.output
    return out


def _perturbed_copy(source: Path, target: Path, file: Path, select, scale: float) -> Path:
    shutil.copytree(source, target)
    tensors = load_torch(str(target / file))
    generator = torch.Generator().manual_seed(0)
    for name in sorted(tensors):
        if select(name):
            tensors[name] = tensors[name] + scale * torch.randn(tensors[name].shape, generator=generator)
    save_file(tensors, str(target / file), metadata={"format": "pt"})
    return target


@pytest.fixture(scope="module", params=sorted(MODELS))
def built(request, tmp_path_factory) -> dict:
    """family → its base folder, a fine-tune of it (text-entry weights moved, same encoders), and
    patches a (one concept), b (another), union (both) built on the base, a_other on the fine-tune."""
    family = request.param
    root = tmp_path_factory.mktemp(family)
    base = builtin_model_path(MODELS[family])
    sites = ("context_embedder.weight", "time_text_embed.text_embedder.linear_1.weight")
    other = _perturbed_copy(base, root / "other", TRANSFORMER, lambda n: n in sites, 0.05)
    model = f"builtin:{MODELS[family]}"
    out = {"family": family, "root": root, "base": base, "other": other}
    out["a"] = _build(root, "a", _spec(model, (ERASE_A,), ("a photo of a cat",)))
    out["b"] = _build(root, "b", _spec(model, (ERASE_B,), ("a red car",), name="more"))
    out["union"] = _build(root, "union", _spec(model, (ERASE_A, ERASE_B), ("a photo of a cat", "a red car"), version="1.1.0"))
    out["a_other"] = _build(root, "a_other", _spec(model, (ERASE_A,), ("a photo of a cat",)), "--model", other)
    return out


def _deltas(path: Path, base: Path) -> dict[str, np.ndarray]:
    """float64 ΔW per site from the patch's recorded shared factors and the base's W0."""
    patch = read_patch(path)
    solution = decode_shared(patch.metadata["erasec.shared"])
    weights = load_file(str(base / TRANSFORMER))
    return {
        layer: solution.space(space["space"]).delta(layer, weights[f"{layer}.weight"].astype(np.float64))
        for space in patch.spaces
        for layer in space["layers"]
    }


def _relative(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


# --- the padding the patch records ------------------------------------------------------------------


def test_a_dit_patch_records_the_padding_it_was_built_at(built):
    patch = read_patch(built["a"])
    assert patch.sequence_length == LENGTH and patch.spec["options"]["sequence_length"] == LENGTH
    assert {site for space in patch.spaces for site in space["layers"]} == {
        "context_embedder", "time_text_embed.text_embedder.linear_1"}
    facts = ok_json("inspect", built["a"])
    assert facts["base"]["sequence_length"] == LENGTH
    assert f"T5 padding {LENGTH} rows per prompt" in run("inspect", built["a"]).output


def test_a_defaulted_padding_is_recorded_as_the_pipelines(tmp_path):
    (tmp_path / "d.yaml").write_text(_spec("builtin:tiny-flux", (ERASE_A,), (), length=None, output="{format: peft}"))
    patch = tmp_path / "d.safetensors"
    result = run("build", tmp_path / "d.yaml", "-o", patch)
    assert result.exit_code == 0, result.output
    # the summary names FLUX's own sites, not SD's K/V and add_embedding
    assert "(text pathway, the edited text-entry layer, on the spec's own rows" in result.output
    assert "pooled path (time_text_embed.text_embedder.linear_1):" in result.output
    read = read_patch(patch)
    assert "sequence_length" not in read.spec["options"] or read.spec["options"]["sequence_length"] is None
    assert read.sequence_length == FAMILIES["flux"].sequence_length == 512
    assert ok_json("verify", patch, "--model", "builtin:tiny-flux")["ok"]


@pytest.mark.parametrize("edit", ["dropped", "changed"])
def test_a_dit_patch_whose_manifest_lost_its_padding_is_refused_by_every_command(built, tmp_path, edit):
    base = json.loads(read_patch(built["a"]).metadata["erasec.base"])
    if edit == "dropped":
        base.pop("sequence_length")
        message = "erasec.base.sequence_length: missing"
    else:
        base["sequence_length"] = 256
        message = "erasec.base.sequence_length: 256 disagrees with erasec.spec options.sequence_length 8"
    bad = recraft(built["a"], tmp_path / "bad.safetensors",
                  metadata={"erasec.base": json.dumps(base, sort_keys=True, separators=(",", ":"))})
    model = f"builtin:{MODELS[built['family']]}"
    for args in (("inspect", bad), ("verify", bad, "--model", model), ("eval", bad, "--model", model),
                 ("apply", bad, "--model", model, "-o", tmp_path / "merged"),
                 ("retarget", bad, "--model", model, "-o", tmp_path / "r.safetensors"),
                 ("compose", bad, built["b"], "-o", tmp_path / "c.safetensors"), ("diff", built["a"], bad)):
        fails(args, message)
    assert not any((tmp_path / name).exists() for name in ("merged", "r.safetensors", "c.safetensors"))


def test_the_recorded_padding_is_the_one_the_patch_measures_right_at(built):
    """verify re-measures the claimed efficacy at the recorded padding and agrees; the same check
    with the model opened at the family's default padding would not (other rows)."""
    from erasec.compiler.eval.efficacy import efficacy_check
    from erasec.compiler.tools.verify import _tolerance

    patch = read_patch(built["a"])
    model = f"builtin:{MODELS[built['family']]}"
    at_own = efficacy_check(patch, open_model(model, pooled=True, sequence_length=LENGTH), _tolerance)
    at_default = efficacy_check(patch, open_model(model, pooled=True), _tolerance)
    assert at_own["ok"] and not at_default["ok"], (at_own, at_default)


# --- verify ----------------------------------------------------------------------------------------


def test_verify_passes_a_fresh_build_pooled_site_included(built):
    result = ok_json("verify", built["a"], "--model", f"builtin:{MODELS[built['family']]}")
    assert result["ok"], result["reason"]
    checks = {check["check"]: check for check in result["checks"]}
    assert "2 modules present" in checks["sites"]["detail"]
    assert {"integrity", "layers", "finite", "sites", "base", "delta", "efficacy"} <= set(checks)


def test_verify_fails_a_tampered_patch_and_a_fine_tune(built, tmp_path):
    tampered = tmp_path / "t.safetensors"
    raw = bytearray(built["a"].read_bytes())
    raw[-3] ^= 0x40  # a bit of the last tensor's bytes
    tampered.write_bytes(bytes(raw))
    result = run("verify", tampered, "--model", f"builtin:{MODELS[built['family']]}", "--json")
    assert result.exit_code == 1 and "integrity: " in json.loads(result.output)["reason"]
    result = run("verify", built["a"], "--model", built["other"], "--json")
    assert result.exit_code == 1 and "touched tensors differ from the pin" in json.loads(result.output)["reason"]


# --- apply and output.format: checkpoint -----------------------------------------------------------


def _merged_folder_is_w0_plus_delta(merged: Path, base: Path, deltas: dict[str, np.ndarray]) -> None:
    """Every edited weight is W0 + ΔW (fp32: 1e-6 relative), every other tensor and file unchanged."""
    before, after = load_file(str(base / TRANSFORMER)), load_file(str(merged / TRANSFORMER))
    assert sorted(before) == sorted(after)
    for name in sorted(before):
        layer = name.removesuffix(".weight")
        if layer in deltas:
            expected = before[name].astype(np.float64) + deltas[layer]
            assert _relative(after[name].astype(np.float64), expected) < 1e-6, name
            assert not np.array_equal(after[name], before[name]), name
        else:
            assert np.array_equal(after[name], before[name]), name  # biases included
    files = sorted(p.relative_to(base) for p in base.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(merged) for p in merged.rglob("*") if p.is_file())
    for file in files:
        if file != TRANSFORMER:
            assert (merged / file).read_bytes() == (base / file).read_bytes(), file


def _loads_in_its_pipeline(folder: Path, family: str, deltas: dict[str, np.ndarray], base: Path) -> None:
    import diffusers

    pipeline = getattr(diffusers, PIPELINES[family]).from_pretrained(str(folder), local_files_only=True)
    state = {k: v.double().numpy() for k, v in pipeline.transformer.state_dict().items()}
    w0 = load_file(str(base / TRANSFORMER))
    for layer, delta in deltas.items():
        assert _relative(state[f"{layer}.weight"], w0[f"{layer}.weight"] + delta) < 1e-6, layer


def test_apply_merges_w0_plus_delta_and_nothing_else(built, tmp_path):
    merged = tmp_path / "merged"
    result = ok_json("apply", built["a"], "--model", f"builtin:{MODELS[built['family']]}", "-o", merged)
    assert result["layout"] == "diffusers" and result["tensors_changed"] == 2
    patch = read_patch(built["a"])
    deltas = {layer: patch.layer_delta(layer) for layer in patch.layers()}  # what a LoRA loader adds
    _merged_folder_is_w0_plus_delta(merged, built["base"], deltas)
    _loads_in_its_pipeline(merged, built["family"], deltas, built["base"])
    restored = tmp_path / "restored"
    ok_json("apply", built["a"], "--model", merged, "-o", restored, "--scale", "-1")
    before, after = load_file(str(built["base"] / TRANSFORMER)), load_file(str(restored / TRANSFORMER))
    for name in before:
        np.testing.assert_allclose(after[name], before[name], rtol=0, atol=1e-6)


def test_a_checkpoint_build_is_the_base_folder_with_w0_plus_delta(built, tmp_path):
    family = built["family"]
    text = _spec(f"builtin:{MODELS[family]}", (ERASE_A,), ("a photo of a cat",), output="{format: checkpoint}")
    merged = _build(tmp_path, "merged", text)
    deltas = _deltas(built["a"], built["base"])  # the same spec's solution, as its LoRA records it
    _merged_folder_is_w0_plus_delta(merged, built["base"], deltas)
    _loads_in_its_pipeline(merged, family, deltas, built["base"])


# --- retarget, compose, diff ----------------------------------------------------------------------


def test_retarget_equals_compiling_the_spec_against_the_fine_tune(built, tmp_path):
    moved = tmp_path / "r.safetensors"
    result = ok_json("retarget", built["a"], "--model", built["other"], "-o", moved)
    assert result["layers"] == 2
    ours, theirs = load_file(str(moved)), load_file(str(built["a_other"]))
    assert sorted(ours) == sorted(theirs)
    for name in theirs:
        np.testing.assert_allclose(ours[name], theirs[name], rtol=1e-6, atol=1e-7)
    assert read_patch(moved).sequence_length == LENGTH
    assert ok_json("verify", moved, "--model", built["other"])["ok"]


def test_retarget_refuses_another_text_encoder(built, tmp_path):
    family = built["family"]
    encoder = next((built["base"] / T5[family]).glob("*.safetensors")).relative_to(built["base"])
    model = _perturbed_copy(built["base"], tmp_path / "m", encoder, lambda n: "final_layer_norm" in n, 0.01)
    fails(("retarget", built["a"], "--model", model, "-o", tmp_path / "r.safetensors"),
          "its text encoder differs from the patch's")
    assert not (tmp_path / "r.safetensors").exists()


def test_compose_of_two_patches_re_solves_on_the_union(built, tmp_path):
    composed = tmp_path / "c.safetensors"
    ok_json("compose", built["a"], built["b"], "-o", composed, "--version", "1.1.0")
    ours, theirs = _deltas(composed, built["base"]), _deltas(built["union"], built["base"])
    assert sorted(ours) == sorted(theirs) == ["context_embedder", "time_text_embed.text_embedder.linear_1"]
    # the sequence rows are replayed from erasec.link (float64, exact); the pooled rows are not linked
    # and are encoded again, in a batch of other prompts than the union build's, so the fp32 CLIP
    # differs in its last bits (measured 4.6e-7 on tiny-sd3)
    for layer, tolerance in (("context_embedder", 1e-8), ("time_text_embed.text_embedder.linear_1", 1e-6)):
        assert _relative(ours[layer], theirs[layer]) < tolerance, layer
    a, b = _deltas(built["a"], built["base"]), _deltas(built["b"], built["base"])
    assert _relative(a["context_embedder"] + b["context_embedder"], ours["context_embedder"]) > 1e-3  # not the sum
    assert read_patch(composed).sequence_length == LENGTH


def test_compose_refuses_patches_of_two_paddings(built, tmp_path):
    model = f"builtin:{MODELS[built['family']]}"
    other = _build(tmp_path, "b16", _spec(model, (ERASE_B,), ("a red car",), name="more", length=16))
    fails(("compose", built["a"], other, "-o", tmp_path / "c.safetensors"), "was built at a T5 padding of 16 rows")
    assert not (tmp_path / "c.safetensors").exists()


def test_diff_reports_the_added_concept_and_a_padding_change(built, tmp_path):
    result = ok_json("diff", built["a"], built["union"])
    assert result["concepts"]["added"] == ["Kelly McKernan"] and result["version"]["matches"]
    model = f"builtin:{MODELS[built['family']]}"
    wider = _build(tmp_path, "a16", _spec(model, (ERASE_A,), ("a photo of a cat",), version="1.0.1", length=16))
    options = ok_json("diff", built["a"], wider)["options"]
    assert {"key": "options.sequence_length", "old": LENGTH, "new": 16} in options


# --- eval ------------------------------------------------------------------------------------------


def test_eval_measures_at_the_recorded_padding_and_reports_another(built, tmp_path):
    prompts = tmp_path / "p.txt"
    prompts.write_text("a bowl of fruit\na mountain lake at dawn\n")
    model = f"builtin:{MODELS[built['family']]}"
    own = ok_json("eval", built["a"], "--model", model, "--suite", "coco", "--max-unrelated", "4", "--prompts", prompts)
    claimed = read_patch(built["a"]).report["efficacy"]["Van Gogh"]
    concept = own["concepts"][0]
    assert abs(concept["efficacy"]["total"] - claimed) < 1e-4, (concept["efficacy"], claimed)
    assert own["sequence_length"] == own["built_sequence_length"] == LENGTH
    assert 0 < own["specificity"]["coco"]["total"] <= 1
    # every row the runtime feeds: FLUX all LENGTH padded rows, SD3 the 77 CLIP rows too
    rows = {"flux": LENGTH, "sd3": 77 + LENGTH}[built["family"]]
    assert own["specificity"]["coco"]["rows"] == 4 * rows
    text = run("eval", built["a"], "--model", model, "--suite", "coco", "--max-unrelated", "4",
               "--sequence-length", "32").output
    assert "T5 padding 32 rows (--sequence-length), NOT the 8 the patch was built at" in text
    assert "1 of 1 text-entry layers edited" in text  # context_embedder, not a K/V layer
    other = ok_json("eval", built["a"], "--model", model, "--suite", "coco", "--max-unrelated", "4",
                    "--sequence-length", "32")
    assert (other["sequence_length"], other["built_sequence_length"]) == (32, LENGTH)
    assert other["specificity"]["coco"]["rows"] == 4 * (rows + 24)
    assert abs(other["concepts"][0]["efficacy"]["total"] - claimed) > 1e-3  # other rows, another answer


def test_eval_refuses_a_padding_for_an_sd_patch_and_one_out_of_range(built, tmp_path):
    fails(("eval", built["a"], "--model", f"builtin:{MODELS[built['family']]}", "--sequence-length", "0"),
          "--sequence-length 0: must be in 1..4096")
    spec = tmp_path / "sd.yaml"
    spec.write_text("erasec: 1\nname: sd\nversion: 1.0.0\nmodel: builtin:tiny-sd1\nmethod: uce\n"
                    "erase:\n  - {concept: Van Gogh, anchor: art}\n")
    assert run("build", spec, "-o", tmp_path / "sd.safetensors").exit_code == 0
    fails(("eval", tmp_path / "sd.safetensors", "--model", "builtin:tiny-sd1", "--sequence-length", "256"),
          "a sd1 patch has no T5 padding")


def test_a_checkpoint_build_from_a_single_file_keeps_its_native_names(built, tmp_path):
    """A BFL/SAI single file with its encoders apart (as ComfyUI keeps them): the merged file has the
    input's tensor names, dtypes and every other byte of it, and its edited tensors (``txt_in``,
    ``vector_in.in_layer`` / SAI ``context_embedder``, ``y_embedder.mlp.0``) are W0 + the ΔW the
    folder's patch of the same spec records. (diffusers' FLUX single-file converter assumes FLUX's
    3072-wide blocks, so a tiny single file is not loaded through it.)"""
    from erasec.ir.dit_naming import native_module_path

    family = built["family"]
    single, encoders = tmp_path / "model.safetensors", tmp_path / "enc"
    assert run("export-single-file", f"builtin:{MODELS[family]}", "-o", single, "--text-encoders", encoders).exit_code == 0
    slots = {path.stem: path.name for path in sorted(encoders.glob("*.safetensors"))}
    text = _spec(single.name, (ERASE_A,), ("a photo of a cat",), output="{format: checkpoint}").replace(
        "method: uce", f"text_encoders: {json.dumps({s: f'enc/{n}' for s, n in slots.items()})}\n"
        "tokenizers: {t5: enc/t5_tokenizer}\nmethod: uce")
    merged = _build(tmp_path, "merged", text)
    before, after = load_file(str(single)), load_file(str(merged))
    assert sorted(before) == sorted(after)
    deltas = {f"{native_module_path(layer, family)}.weight": delta for layer, delta in _deltas(built["a"], built["base"]).items()}
    assert sorted(deltas) == sorted(name for name in before if not np.array_equal(before[name], after[name]))
    for name, delta in deltas.items():
        assert _relative(after[name].astype(np.float64), before[name].astype(np.float64) + delta) < 1e-6, name
    assert merged.read_bytes()[:200] == single.read_bytes()[:200]  # the header (names, offsets) unchanged
