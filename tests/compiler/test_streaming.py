"""Rows stream in and fold into moments (issue 3 item 1, issue 8 item 3), on the real tiny-sd1
encoder (d = 32, so a handful of 77-token prompts already exceeds d rows): the folded program
solves to the same map as the one that keeps every row, memory holds one row per prompt, and the
permuted spec writes the same bytes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from erasec.compiler.build import BuildOptions, build
from erasec.compiler.eval.metrics import score
from erasec.compiler.lowering.lower import Lowering
from erasec.compiler.models.open import open_model
from erasec.compiler.frontend.reader import parse_spec
from erasec.passes.pipeline import Pipeline
from erasec.compiler.frontend.presets import PRESETS

CONCEPTS = ["Van Gogh", "Claude Monet", "Kelly McKernan", "Greg Rutkowski", "Salvador Dali"]
PRESERVE = ["Pablo Picasso", "a painting by Van Gogh", "a photo of a cat", "Rembrandt", "Frida Kahlo"]


def _text(method: str, concepts=CONCEPTS, preserve=PRESERVE) -> str:
    erase = "\n".join(f"  - {{concept: {c}}}" for c in concepts)
    keep = "\n".join(f"  - {p}" for p in preserve)
    return (
        f"erasec: 1\nname: stream\nversion: 1.0.0\nmodel: builtin:tiny-sd1\nmethod: {method}\n"
        f"erase:\n{erase}\npreserve:\n{keep}\noutput: {{dtype: fp32}}\n"
    )


@pytest.fixture(scope="module")
def model(tiny_sd1_path):
    return open_model("builtin:tiny-sd1")


def _lower(model, method: str, **fold):
    spec = parse_spec(_text(method), source="s.yaml", base_dir=Path("."), methods=tuple(PRESETS))
    return Lowering(model, **fold).lower(spec, PRESETS[method])


def _shift(program) -> np.ndarray:
    space = program.solution.spaces[0]
    return space.left @ space.right.T


@pytest.mark.parametrize("method", ["uce-legacy", "time", "erasec"])
def test_folded_rows_solve_to_the_same_map(model, method):
    pipeline = Pipeline.parse(PRESETS[method].pipeline)
    fold_erase = not pipeline.reads_erase_rows()
    kept = _lower(model, method, fold_erase=False, fold_preserve=False)
    folded = _lower(model, method, fold_erase=fold_erase)
    space, whole = folded.spaces[0], kept.spaces[0]
    assert space.preserve.folded is not None
    # a last-token rule keeps every erase row explicit (each is its prompt's subject row): nothing to fold
    assert (space.erase.folded is not None) == (fold_erase and PRESETS[method].rows != "last_token")
    assert (space.erase.total, space.preserve.total) == (whole.erase.count, whole.preserve.count)
    np.testing.assert_allclose(
        _shift(pipeline.apply(folded)), _shift(pipeline.apply(kept)), rtol=1e-9, atol=1e-9 * np.abs(_shift(pipeline.apply(kept))).max()
    )


def test_one_explicit_row_per_prompt_and_every_row_of_a_prompt_filter_preserve_drops(model):
    lowered = _lower(model, "uce-legacy", fold_erase=True)
    space = lowered.spaces[0]
    assert space.erase.count == len(CONCEPTS)  # each prompt's subject row
    assert [p.token for p in space.erase.provenance] == [len(model.tokenize([c])[0]) - 2 for c in sorted(CONCEPTS)]
    by_prompt = {}
    for p in space.preserve.provenance:
        by_prompt[p.prompt] = by_prompt.get(p.prompt, 0) + 1
    # the empty prompt the method retains, the user's prompts: one row each, but the one that names
    # an erased concept keeps all 77, so that filter-preserve can take it out exactly
    assert by_prompt == {"": 1, **{p: 1 for p in PRESERVE}, "a painting by Van Gogh": 77}
    assert "a painting by Van Gogh" not in space.preserve.folded.prompts
    filtered = Pipeline.parse("filter-preserve").apply(lowered).spaces[0]
    assert "a painting by Van Gogh" not in {p.prompt for p in filtered.preserve.provenance}
    assert filtered.preserve.total == space.preserve.total - 77


def test_specificity_counts_the_folded_rows_exactly(model):
    pipeline = Pipeline.parse(PRESETS["uce-legacy"].pipeline)
    kept = _lower(model, "uce-legacy", fold_erase=False, fold_preserve=False)
    folded = _lower(model, "uce-legacy", fold_erase=False)
    solution = pipeline.apply(kept).solution
    weights = model.kv_weights()
    whole, part = score(kept, solution, weights), score(folded, solution, weights)
    assert part.preserve_rows == whole.preserve_rows
    assert part.specificity == pytest.approx(whole.specificity, rel=1e-9)


def test_rece_joint_keeps_every_erase_row_for_its_attacks(model):
    spec = parse_spec(_text("rece-joint"), source="s.yaml", base_dir=Path("."), methods=tuple(PRESETS))
    lowered = Lowering.for_pipeline(model, Pipeline.parse(PRESETS["rece-joint"].pipeline)).lower(spec, PRESETS["rece-joint"])
    assert lowered.spaces[0].erase.folded is None and lowered.spaces[0].preserve.folded is not None


def test_streaming_batches_do_not_change_the_map(model, monkeypatch):
    pipeline = Pipeline.parse(PRESETS["uce-legacy"].pipeline)
    whole = _shift(pipeline.apply(_lower(model, "uce-legacy", fold_erase=True)))
    monkeypatch.setattr(Lowering, "STREAM", 2)
    small = _shift(pipeline.apply(_lower(model, "uce-legacy", fold_erase=True)))
    # the tiny encoder rounds a row differently with its batch's company (docs/patch-format.md): 1e-7
    np.testing.assert_allclose(small, whole, atol=1e-5 * np.abs(whole).max())


@pytest.mark.parametrize("method", ["uce-legacy", "erasec"])
def test_a_permuted_spec_writes_the_same_bytes(tmp_path, tiny_sd1_path, method):
    first, second = tmp_path / "a.yaml", tmp_path / "b.yaml"
    first.write_text(_text(method))
    second.write_text(_text(method, concepts=CONCEPTS[::-1], preserve=PRESERVE[::-1]))
    a = build(first, tmp_path / "a.safetensors", BuildOptions(cache=False))
    b = build(second, tmp_path / "b.safetensors", BuildOptions(cache=False))
    assert a.preserve_rows == b.preserve_rows > 32  # more rows than d: they folded
    assert (tmp_path / "a.safetensors").read_bytes() == (tmp_path / "b.safetensors").read_bytes()


def test_a_thousand_concepts_from_file_lists_compile_with_one_row_kept_per_prompt(tmp_path, tiny_sd1_path):
    (tmp_path / "erase.txt").write_text("".join(f"artist {i}\n" for i in range(1000)))
    (tmp_path / "keep.txt").write_text("".join(f"painter {i}\n" for i in range(1000)))
    spec = tmp_path / "many.yaml"
    spec.write_text(
        "erasec: 1\nname: many\nversion: 1.0.0\nmodel: builtin:tiny-sd1\nmethod: uce-legacy\n"
        "erase:\n  - {file: erase.txt, anchor: art}\npreserve:\n  - {file: keep.txt}\n"
    )
    emitted = []
    result = build(spec, tmp_path / "many.safetensors", BuildOptions(cache=False, print_ir_after=("solve",)), emit_ir=emitted.append)
    assert result.erase_rows > 70_000 and result.preserve_rows == 1001 * 77
    # one explicit row per erase prompt and per preserve prompt; the other ~150,000 rows are moments
    assert "    erase rows=1000 target=guide\n      folded rows=" in emitted[0]
    assert "    preserve rows=1001\n      folded rows=76076 prompts=1001" in emitted[0]
    assert len(result.scores.requests) == 1000 and result.scores.specificity is not None


def test_erasing_a_concept_named_like_the_prior_keeps_the_prior(model):
    """The prior's captions are tagged "<prior coco> …" in provenance; the tag is not their text."""
    text = _text("erasec", concepts=["Coco"], preserve=["a photo of a cat"])
    spec = parse_spec(text, source="s.yaml", base_dir=Path("."), methods=tuple(PRESETS))
    pipeline = Pipeline.parse(PRESETS["erasec"].pipeline)
    program = pipeline.apply(Lowering.for_pipeline(model, pipeline).lower(spec, PRESETS["erasec"]))
    space = program.spaces[0]
    assert space.preserve.folded is not None and space.preserve.count >= 300  # the captions' subject rows
    assert not any("names an erased concept" in d.message for d in program.diagnostics)
