"""Neighbours preserved automatically (issue 15 deliverable 1): the built-in vocabulary, the spec's
``options.neighbors``, the mining on builtin:minilm-sd1 (a pretrained encoder, so neighbours are real
neighbours) and its refusals."""

from __future__ import annotations

import re
from fnmatch import fnmatch
from pathlib import Path

import numpy as np
import pytest
import tomllib
from cli_helpers import fails, spec_text, write_spec
from erasec.compiler.errors import SpecError
from erasec.compiler.frontend.neighbors import Neighbors
from erasec.compiler.frontend.presets import PRESETS
from erasec.compiler.frontend.reader import load_spec, parse_spec
from erasec.compiler.frontend.spec import dump_spec
from erasec.compiler.lowering.lower import Lowering
from erasec.compiler.lowering.neighbors import (
    BUILTIN_KINDS,
    LABEL,
    _cosines,
    _subject_rows,
    builtin_vocabulary,
)
from erasec.passes.pipeline import Pipeline

ROOT = Path(__file__).resolve().parents[2]
HELD_OUT = ROOT / "benchmarks" / "data" / "selective" / "test_neighbours.txt"
UNSAFE = re.compile(r"(?i)\b(sex\w*|porn\w*|nud\w*|naked|erotic\w*|gun\w*|kill\w*|drug\w*|bomb\w*)\b")
PAINTERS = ("Claude Monet", "Paul Gauguin", "Pablo Picasso", "Rembrandt", "a red apple", "the Eiffel Tower", "a bicycle")


def _spec(folder: Path, neighbors: str, *, erase=("{concept: Van Gogh, anchor: art}",), preserve=(), name="spec.yaml") -> Path:
    extra = f"options:\n  neighbors: {neighbors}\n" if neighbors else ""
    text = spec_text(model="builtin:minilm-sd1", erase=erase, preserve=preserve, extra=extra)
    return write_spec(folder, text, name)


def _names(names=PAINTERS) -> str:
    return "[" + ", ".join(f'"{n}"' for n in names) + "]"


# -- the built-in vocabulary ---------------------------------------------------------------------


def test_builtin_vocabulary_covers_every_kind_and_nothing_unsafe():
    vocabulary = builtin_vocabulary()
    kinds = {kind: [name for name, k in vocabulary if k == kind] for kind in BUILTIN_KINDS}
    assert {kind: len(names) >= 90 for kind, names in kinds.items()} == dict.fromkeys(BUILTIN_KINDS, True)
    assert len(vocabulary) > 2000
    assert {"clothed figure", "a portrait"} <= set(kinds["safe"])  # nudity's safe neighbours
    assert [name for name, _ in vocabulary if UNSAFE.search(name)] == []
    assert len({name.casefold() for name, _ in vocabulary}) == len(vocabulary)


def test_builtin_vocabulary_holds_no_test_split_neighbour():
    """The held-out benchmark scores neighbours mining never saw: none may be in the vocabulary."""
    if not HELD_OUT.is_file():
        pytest.skip(f"{HELD_OUT.relative_to(ROOT)} is absent (the held-out benchmark's test split)")
    held = {line.strip().casefold() for line in HELD_OUT.read_text(encoding="utf-8").splitlines() if line.strip()}
    assert len(held) > 100
    assert sorted(name for name, _ in builtin_vocabulary() if name.casefold() in held) == []


def test_vocabulary_files_ship_as_package_data():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["erasec.compiler"]
    for path in (ROOT / "compiler" / "data" / "neighbors").glob("*.txt"):
        relative = path.relative_to(ROOT / "compiler").as_posix()
        assert any(fnmatch(relative, pattern) for pattern in config), relative


# -- the spec ------------------------------------------------------------------------------------


