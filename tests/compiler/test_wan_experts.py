"""Wan 2.2's two experts (issue 14: "Wan 2.2 has a second transformer (transformer_2, the low-noise
expert) reading the same text: both are edited").

Each expert has its own ``condition_embedder.text_embedder``, so its own key rows: a build of a Wan 2.2
folder writes one patch per expert, ``-o PATH`` for ``transformer/`` and ``PATH`` with ``.transformer_2``
before the suffix for ``transformer_2/``, each recording the expert it edits (``erasec.base.component``).
Here, on ``builtin:tiny-wan``: the second patch loads through diffusers' own
``WanPipeline.load_lora_weights(..., load_into_transformer_2=True)`` + ``fuse_lora(components=["transformer_2"])``
to W0 + ΔW of transformer_2 (1e-5 relative) with nothing else moved; an erased prompt's rows reach
its anchor's output at transformer_2's to_k/to_v (1e-6, the exactness test of test_dit_build.py);
the embedding cache keeps the experts' rows apart; the tools open the expert the patch records, and
refuse a folder without it in one line.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from cli_helpers import fails, run
from erasec.compiler.models.open import open_model
from erasec.patches.link import decode_shared
from erasec.patches.read import read_patch

LENGTH = 8  # options.sequence_length: few enough rows to be exact (≤ the key width)
PROMPT, ANCHOR = "Van Gogh", "a painter"
EXPERT_FILE = Path("transformer_2") / "diffusion_pytorch_model.safetensors"
FIRST_FILE = Path("transformer") / "diffusion_pytorch_model.safetensors"


def _spec(folder: Path, model: str, *, fmt: str = "peft", name: str = "wan") -> Path:
    spec = folder / f"{name}.yaml"
    spec.write_text(
        f"erasec: 1\nname: {name}\nversion: 1.0.0\nmodel: {model}\nmethod: uce\n"
        f"erase:\n  - {{concept: {PROMPT}, anchor: {ANCHOR}}}\npreserve: [Claude Monet, a photo of a cat]\n"
        f"options:\n  lambda: 0.1\n  sequence_length: {LENGTH}\n  pipeline: canonicalize,solve-exact,compress\n"
        f"output:\n  format: {fmt}\n"
    )
    return spec


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, Path, Path, dict]:
    """(tiny-wan's folder, the transformer/ patch, the transformer_2/ patch, the build's JSON summary)."""
    from erasec.compiler.models.builtin import builtin_model_path

    root = tmp_path_factory.mktemp("wan")
    out = root / "out" / "wan.safetensors"
    result = run("build", _spec(root, "builtin:tiny-wan"), "-o", out, "--json")
    assert result.exit_code == 0, result.output
    return builtin_model_path("tiny-wan"), out, out.with_name("wan.transformer_2.safetensors"), json.loads(result.output)


def _deltas(patch: Path, weights: dict) -> dict[str, np.ndarray]:
    """ΔW = W0 (T − I) per edited layer, from the patch's shared factors and the given expert's W0."""
    opened = read_patch(patch)
    solution = decode_shared(opened.metadata["erasec.shared"])
    return {
        layer: solution.space(space["space"]).delta(layer, weights[f"{layer}.weight"].astype(np.float64))
        for space in opened.spaces
        for layer in space["layers"]
    }


def test_a_wan_build_writes_one_patch_per_expert_each_recording_its_expert(built):
    folder, first, second, summary = built
    assert sorted(p.name for p in first.parent.iterdir()) == ["wan.safetensors", "wan.transformer_2.safetensors"]
    assert read_patch(first).base["component"] == "transformer"
    assert read_patch(second).base["component"] == "transformer_2"
    assert summary["component"] == "transformer" and [e["component"] for e in summary["experts"]] == ["transformer_2"]
    assert summary["experts"][0]["output"] == str(second)
    # each pins its own expert's weights and text embedder: the two patches are not one file twice
    assert read_patch(first).base["sha256"] != read_patch(second).base["sha256"]
    assert read_patch(first).base["text_encoder"]["sha256"] != read_patch(second).base["text_encoder"]["sha256"]
    second_weights = load_file(str(folder / EXPERT_FILE))
    first_deltas, second_deltas = _deltas(first, second_weights), _deltas(second, second_weights)
    assert any(np.linalg.norm(first_deltas[k] - second_deltas[k]) > 1e-3 * np.linalg.norm(second_deltas[k])
               for k in second_deltas), "transformer_2's patch must be solved on its own rows"


@pytest.mark.parametrize("experts", [("transformer_2",), ("transformer", "transformer_2")])
def test_the_patches_fuse_in_wan_pipeline_to_w0_plus_delta(built, experts):
    """diffusers' own loader: ``load_lora_weights(..., load_into_transformer_2=True)`` and
    ``fuse_lora(components=["transformer_2"])`` give transformer_2 exactly W0 + ΔW of its own patch
    (and, with both loaded as docs/models.md says, transformer W0 + ΔW of the other); nothing else moves."""
    import torch
    from diffusers import WanPipeline

    folder, first, second, _ = built
    patches = {"transformer": (first, FIRST_FILE), "transformer_2": (second, EXPERT_FILE)}
    deltas = {name: _deltas(patches[name][0], load_file(str(folder / patches[name][1]))) for name in experts}
    assert all(len(d) == 4 for d in deltas.values())
    pipe = WanPipeline.from_pretrained(str(folder), torch_dtype=torch.float32)
    before = {name: {k: v.clone() for k, v in getattr(pipe, name).state_dict().items()} for name in pipe.components
              if isinstance(getattr(pipe, name), torch.nn.Module)}
    for name in experts:
        patch = str(patches[name][0])
        pipe.load_lora_weights(patch, **({"load_into_transformer_2": True} if name == "transformer_2" else {}))
    pipe.fuse_lora(lora_scale=1.0, components=list(experts))
    pipe.unload_lora_weights()
    moved = 0
    for name, state in before.items():
        after = getattr(pipe, name).state_dict()
        assert set(after) == set(state), name
        for key, value in state.items():
            layer = key.removesuffix(".weight")
            if name in deltas and layer in deltas[name]:
                expected = value.double().numpy() + deltas[name][layer]
                got = after[key].double().numpy()
                assert np.linalg.norm(got - expected) / np.linalg.norm(expected) < 1e-5, (name, key)
                assert np.linalg.norm(deltas[name][layer]) > 1e-3 * np.linalg.norm(expected), key  # a real edit
                moved += 1
            else:
                assert torch.equal(after[key], value), (name, key)
    assert moved == 4 * len(experts)


def test_erased_rows_reach_their_anchor_at_transformer_2s_sites(built):
    """transformer_2's own rows (its text embedder over umT5): an erased prompt's seen rows give the
    anchor's to_k/to_v output, bias included, to 1e-6; the transformer/ patch's map does not."""
    folder, first, second, _ = built
    weights = load_file(str(folder / EXPERT_FILE))
    model = open_model(str(folder), sequence_length=LENGTH, component="transformer_2")
    rows, guides = model.encode([PROMPT, ANCHOR], padded=True)
    seen = model.seen_rows(len(model.tokenize([PROMPT])[0]))

    def worst(deltas):
        errors = []
        for layer, delta in deltas.items():
            w0, bias = weights[f"{layer}.weight"].astype(np.float64), weights[f"{layer}.bias"].astype(np.float64)
            erased = rows[:seen] @ (w0 + delta).T + bias
            anchor = guides[:seen] @ w0.T + bias
            errors.append((np.linalg.norm(erased - anchor, axis=1) / np.linalg.norm(anchor, axis=1)).max())
        return max(errors)

    assert worst(_deltas(second, weights)) < 1e-6
    assert worst(_deltas(first, weights)) > 1e-2  # the other expert's rows: not an erasure of these


def test_the_embedding_cache_keeps_the_experts_rows_apart(built, tmp_path):
    """Both experts read one umT5 but each through its own text embedder: the cache, warm with
    transformer/'s rows, hands transformer_2 none of them, and its rows are its own embedder's."""
    from erasec.compiler.models.embedding_cache import CachingModel, EmbeddingCache

    folder = built[0]
    cache = EmbeddingCache.at(tmp_path / "cache")
    first = CachingModel(open_model(str(folder), sequence_length=LENGTH), cache)
    second = CachingModel(open_model(str(folder), sequence_length=LENGTH, component="transformer_2"), cache)
    assert first.text_encoder_pin()["sha256"] != second.text_encoder_pin()["sha256"]
    rows = first.encode([PROMPT], padded=True)[0]
    other = second.encode([PROMPT], padded=True)[0]
    assert second.hits == 0
    direct = open_model(str(folder), sequence_length=LENGTH, component="transformer_2").encode([PROMPT], padded=True)[0]
    np.testing.assert_array_equal(other, direct)
    assert not np.allclose(rows, other)
    again = CachingModel(open_model(str(folder), sequence_length=LENGTH, component="transformer_2"), cache)
    np.testing.assert_array_equal(again.encode([PROMPT], padded=True)[0], direct)
    assert again.hits == 1  # its own rows are cached under its own key


def test_the_tools_open_the_expert_the_patch_records(built, tmp_path):
    """verify passes on the folder (transformer_2's pin and ΔW); apply merges into transformer_2/ alone;
    retarget keeps the expert; inspect names it."""
    folder, _, second, _ = built
    result = run("verify", second, "--model", str(folder), "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["ok"] is True
    merged = tmp_path / "merged"
    result = run("apply", second, "--model", str(folder), "-o", merged)
    assert result.exit_code == 0, result.output
    assert (merged / FIRST_FILE).read_bytes() == (folder / FIRST_FILE).read_bytes()
    deltas = _deltas(second, load_file(str(folder / EXPERT_FILE)))
    base, after = load_file(str(folder / EXPERT_FILE)), load_file(str(merged / EXPERT_FILE))
    for name, value in base.items():
        layer = name.removesuffix(".weight")
        if layer in deltas:
            expected = value.astype(np.float64) + deltas[layer]
            assert np.linalg.norm(after[name] - expected) / np.linalg.norm(expected) < 1e-6, name
        else:
            np.testing.assert_array_equal(after[name], value)
    again = tmp_path / "again.safetensors"
    result = run("retarget", second, "--model", str(folder), "-o", again)
    assert result.exit_code == 0, result.output
    assert read_patch(again).base["component"] == "transformer_2"
    assert read_patch(again).base["sha256"] == read_patch(second).base["sha256"]
    result = run("inspect", second)
    assert result.exit_code == 0 and "transformer_2" in result.output, result.output


def test_a_transformer_2_patch_against_a_folder_without_it_is_refused(built, tmp_path):
    """A Wan folder with only transformer/ (as Wan 2.1): one line naming both experts, exit 2, no output."""
    folder, _, second, _ = built
    wan21 = tmp_path / "wan21"
    shutil.copytree(folder, wan21, ignore=shutil.ignore_patterns("transformer_2"))
    message = f"{second}: is a patch of transformer_2/, not transformer/; {wan21}: has no transformer_2/ folder"
    fails(["verify", second, "--model", str(wan21)], message)
    out = tmp_path / "merged"
    fails(["apply", second, "--model", str(wan21), "-o", out], message)
    assert not out.exists()


def test_the_second_patchs_path_follows_the_output_policy_before_any_work(tmp_path):
    """An unrelated file where transformer_2's patch would go is refused before any work (neither
    patch written); --force replaces it."""
    spec = _spec(tmp_path, "builtin:tiny-wan", name="policy")
    out = tmp_path / "out.safetensors"
    mine = tmp_path / "out.transformer_2.safetensors"
    mine.write_bytes(b"my own file")
    fails(["build", spec, "-o", out], f"{mine}: exists and is not an erasec patch named 'policy'; pass --force")
    assert not out.exists() and mine.read_bytes() == b"my own file"


def test_a_merged_checkpoint_of_a_wan_2_2_folder_says_transformer_2_is_not_edited(tmp_path):
    spec = _spec(tmp_path, "builtin:tiny-wan", fmt="checkpoint", name="merged")
    out = tmp_path / "merged"
    result = run("build", spec, "-o", out, "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert "experts" not in summary
    assert any(d.startswith("warning [experts] output.format checkpoint edits transformer/ only; transformer_2")
               for d in summary["diagnostics"]), summary["diagnostics"]
    assert not (tmp_path / "merged.transformer_2").exists()


def test_the_component_record_is_checked():
    """erasec.base.component: one of a family's denoiser folders, for a family with several only; the
    patches layer's table is the families' own."""
    from erasec.compiler.models.families import FAMILIES
    from erasec.patches.errors import PatchError
    from erasec.patches.manifest_checks import DENOISERS, check_component

    assert DENOISERS == {name: f.denoisers for name, f in FAMILIES.items() if f.experts}
    check_component(Path("p.safetensors"), {"family": "wan", "component": "transformer_2"})
    check_component(Path("p.safetensors"), {"family": "wan"})  # written before the second expert: transformer/
    with pytest.raises(PatchError, match=r"^p.safetensors: erasec.base.component: 'transformer_3' is not one of transformer, transformer_2$"):
        check_component(Path("p.safetensors"), {"family": "wan", "component": "transformer_3"})
    with pytest.raises(PatchError, match=r"^p.safetensors: erasec.base.component: 'transformer' recorded for flux, which has one denoiser$"):
        check_component(Path("p.safetensors"), {"family": "flux", "component": "transformer"})


@pytest.mark.slow  # three builds of two experts each (≈ 16 s)
def test_compose_of_transformer_2_patches_is_the_union_builds_transformer_2_patch(tmp_path):
    """compose opens the recorded expert: two linked transformer_2 patches compose to the union spec's
    transformer_2 patch (ΔW to 1e-8), recording transformer_2; a transformer/ patch does not join them."""
    def spec(name: str, concepts: list[str]) -> Path:
        path = tmp_path / f"{name}.yaml"
        erase = "".join(f"  - {{concept: {c}, anchor: a painter}}\n" for c in concepts)
        path.write_text(
            f"erasec: 1\nname: {name}\nversion: 1.0.0\nmodel: builtin:tiny-wan\nmethod: uce\nerase:\n{erase}"
            f"preserve: [a photo of a cat]\noptions:\n  sequence_length: {LENGTH}\noutput:\n  format: peft\n  link: true\n"
        )
        return path

    for name, concepts in (("a", ["Van Gogh"]), ("b", ["Claude Monet"]), ("ab", ["Van Gogh", "Claude Monet"])):
        result = run("build", spec(name, concepts), "-o", tmp_path / f"{name}.safetensors")
        assert result.exit_code == 0, result.output
    second = {name: tmp_path / f"{name}.transformer_2.safetensors" for name in ("a", "b", "ab")}
    out = tmp_path / "c.safetensors"
    result = run("compose", second["a"], second["b"], "-o", out, "--name", "ab")
    assert result.exit_code == 0, result.output
    assert read_patch(out).base["component"] == "transformer_2"
    assert not out.with_name("c.transformer_2.safetensors").exists()  # compose writes the one patch
    weights = load_file(str(_tiny_wan() / EXPERT_FILE))
    composed, union = _deltas(out, weights), _deltas(second["ab"], weights)
    for layer, delta in union.items():
        assert np.linalg.norm(composed[layer] - delta) <= 1e-8 * np.linalg.norm(delta), layer
    fails(["compose", second["a"], tmp_path / "b.safetensors", "-o", tmp_path / "x.safetensors"], "pins another base")


def _tiny_wan() -> Path:
    from erasec.compiler.models.builtin import builtin_model_path

    return builtin_model_path("tiny-wan")
