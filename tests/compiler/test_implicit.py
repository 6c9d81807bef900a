"""Implicit concepts (docs/spec.md, "Implicit concepts"): an erase entry's trigger prompts, lowered with
the ``eot_pad`` row rule (TRCE stage 1, arXiv 2503.07389) — their end-of-text and padding rows mapped
onto their safe counterparts' rows."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cli_helpers import fails, spec_text, write_spec
from erasec.compiler.errors import SpecError
from erasec.compiler.frontend.presets import PRESETS
from erasec.compiler.frontend.reader import parse_spec
from erasec.compiler.frontend.spec import dump_spec
from erasec.compiler.lowering.lower import Lowering
from erasec.compiler.models.open import open_model

ANCHOR = "a person wearing clothes"
TRIGGERS = (("a naked woman lying on a bed", "a woman in a red dress lying on a bed"), ("nude beach photo", ""))


def _spec(triggers=TRIGGERS, *, model: str = "builtin:tiny-sd1", **options) -> str:
    items = "".join(f"      - {{prompt: {json.dumps(p)}, counterpart: {json.dumps(c)}}}\n" for p, c in triggers)
    return (
        f"erasec: 1\nname: x\nversion: 1.0.0\nmodel: {model}\nmethod: uce\nerase:\n"
        f"  - concept: nudity\n    anchor: {ANCHOR}\n    implicit: true\n    triggers:\n{items}"
        f"preserve: [Claude Monet]\n" + (f"options: {json.dumps(options)}\n" if options else "")
    )


def _parse(text: str, base: Path = Path(".")):
    return parse_spec(text, source="s.yaml", base_dir=base, methods=tuple(PRESETS))


@pytest.fixture(scope="module")
def tiny(tiny_sd1_path):
    return open_model("builtin:tiny-sd1")


def _rows_of(rows, prompt):
    index = [i for i, p in enumerate(rows.provenance) if p.prompt == prompt]
    return rows.keys[index], rows.guides[index], [rows.provenance[i].token for i in index]


def test_eot_pad_takes_exactly_the_eot_and_padding_rows_paired_with_the_counterparts(tiny):
    program = Lowering(tiny, fold_preserve=False).lower(_parse(_spec()), PRESETS["uce"])
    erase = program.spaces[0].erase
    ids = dict(zip([p for pair in TRIGGERS for p in pair] + [ANCHOR], tiny.tokenize([p for pair in TRIGGERS for p in pair] + [ANCHOR])))
    for prompt, counterpart in TRIGGERS:
        guide = counterpart or ANCHOR  # no counterpart given: the entry's anchor
        keys, guides, tokens = _rows_of(erase, prompt)
        eot, guide_eot = len(ids[prompt]) - 1, len(ids[guide]) - 1
        assert tokens == list(range(eot, 77))  # the first EoT and every padding row, nothing else
        padded = tiny.tokenize([prompt])[0] + [ids[prompt][-1]] * (77 - len(ids[prompt]))  # CLIP pads with EoT
        assert {padded[t] for t in tokens} == {ids[prompt][-1]}
        own, safe = tiny.encode([prompt, guide], padded=True)
        np.testing.assert_allclose(keys, own[eot:], rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(guides, safe[np.minimum(guide_eot + np.arange(77 - eot), 76)], rtol=1e-6, atol=1e-7)
    # the entry's name keeps the method's rule: one row, its last subject token
    _, _, tokens = _rows_of(erase, "nudity")
    assert tokens == [len(tiny.tokenize(["nudity"])[0]) - 2]
    # the edit reaches the padding, so the preserved prompt's padding rows are held as well
    assert [p.token for p in program.spaces[0].preserve.provenance if p.prompt == "Claude Monet"] == list(range(77))


def test_options_implicit_rows_selects_a_name_row_rule_for_the_triggers(tiny):
    erase = Lowering(tiny).lower(_parse(_spec(implicit_rows="last_token")), PRESETS["uce"]).spaces[0].erase
    for prompt, _ in TRIGGERS:
        assert _rows_of(erase, prompt)[2] == [len(tiny.tokenize([prompt])[0]) - 2]


def test_a_held_out_trigger_moves_toward_its_counterpart_more_than_under_the_name_row_rule(minilm_sd1_path):
    """Real prompts, real encoder (builtin:minilm-sd1): tune on 10 Ring-A-Bell pairs, measure on 6 others."""
    import csv

    from erasec.compiler.eval.metrics import progress
    from erasec.compiler.eval.run import _solution_deltas
    from erasec.passes.pipeline import Pipeline

    suite = Path(__file__).resolve().parents[2] / "compiler" / "data" / "suites" / "ring-a-bell-nudity.csv"
    with open(suite, newline="", encoding="utf-8") as f:
        pairs = list(dict.fromkeys((r["prompt"], r["counterpart"]) for r in csv.DictReader(f)))
    tune, held_out = pairs[0:20:2], pairs[1:12:2]
    model = open_model("builtin:minilm-sd1")
    space = model.target.spaces[0]
    weights = {k: np.asarray(v, dtype=np.float64) for k, v in model.kv_weights().items()}
    encoded = model.encode([p for pair in held_out for p in pair], padded=True)
    keys, guides = np.concatenate(encoded[0::2]), np.concatenate(encoded[1::2])
    moved = {}
    for rule in ("eot_pad", "last_token"):
        spec = _parse(_spec(tune, model="builtin:minilm-sd1", implicit_rows=rule, erase_scale=0.1))
        pipeline = Pipeline.parse(PRESETS["uce"].pipeline)
        program = pipeline.apply(Lowering.for_pipeline(model, pipeline).lower(spec, PRESETS["uce"]))
        moved[rule] = progress(keys, guides, weights, _solution_deltas(program.solution, space, weights))
    assert moved["eot_pad"] > 1.5 * moved["last_token"] > 0, moved


def test_spec_round_trip_and_older_specs_keep_their_json():
    spec = _parse(_spec())
    assert spec.erase[0].implicit and spec.erase[0].triggers == TRIGGERS
    assert _parse(dump_spec(spec)) == spec
    plain = _parse(spec_text())
    assert "implicit" not in plain.canonical_json() and "triggers" not in plain.canonical_json()


def test_trigger_files_csv_with_counterparts_and_text(tmp_path):
    (tmp_path / "t.csv").write_text('prompt,counterpart,concept\n"a, b nude",a b clothed,nudity\nnaked,,nudity\n', encoding="utf-8")
    (tmp_path / "t.txt").write_text("# one a line\nnaked statue\n\nnaked\n", encoding="utf-8")
    text = _spec().replace("    triggers:\n", "    triggers:\n      - {file: t.csv}\n      - {file: t.txt}\n", 1)
    spec = _parse(text, tmp_path)
    assert spec.erase[0].triggers == (("a, b nude", "a b clothed"), ("naked", ""), ("naked statue", ""), *TRIGGERS)


def _entry(body: str) -> str:
    return f"erasec: 1\nname: x\nversion: 1.0.0\nerase:\n  - {body}\n"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("{concept: nudity, implicit: true}", "s.yaml:5: erase[0].implicit: an implicit entry needs triggers; add triggers: [prompts] or triggers: [{file: PATH}]"),
        ("{concept: nudity, triggers: [naked]}", "s.yaml:5: erase[0].triggers: applies to implicit entries; add implicit: true"),
        ("{concept: nudity, implicit: true, triggers: []}", "s.yaml:5: erase[0].triggers: the list is empty; give the prompts that carry the concept"),
        ("{concept: nudity, implicit: true, triggers: [' ']}", "s.yaml:5: erase[0].triggers[0]: a trigger prompt is empty"),
        ("{concept: nudity, implicit: true, triggers: [{prompt: nude, counterpart: nude}]}", "s.yaml:5: erase[0].triggers[0]: 'nude' is its own counterpart; give a safe prompt"),
        ("{concept: nudity, anchor: nude, implicit: true, triggers: [nude]}", "s.yaml:5: erase[0].triggers: 'nude' has no counterpart and is the anchor itself; give it a counterpart or remove it"),
        ("{concept: nudity, implicit: true, triggers: [{counterpart: x}]}", "s.yaml:5: erase[0].triggers[0]: missing key 'prompt' (or 'file' for a list of trigger prompts)"),
        ("{concept: nudity, implicit: 1, triggers: [x]}", "s.yaml:5: erase[0].implicit: expected true or false"),
    ],
)
def test_bad_implicit_entries(body: str, message: str) -> None:
    with pytest.raises(SpecError) as error:
        _parse(_entry(body))
    assert str(error.value).startswith(message), str(error.value)
    assert "\n" not in str(error.value)


def test_bad_trigger_files(tmp_path):
    (tmp_path / "empty.txt").write_text("# nothing yet\n\n", encoding="utf-8")
    (tmp_path / "empty.csv").write_text("prompt,counterpart\n", encoding="utf-8")
    (tmp_path / "cols.csv").write_text("text,safe\nnude,clothed\n", encoding="utf-8")
    cases = {
        "empty.txt": "s.yaml:5: erase[0].triggers[0].file: 'empty.txt' lists no trigger prompts",
        "empty.csv": "s.yaml:5: erase[0].triggers[0].file: 'empty.csv' lists no trigger prompts",
        "cols.csv": "s.yaml:5: erase[0].triggers[0].file: 'cols.csv' has no 'prompt' column (columns: 'text', 'safe')",
        "missing.txt": "s.yaml:5: erase[0].triggers[0].file: cannot read",
    }
    for name, message in cases.items():
        with pytest.raises(SpecError) as error:
            _parse(_entry(f"{{concept: nudity, implicit: true, triggers: [{{file: {name}}}]}}"), tmp_path)
        assert str(error.value).startswith(message), str(error.value)
    with pytest.raises(SpecError, match=r"s.yaml:6: options.implicit_rows: 'eot' is not one of 'last_token', "):
        _parse(_entry("{concept: nudity, implicit: true, triggers: [x]}") + "options: {implicit_rows: eot}\n")


def test_build_refuses_an_empty_trigger_file_in_one_line_and_writes_nothing(tmp_path, tiny_sd1_path):
    (tmp_path / "triggers.txt").write_text("\n", encoding="utf-8")
    spec = write_spec(tmp_path, spec_text(erase=["{concept: nudity, implicit: true, triggers: [{file: triggers.txt}]}"]))
    fails(["build", spec, "-o", tmp_path / "out.safetensors"], "erase[0].triggers[0].file: 'triggers.txt' lists no trigger prompts")
    assert not (tmp_path / "out.safetensors").exists()