def test_options_neighbors_read_and_recorded_without_files(tmp_path):
    (tmp_path / "names.txt").write_text("# painters\nClaude Monet\n\nPaul Gauguin\nclaude monet\n", encoding="utf-8")
    spec = load_spec(
        _spec(tmp_path, '{count: 3, radius: 0.8, weight: 2, vocabulary: [builtin, {file: names.txt}, {names: [Rembrandt]}]}'),
        methods=tuple(PRESETS),
    )
    assert spec.options.neighbors == Neighbors(count=3, radius=0.8, weight=2.0, builtin=True, names=("Claude Monet", "Paul Gauguin", "Rembrandt"))
    assert spec.options.neighbors.origins == ("names.txt line 2", "names.txt line 4", "options.neighbors.vocabulary[2].names[0]")
    recorded = parse_spec(dump_spec(spec), source="recorded", base_dir=None, methods=tuple(PRESETS))
    assert recorded.options.neighbors == spec.options.neighbors
    assert recorded.canonical_json() == spec.canonical_json()
    assert '"vocabulary":["builtin",{"names":["Claude Monet","Paul Gauguin","Rembrandt"]}]' in spec.canonical_json()


def test_a_spec_without_neighbors_records_no_key(tmp_path):
    spec = load_spec(_spec(tmp_path, ""), methods=tuple(PRESETS))
    assert spec.options.neighbors is None and "neighbors" not in spec.canonical_json()


@pytest.mark.parametrize(
    ("neighbors", "message"),
    [
        ("{vocabulary: [{file: empty.txt}]}", "options.neighbors.vocabulary[0].file: 'empty.txt' lists no names; add one a line"),
        ("{vocabulary: [{file: missing.txt}]}", "options.neighbors.vocabulary[0].file: cannot read"),
        ("{vocabulary: [{file: folder}]}", "a folder, not a regular file"),
        ("{vocabulary: [{file: ../outside.txt}]}", "is outside the spec's folder"),
        ("{vocabulary: [{file: binary.txt}]}", "not UTF-8 text"),
        ("{vocabulary: []}", "options.neighbors.vocabulary: the list is empty"),
        ("{vocabulary: [everything]}", "'everything' is not a vocabulary"),
        ("{vocabulary: [{names: []}]}", "options.neighbors.vocabulary[0].names: the list is empty"),
        ("{vocabulary: [{file: a.txt, names: [x]}]}", "give either 'file' or 'names'"),
        ("{count: 101}", "options.neighbors.count: 101 is not in [0, 100]"),
        ("{count: 2.5}", "options.neighbors.count"),
        ("{radius: 0}", "options.neighbors.radius: 0 is not in (0, 1]"),
        ("{weight: -1}", "options.neighbors.weight: -1 is not in"),
        ("{k: 8}", "options.neighbors"),
    ],
)
def test_bad_neighbors_options_are_one_line_errors(tmp_path, neighbors, message):
    folder = tmp_path / "spec"
    folder.mkdir()
    (folder / "empty.txt").write_text("# nothing\n\n", encoding="utf-8")
    (folder / "binary.txt").write_bytes(b"Monet\n\xff\xfe\n")
    (folder / "folder").mkdir()
    (tmp_path / "outside.txt").write_text("Claude Monet\n", encoding="utf-8")
    with pytest.raises(SpecError, match=re.escape(message)):
        load_spec(_spec(folder, neighbors), methods=tuple(PRESETS))


@pytest.mark.parametrize(
    ("neighbors", "message"),
    [
        ("{vocabulary: [{file: empty.txt}]}", "'empty.txt' lists no names"),
        ("{vocabulary: [{file: missing.txt}]}", "cannot read"),
        ("{vocabulary: [{file: names.txt}]}", "vocabulary entry 'Vincent van Gogh' (names.txt line 2) names the erased concept 'Van Gogh'"),
    ],
)
def test_cli_refuses_bad_vocabularies_with_exit_2_and_writes_nothing(tmp_path, neighbors, message):
    (tmp_path / "empty.txt").write_text("\n", encoding="utf-8")
    (tmp_path / "names.txt").write_text("Claude Monet\nVincent van Gogh\n", encoding="utf-8")
    output = tmp_path / "out" / "patch.safetensors"
    fails(["build", _spec(tmp_path, neighbors), "-o", output], message)
    assert not output.exists() and not output.parent.exists()


# -- mining on the semantic test bed ---------------------------------------------------------------


@pytest.fixture(scope="module")
def minilm(minilm_sd1_path):
    from erasec.compiler.models.open import open_model

    return open_model(str(minilm_sd1_path))


def _lowered(model, path: Path, method: str = "uce"):
    spec = load_spec(path, methods=tuple(PRESETS), model=str(model.location))
    preset = PRESETS[method]
    return spec, Lowering(model).lower(spec, preset)


def _movement(model, program, solution, prompts) -> np.ndarray:
    """Issue 15's movement of each prompt: all 77 rows, ‖ΔW c‖ over every edited site relative to ‖W0 c‖."""
    space, solved = program.spaces[0], solution.spaces[0]
    delta = solved.left @ solved.right.T  # T − I
    out = []
    for rows in model.encode(prompts, padded=True):
        moved = rows @ delta.T
        out.append(np.sqrt(np.einsum("ij,jk,ik->", moved, space.site_gram, moved) / np.einsum("ij,jk,ik->", rows, space.site_gram, rows)))
    return np.array(out)


def test_mined_neighbours_become_labelled_preserve_rows_and_a_note(tmp_path, minilm):
    _, program = _lowered(minilm, _spec(tmp_path, f"{{count: 3, vocabulary: [{{names: {_names()}}}]}}"))
    _, plain = _lowered(minilm, _spec(tmp_path, "", name="plain.yaml"))
    added = [p.prompt for p in program.spaces[0].preserve.provenance][plain.spaces[0].preserve.count :]
    assert len(added) == 3 and all(p.startswith(LABEL) for p in added)
    names = {p.removeprefix(LABEL) for p in added}
    assert names <= {"Claude Monet", "Paul Gauguin", "Pablo Picasso", "Rembrandt"}  # painters, not apples or towers
    notes = [d.message for d in program.diagnostics if d.origin == "neighbors"]
    assert notes[0].startswith("'Van Gogh' keeps 3 neighbours (cos_G): ")
    assert all(name in notes[0] for name in names)
    assert notes[1] == "7 vocabulary entries considered, 0 within radius 0.9 of an erased concept left out"
    assert np.all(program.spaces[0].preserve.weights[-3:] == 1.0)


def test_radius_leaves_out_entries_as_close_as_the_concept(tmp_path, minilm):
    """An entry at cos_G ≥ radius from an erased concept is the concept (a paraphrase), never preserved."""
    _, program = _lowered(minilm, _spec(tmp_path, f"{{count: 7, radius: 0.3, vocabulary: [{{names: {_names()}}}]}}"))
    added = sorted(p.prompt.removeprefix(LABEL) for p in program.spaces[0].preserve.provenance if p.prompt.startswith(LABEL))
    summary = [d.message for d in program.diagnostics if d.origin == "neighbors"][-1]
    found = re.fullmatch(r"7 vocabulary entries considered, (\d+) within radius 0\.3 of an erased concept left out", summary)
    assert found and int(found[1]) == 7 - len(added) > 0, summary
    lowering = Lowering(minilm)
    concept, _ = _subject_rows(lowering, ["Van Gogh"])
    rows, _ = _subject_rows(lowering, list(PAINTERS))
    cosines = _cosines(concept, rows, program.spaces[0].site_gram)[0]
    assert added == sorted(name for name, cos in zip(PAINTERS, cosines) if cos < 0.3)


@pytest.mark.slow
def test_builtin_vocabulary_leaves_out_other_erased_concepts(tmp_path, minilm):
    """A built-in entry naming an erased concept (Andy Warhol is listed) is left out and counted."""
    path = _spec(tmp_path, "{count: 7}", erase=("{concept: Van Gogh, anchor: art}", "{concept: Andy Warhol, anchor: art}"))
    _, program = _lowered(minilm, path)
    added = {p.prompt.removeprefix(LABEL) for p in program.spaces[0].preserve.provenance if p.prompt.startswith(LABEL)}
    assert "Andy Warhol" not in added and 7 <= len(added) <= 14
    summary = [d.message for d in program.diagnostics if d.origin == "neighbors"][-1]
    assert re.fullmatch(r"\d+ vocabulary entries considered, \d+ within radius 0\.9 of an erased concept and [1-9]\d* naming one left out", summary)


def test_preserving_mined_neighbours_lowers_their_movement_more_than_the_concepts(tmp_path, minilm):
    """The point of mining: neighbours move less, the erased concept and its paraphrase much less so."""
    solve = Pipeline.parse("canonicalize,solve")
    _, without = _lowered(minilm, _spec(tmp_path, "", name="plain.yaml"))
    _, with_ = _lowered(minilm, _spec(tmp_path, f"{{count: 4, weight: 4, vocabulary: [{{names: {_names()}}}]}}"))
    kept = sorted(p.prompt.removeprefix(LABEL) for p in with_.spaces[0].preserve.provenance if p.prompt.startswith(LABEL))
    before, after = (solve.apply(p).solution for p in (without, with_))
    neighbours = [f"a painting by {name}" for name in kept]
    paraphrase = ["the Dutch painter of The Starry Night", "Van Gogh"]
    ratio_n = _movement(minilm, with_, after, neighbours).mean() / _movement(minilm, without, before, neighbours).mean()
    ratio_u = _movement(minilm, with_, after, paraphrase).mean() / _movement(minilm, without, before, paraphrase).mean()
    assert ratio_n < 0.75 and ratio_u > ratio_n + 0.15, (ratio_n, ratio_u)


def test_a_preset_turns_mining_on(tmp_path, minilm):
    """``Preset.neighbors``: a method can mine by default; the spec's ``count: 0`` turns it off."""
    from dataclasses import replace

    from erasec.compiler.lowering.neighbors import neighbor_settings

    spec = load_spec(_spec(tmp_path, ""), methods=tuple(PRESETS))
    preset = replace(PRESETS["uce"], neighbors=5)
    assert neighbor_settings(spec, PRESETS["uce"]) is None
    assert neighbor_settings(spec, preset) == Neighbors(count=5)
    off = load_spec(_spec(tmp_path, "{count: 0}"), methods=tuple(PRESETS))
    assert neighbor_settings(off, preset) is None


# -- rows: all (every row of each kept neighbour in a few templates) and the padded prior ------------


def test_neighbors_rows_read_recorded_and_checked(tmp_path):
    spec = load_spec(_spec(tmp_path, "{count: 3, rows: all}"), methods=tuple(PRESETS))
    assert spec.options.neighbors == Neighbors(count=3, rows="all")
    assert '"rows":"all"' in spec.canonical_json()
    recorded = parse_spec(dump_spec(spec), source="recorded", base_dir=None, methods=tuple(PRESETS))
    assert recorded.options.neighbors == spec.options.neighbors
    last = load_spec(_spec(tmp_path, "{count: 3}", name="last.yaml"), methods=tuple(PRESETS))
    assert last.options.neighbors.rows == "last" and '"rows"' not in last.canonical_json()  # older specs keep their JSON
    with pytest.raises(SpecError, match=re.escape("options.neighbors.rows: 'every' is not one of last, all")):
        load_spec(_spec(tmp_path, "{rows: every}", name="bad.yaml"), methods=tuple(PRESETS))


def test_rows_all_preserves_every_row_of_each_neighbour_in_each_template(tmp_path, minilm):
    """Folded (the default lowering) and explicit rows are the same moments; the subject rows stay
    explicit and labelled; the kept neighbours' sentences move less than with their last-token row only."""
    from erasec.compiler.lowering.neighbors import NEIGHBOR_TEMPLATES

    path = _spec(tmp_path, f"{{count: 2, rows: all, vocabulary: [{{names: {_names()}}}]}}")
    spec, folded = _lowered(minilm, path)
    explicit = Lowering(minilm, fold_preserve=False).lower(spec, PRESETS["uce"])
    _, last = _lowered(minilm, _spec(tmp_path, f"{{count: 2, vocabulary: [{{names: {_names()}}}]}}", name="last.yaml"))
    kept = sorted({p.prompt.removeprefix(LABEL) for p in last.spaces[0].preserve.provenance if p.prompt.startswith(LABEL)})
    prompts = [t.format(name) for name in kept for t in NEIGHBOR_TEMPLATES]
    labels = [p.prompt.removeprefix(LABEL) for p in explicit.spaces[0].preserve.provenance if p.prompt.startswith(LABEL)]
    assert sorted(set(labels)) == sorted(prompts)
    assert len(labels) == len(prompts) * (minilm.padded_rows - 1)  # every row after BOS, padding included
    subject = [p.prompt.removeprefix(LABEL) for p in folded.spaces[0].preserve.provenance if p.prompt.startswith(LABEL)]
    assert sorted(subject) == sorted(prompts)  # one explicit row each; the rest folded
    moment = lambda space: space.preserve.keys.T @ (space.preserve.keys * space.preserve.weights[:, None]) + (
        space.preserve.folded.gram if space.preserve.folded is not None else 0
    )
    np.testing.assert_allclose(moment(folded.spaces[0]), moment(explicit.spaces[0]), rtol=1e-9, atol=1e-9)
    assert "2 neighbours preserved over every row in 4 templates" in [d.message for d in folded.diagnostics if d.origin == "neighbors"][-1]
    solve = Pipeline.parse("canonicalize,solve")
    sentences = [f"a landscape painted by {name}" for name in kept]  # a context the templates do not have
    moved_all = _movement(minilm, folded, solve.apply(folded).solution, sentences).mean()
    moved_last = _movement(minilm, last, solve.apply(last).solution, sentences).mean()
    assert moved_all < 0.7 * moved_last, (moved_all, moved_last)


def test_padded_prior_preserves_the_padding_rows_of_everyday_text(tmp_path, minilm):
    """``Preset.prior_rows = "padded"``: each prior prompt gives its 76 rows after BOS (weight spread
    over them), and the prior captions' padding rows move less."""
    from dataclasses import replace

    from erasec.compiler.lowering.prompts import prior_prompts

    spec = load_spec(_spec(tmp_path, ""), methods=tuple(PRESETS), model=str(minilm.location))
    tokens, padded = (Lowering(minilm).lower(spec, replace(PRESETS["erasec"], prior_rows=r)) for r in ("tokens", "padded"))
    prior = prior_prompts("coco")
    count = lambda program: program.spaces[0].preserve.count + (program.spaces[0].preserve.folded.rows if program.spaces[0].preserve.folded else 0)
    assert count(padded) - count(tokens) == sum(minilm.padded_rows - len(ids) for ids in minilm.tokenize(prior))
    solve = Pipeline.parse("canonicalize,invariants{centroids=3},solve")
    captions = prior[:40]
    padding = np.concatenate([rows[len(ids) :] for rows, ids in zip(minilm.encode(captions, padded=True), minilm.tokenize(captions))])

    def moved(program) -> float:
        solved = solve.apply(program).solution.spaces[0]
        gram = program.spaces[0].site_gram
        change = padding @ (solved.left @ solved.right.T).T
        return float(np.sqrt(np.einsum("ij,jk,ik->", change, gram, change) / np.einsum("ij,jk,ik->", padding, gram, padding)))

    assert moved(padded) < 0.7 * moved(tokens), (moved(padded), moved(tokens))
