"""The spec reader: values, defaults, files, exact one-line errors, and fuzzing that finds no crash."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from erasec.compiler.errors import SpecError
from erasec.compiler.frontend.spec import (
    EraseEntry,
    Options,
    OutputSpec,
    Spec,
    dump_spec,
)
from erasec.compiler.frontend.reader import load_spec, parse_spec

METHODS = ("erasec", "uce", "uce-legacy", "time", "rece", "speed")

FULL = """\
erasec: 1
name: no-van-gogh
version: 1.0.0
model: ./models/sd15
method: time
erase:
  - concept: " Van Gogh "
    anchor: art
    synonyms: [Vincent van Gogh]
    templates: ["a painting in the style of {}"]
    strength: 1
  - {file: lists/erase.txt, anchor: art, templates: ["{} style"], strength: 0.5}
preserve: [Claude Monet, Pablo Picasso, {file: lists/artists.txt}, "  ", claude monet]
options: {lambda: 0.5, erase_scale: 1.0, preserve_scale: 1e-1, pipeline: "canonicalize,solve"}
output: {format: kohya, dtype: fp16, rank: 8}
"""

MINIMAL = """\
erasec: 1
name: x
version: 0.1.0
erase:
  - concept: Van Gogh
"""


def _parse(text: str, base_dir: Path = Path("/nonexistent"), methods=METHODS, **options) -> Spec:
    return parse_spec(textwrap.dedent(text), source="spec.yaml", base_dir=base_dir, methods=methods, **options)


def _error(text: str, base_dir: Path = Path("/nonexistent")) -> str:
    with pytest.raises(SpecError) as info:
        _parse(text, base_dir)
    message = str(info.value)
    assert "\n" not in message
    return message


@pytest.fixture
def spec_dir(tmp_path: Path) -> Path:
    (tmp_path / "lists").mkdir()
    (tmp_path / "lists" / "erase.txt").write_text("# artists\nDali\n\n  Miro  \n", encoding="utf-8")
    (tmp_path / "lists" / "artists.txt").write_text("\ufeffMonet\nPablo Picasso\n# x\nRembrandt\n")
    (tmp_path / "spec.yaml").write_text(FULL, encoding="utf-8")
    return tmp_path


# -- valid specs -----------------------------------------------------------------------------------


def test_full_example(spec_dir: Path) -> None:
    spec = load_spec(spec_dir / "spec.yaml", methods=METHODS)
    art = dict(anchor="art")
    assert spec == Spec(
        source=str(spec_dir / "spec.yaml"),
        name="no-van-gogh",
        version="1.0.0",
        model=str(spec_dir / "models" / "sd15"),
        method="time",
        erase=(
            EraseEntry(
                concept="Van Gogh",
                synonyms=("Vincent van Gogh",),
                templates=("a painting in the style of {}",),
                strength=1.0,
                **art,
            ),
            EraseEntry(concept="Dali", templates=("{} style",), strength=0.5, **art),
            EraseEntry(concept="Miro", templates=("{} style",), strength=0.5, **art),
        ),
        preserve=("Claude Monet", "Pablo Picasso", "Monet", "Rembrandt"),
        options=Options(lam=0.5, erase_scale=1.0, preserve_scale=0.1, pipeline="canonicalize,solve"),
        output=OutputSpec(format="kohya", dtype="fp16", rank=8),
    )
    assert isinstance(spec.erase[0].strength, float)


def test_defaults() -> None:
    spec = _parse(MINIMAL)
    assert spec.model is None
    assert spec.method == "erasec"
    assert spec.erase == (EraseEntry(concept="Van Gogh", anchor="", synonyms=(), templates=(), strength=1.0),)
    assert spec.preserve == ()
    assert spec.options == Options(lam=None, erase_scale=None, preserve_scale=None, pipeline=None)
    assert spec.output == OutputSpec(format="kohya", dtype="fp32", rank="auto")


def test_model_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert _parse(MINIMAL + "model: builtin:tiny-sd1\n", tmp_path).model == "builtin:tiny-sd1"
    outside = _parse(MINIMAL + "model: ../m/./sd\n", tmp_path / "a", allow_outside=True)
    assert outside.model == str(tmp_path / "m" / "sd")
    assert _parse(MINIMAL + "model: /abs/sd\n", tmp_path, allow_outside=True).model == "/abs/sd"
    assert _parse(MINIMAL + "model: ./m/../sd\n", tmp_path).model == str(tmp_path / "sd")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "spec.yaml").write_text(MINIMAL + "model: sd\n")
    spec = load_spec("spec.yaml", methods=METHODS)
    assert spec.source == "spec.yaml"
    assert spec.model == str(tmp_path / "sd")
    assert spec.with_model("other").model == str(tmp_path / "other")
    assert spec.with_model("builtin:x").model == "builtin:x"
    with pytest.raises(SpecError, match=r"^--model: is empty; give a model folder or builtin:NAME$"):
        spec.with_model("")


def test_canonical(spec_dir: Path) -> None:
    spec = load_spec(spec_dir / "spec.yaml", methods=METHODS)
    canonical = spec.canonical()
    assert list(canonical) == [
        "erasec", "name", "version", "model", "method", "erase", "preserve", "options", "output"
    ]  # fmt: skip
    assert canonical["options"] == {
        "lambda": 0.5, "erase_scale": 1.0, "preserve_scale": 0.1, "pipeline": "canonicalize,solve"
    }  # fmt: skip
    assert "source" not in canonical
    # the JSON record sorts the erase entries and preserve prompts: their order changes nothing
    recorded = json.loads(spec.canonical_json())
    assert recorded["erase"] == sorted(canonical["erase"], key=lambda e: e["concept"].casefold())
    assert recorded["preserve"] == sorted(canonical["preserve"], key=str.casefold)
    assert {k: v for k, v in recorded.items() if k not in ("erase", "preserve")} == {
        k: v for k, v in canonical.items() if k not in ("erase", "preserve")
    }
    moved = parse_spec(dump_spec(spec), source="elsewhere.yaml", base_dir=Path("/"), methods=METHODS)
    assert moved.canonical_json() == spec.canonical_json()


def test_dump_round_trip(spec_dir: Path) -> None:
    spec = load_spec(spec_dir / "spec.yaml", methods=METHODS)
    again = parse_spec(dump_spec(spec), source=spec.source, base_dir=Path("/"), methods=METHODS)
    assert again == spec
    assert "file" not in dump_spec(spec)


def test_yaml_features() -> None:
    spec = _parse(
        """\
        erasec: 1
        name: x
        version: 1.0.0
        erase:
          - &common {concept: A, anchor: art, strength: 0.5}
          - <<: *common
            concept: B
          - {concept: C, templates: &t ["{} art"]}
          - {concept: D, templates: *t}
        options: {lambda: 0, erase_scale: 2, preserve_scale: 1.0e-3}
        output: {rank: auto}
        """
    )
    assert [(e.concept, e.anchor, e.strength) for e in spec.erase[:2]] == [("A", "art", 0.5), ("B", "art", 0.5)]
    assert spec.erase[3].templates == ("{} art",)
    assert spec.options == Options(lam=0.0, erase_scale=2.0, preserve_scale=0.001)
    assert spec.output.rank == "auto"


def test_preserve_keeps_erased_concepts() -> None:
    spec = _parse(MINIMAL + "preserve: [van gogh, Monet, MONET, ' Dali ']\n")
    assert spec.preserve == ("van gogh", "Monet", "Dali")


# -- errors ----------------------------------------------------------------------------------------

BAD = [
    # the document
    ("", "spec.yaml:1: the spec is empty; it needs erasec, name, version and erase"),
    ("# only a comment\n", "spec.yaml:1: the spec is empty; it needs erasec, name, version and erase"),
    ("- a\n- b\n", "spec.yaml:1: top level: expected a mapping, got list"),
    ("erasec: 1\nname: [x\n", "spec.yaml:3: YAML syntax error: did not find expected ',' or ']'"),
    ("erasec: 1\nname: x\n  bad: indent\n", "spec.yaml:3: YAML syntax error: mapping values are not allowed in this context"),
    ("erasec: 1\nname: \x07\n", "spec.yaml:2: YAML does not allow the character U+0007; remove it"),
    ("erasec: 1\n---\nname: x\n", "spec.yaml:2: YAML syntax error: but found another document"),
    ("[" * 1000, "spec.yaml:1: the YAML is nested too deeply"),
    # top-level keys
    (MINIMAL.replace("name: x\n", ""), "spec.yaml:1: name: missing required key"),
    (MINIMAL.replace("erasec: 1\n", ""), "spec.yaml:1: erasec: missing required key"),
    (MINIMAL + "methdo: uce\n", "spec.yaml:6: methdo: unknown key; did you mean 'method'?"),
    (MINIMAL + "family: sd4\n", "spec.yaml:6: family: 'sd4' is not one of 'sd1', 'sd2', 'sdxl', 'flux', 'chroma', 'sd3', 'wan'; did you mean 'sd3'?"),
    (
        MINIMAL + "zzz: 1\n",
        "spec.yaml:6: zzz: unknown key; expected one of erasec, name, version, model, family, text_encoders, "
        "tokenizers, method, erase, preserve, options, output",
    ),
    (MINIMAL + "name: y\n", "spec.yaml:6: name: duplicate key (first on line 2)"),
    (MINIMAL + "[a]: 1\n", "spec.yaml:6: a key must be text, got list"),
    ("erasec: 2\n", "spec.yaml:1: erasec: format version 2 is not known; this erasec reads version 1"),
    ("erasec: '1'\n", "spec.yaml:1: erasec: expected an integer, got str"),
    ("erasec: true\n", "spec.yaml:1: erasec: expected an integer, got bool"),
    (MINIMAL.replace("name: x", "name: No Van Gogh"),
     "spec.yaml:2: name: 'No Van Gogh' is not a valid name; use a-z, 0-9, '.', '_' and '-', starting with a-z or 0-9"),
    (MINIMAL.replace("name: x", "name: 123"),
     "spec.yaml:2: name: expected a string, got int; write it in quotes (\"123\") if you mean the text"),
    (MINIMAL.replace("version: 0.1.0", "version: 1.0"),
     "spec.yaml:3: version: expected a string, got float; write it in quotes (\"1.0\") if you mean the text"),
    (MINIMAL.replace("version: 0.1.0", "version: 01.0.0"),
     "spec.yaml:3: version: '01.0.0' is not a semantic version; write MAJOR.MINOR.PATCH, e.g. '1.0.0'"),
    (MINIMAL + "model: ''\n", "spec.yaml:6: model: is empty; give a model folder or builtin:NAME"),
    (MINIMAL + "model:\n", "spec.yaml:6: model: expected a string, got null; remove the key to use the default"),
    (MINIMAL + "model: 'builtin:'\n", "spec.yaml:6: model: 'builtin:' names no built-in model; write builtin:NAME"),
    (MINIMAL + "method: ucee\n",
     "spec.yaml:6: method: 'ucee' is not one of 'erasec', 'rece', 'speed', 'time', 'uce', 'uce-legacy'; did you mean 'uce'?"),
    (MINIMAL + "method: UCE\n",
     "spec.yaml:6: method: 'UCE' is not one of 'erasec', 'rece', 'speed', 'time', 'uce', 'uce-legacy'; did you mean 'uce'?"),
    # erase
    (MINIMAL.replace("\n  - concept: Van Gogh\n", " []\n"), "spec.yaml:4: erase: the list is empty; add a concept to erase"),
    (MINIMAL.replace("\n  - concept: Van Gogh\n", " Van Gogh\n"), "spec.yaml:4: erase: expected a list, got str"),
    (MINIMAL + "  - Monet\n", "spec.yaml:6: erase[1]: expected a mapping, got str"),
    (MINIMAL + "  - concept: 123\n",
     "spec.yaml:6: erase[1].concept: expected a string, got int; write it in quotes (\"123\") if you mean the text"),
    (MINIMAL + "  - concept: yes\n",
     "spec.yaml:6: erase[1].concept: expected a string, got bool; write it in quotes (\"yes\") if you mean the text"),
    (MINIMAL + "  - concept:\n", "spec.yaml:6: erase[1].concept: expected a string, got null"),
    (MINIMAL + "  - concept: '  '\n", "spec.yaml:6: erase[1].concept: is empty"),
    (MINIMAL + "  - anchor: art\n", "spec.yaml:6: erase[1]: missing key 'concept' (or 'file' for a list of concepts)"),
    (MINIMAL + "  - {concept: a, file: b}\n", "spec.yaml:6: erase[1]: give either 'concept' or 'file', not both"),
    (MINIMAL + "  - {concept: a, concpt: b}\n", "spec.yaml:6: erase[1].concpt: unknown key; did you mean 'concept'?"),
    (MINIMAL + "  - {concept: a, concept: b}\n", "spec.yaml:6: erase[1].concept: duplicate key (first on line 6)"),
    (MINIMAL + "  - concept: VAN GOGH \n",
     "spec.yaml:6: erase[1].concept: 'VAN GOGH' repeats erase[0].concept; remove one of them"),
    (MINIMAL + "    anchor: ' van gogh'\n",
     "spec.yaml:6: erase[0].anchor: 'van gogh' is the concept itself; pick another anchor, or \"\" for the empty prompt"),
    (MINIMAL + "    anchor: 0\n",
     "spec.yaml:6: erase[0].anchor: expected a string, got int; write it in quotes (\"0\") if you mean the text"),
    (MINIMAL + "    synonyms: Vincent\n", "spec.yaml:6: erase[0].synonyms: expected a list, got str"),
    (MINIMAL + "    synonyms: [a, '']\n", "spec.yaml:6: erase[0].synonyms[1]: is empty"),
    (MINIMAL + "    synonyms: [a, A]\n", "spec.yaml:6: erase[0].synonyms[1]: 'A' repeats erase[0].synonyms[0]; remove it"),
    (MINIMAL + "    synonyms: [van gogh]\n",
     "spec.yaml:6: erase[0].synonyms[0]: 'van gogh' repeats erase[0].concept; remove it"),
    (MINIMAL + "    templates: ['a {} {}']\n",
     "spec.yaml:6: erase[0].templates[0]: 'a {} {}' must contain '{}' once, where the concept goes, and no other braces"),
    (MINIMAL + "    templates: ['{}', 'a {0}']\n",
     "spec.yaml:6: erase[0].templates[1]: 'a {0}' must contain '{}' once, where the concept goes, and no other braces"),
    (MINIMAL + "    templates: ['a painting']\n",
     "spec.yaml:6: erase[0].templates[0]: 'a painting' must contain '{}' once, where the concept goes, and no other braces"),
    (MINIMAL + "    templates: ['{}}']\n",
     "spec.yaml:6: erase[0].templates[0]: '{}}' must contain '{}' once, where the concept goes, and no other braces"),
    (MINIMAL + "    templates: ['{} x', '{} x']\n",
     "spec.yaml:6: erase[0].templates[1]: '{} x' repeats erase[0].templates[0]; remove it"),
    (MINIMAL + "    strength: -1\n", "spec.yaml:6: erase[0].strength: -1 is not in (0, 1]"),
    (MINIMAL + "    strength: 0\n", "spec.yaml:6: erase[0].strength: 0 is not in (0, 1]"),
    (MINIMAL + "    strength: 1.5\n", "spec.yaml:6: erase[0].strength: 1.5 is not in (0, 1]"),
    (MINIMAL + "    strength: true\n", "spec.yaml:6: erase[0].strength: expected a number, got bool"),
    (MINIMAL + "    strength: '0.5'\n", "spec.yaml:6: erase[0].strength: expected a number, got str"),
    (MINIMAL + "    strength: .nan\n", "spec.yaml:6: erase[0].strength: .nan is not a finite number"),
    (MINIMAL + "    strength: 1e999\n", "spec.yaml:6: erase[0].strength: 1e999 is not a finite number"),
    (MINIMAL + "    strength: -.inf\n", "spec.yaml:6: erase[0].strength: -.inf is not a finite number"),
    # preserve
    (MINIMAL + "preserve: Monet\n", "spec.yaml:6: preserve: expected a list, got str"),
    (MINIMAL + "preserve: [Monet, 1.5]\n",
     "spec.yaml:6: preserve[1]: expected a string, got float; write it in quotes (\"1.5\") if you mean the text"),
    (MINIMAL + "preserve: [{fil: a.txt}]\n", "spec.yaml:6: preserve[0].fil: unknown key; did you mean 'file'?"),
    (MINIMAL + "preserve: [{}]\n", "spec.yaml:6: preserve[0]: missing key 'file'"),
    (MINIMAL + "preserve:\n- {file: ''}\n", "spec.yaml:7: preserve[0].file: is empty; give the path of a text file, one entry a line"),
    # options
    (MINIMAL + "options:\n  adversarial: {rounds: 2}\n", "spec.yaml:7: options.adversarial: not available in erasec 0.1"),
    (MINIMAL + "options: {rows: last_token}\n", "spec.yaml:6: options.rows: not available in erasec 0.1"),
    (MINIMAL + "options: {pooled: 1}\n", "spec.yaml:6: options.pooled: expected true or false, got int"),
    (MINIMAL + "options: {on_conflict: x}\n", "spec.yaml:6: options.on_conflict: 'x' is not one of 'warn', 'error'"),
    (MINIMAL + "options: {on_conflict: 1}\n", "spec.yaml:6: options.on_conflict: expected a string, got int; write it in quotes (\"1\") if you mean the text"),
    (MINIMAL + "options: {prior_scale: -1}\n", "spec.yaml:6: options.prior_scale: -1 is not >= 0"),
    (MINIMAL + "options: {preserve: hard}\n", "spec.yaml:6: options.preserve: not available in erasec 0.1"),
    (MINIMAL + "options: {lamda: 1}\n", "spec.yaml:6: options.lamda: unknown key; did you mean 'lambda'?"),
    (MINIMAL + "options: {lambda: -0.5}\n", "spec.yaml:6: options.lambda: -0.5 is not >= 0"),
    (MINIMAL + "options: {lambda: yes}\n", "spec.yaml:6: options.lambda: expected a number, got bool"),
    (MINIMAL + "options: {erase_scale: 0}\n", "spec.yaml:6: options.erase_scale: 0 is not > 0"),
    (MINIMAL + "options: {preserve_scale: -1e-3}\n", "spec.yaml:6: options.preserve_scale: -1e-3 is not > 0"),
    (MINIMAL + "options: {pipeline: 5}\n",
     "spec.yaml:6: options.pipeline: expected a string, got int; write it in quotes (\"5\") if you mean the text"),
    (MINIMAL + "options: {pipeline: ' '}\n",
     "spec.yaml:6: options.pipeline: is empty; remove the key to use the method's pipeline"),
    (MINIMAL + "options: [lambda]\n", "spec.yaml:6: options: expected a mapping, got list"),
    # output
    (MINIMAL + "output: {format: tflite}\n", "spec.yaml:6: output.format: 'tflite' is not one of 'kohya', 'peft', 'checkpoint', 'onnx'"),
    (MINIMAL + "output: {dtype: fp61}\n",
     "spec.yaml:6: output.dtype: 'fp61' is not one of 'fp32', 'fp16', 'bf16'; did you mean 'fp16'?"),
    (MINIMAL + "output: {rank: 0}\n", "spec.yaml:6: output.rank: 0 is not >= 1"),
    (MINIMAL + "output: {rank: big}\n", "spec.yaml:6: output.rank: 'big' is not 'auto' or an integer >= 1"),
    (MINIMAL + "output: {rank: 2.0}\n", "spec.yaml:6: output.rank: expected 'auto' or an integer, got float"),
    (MINIMAL + "output: {rank: true}\n", "spec.yaml:6: output.rank: expected 'auto' or an integer, got bool"),
    (MINIMAL + "output: {link: 1}\n", "spec.yaml:6: output.link: expected true or false, got int"),
    (MINIMAL + "output: {max_eror: 1}\n", "spec.yaml:6: output.max_eror: unknown key; expected one of format, dtype, rank, link, mode, graph"),
    (MINIMAL + "output: {fromat: kohya}\n", "spec.yaml:6: output.fromat: unknown key; did you mean 'format'?"),
    # YAML oddities
    (MINIMAL + "    <<: 3\n", "spec.yaml:6: erase[0]: a merge key (<<) takes a mapping or a list of them, got int"),
    (MINIMAL + "    strength: !!float x\n", "spec.yaml:6: erase[0].strength: 'x' is not a valid number"),
    (MINIMAL + "    anchor: !custom art\n", "spec.yaml:6: erase[0].anchor: expected a string, got a value tagged '!custom'"),
    (MINIMAL + "    anchor: 2001-13-45\n",
     "spec.yaml:6: erase[0].anchor: expected a string, got timestamp; write it in quotes (\"2001-13-45\") if you mean the text"),
]


@pytest.mark.parametrize(("text", "message"), BAD, ids=[m.split(": ", 1)[1][:50] for _, m in BAD])
def test_bad_spec(text: str, message: str) -> None:
    assert _error(text) == message


def test_self_merging_mapping() -> None:
    message = _error(MINIMAL.replace("  - concept: Van Gogh\n", "  - &a {concept: x, <<: *a}\n"))
    assert message == "spec.yaml:5: erase[0]: a merge key (<<) includes its own mapping"


def test_file_entries(spec_dir: Path) -> None:
    lists = spec_dir / "lists"
    (lists / "dup.txt").write_text("Dali\nx\ndali\n")
    (lists / "empty.txt").write_text("# nothing\n\n")
    (lists / "art.txt").write_text("Dali\nArt\n")
    (lists / "latin1.txt").write_bytes(b"ok\nMir\xf3\n")
    missing = lists / "missing.txt"
    cases = [
        ("  - {file: lists/missing.txt}\n",
         f"spec.yaml:6: erase[1].file: cannot read {str(missing)!r} (No such file or directory)"),
        ("  - {file: lists}\n", f"spec.yaml:6: erase[1].file: cannot read {str(lists)!r} (a folder, not a regular file)"),
        ("  - {file: lists/latin1.txt}\n",
         f"spec.yaml:6: erase[1].file: cannot read {str(lists / 'latin1.txt')!r} (not UTF-8 text: byte 0xf3 on line 2)"),
        ("  - {file: lists/empty.txt}\n", "spec.yaml:6: erase[1].file: 'lists/empty.txt' lists no concepts"),
        ("  - {file: lists/dup.txt}\n",
         "spec.yaml:6: erase[1].file: 'dali' (lists/dup.txt line 3) repeats erase[1].file (lists/dup.txt line 1); "
         "remove one of them"),
        ("  - {file: lists/erase.txt}\n  - concept: miro\n",
         "spec.yaml:7: erase[2].concept: 'miro' repeats erase[1].file (lists/erase.txt line 4); remove one of them"),
        ("  - {file: lists/art.txt, anchor: art}\n",
         "spec.yaml:6: erase[1].file: 'Art' (lists/art.txt line 2) is the same as the anchor; pick another anchor, "
         "or \"\" for the empty prompt"),
        ("  - {file: lists/erase.txt, synonyms: [a]}\n",
         "spec.yaml:6: erase[1].synonyms: not allowed in a file entry; give the concept an entry of its own for synonyms"),
        ("  - file: 3\n",
         "spec.yaml:6: erase[1].file: expected a string, got int; write it in quotes (\"3\") if you mean the text"),
        ("preserve:\n  - Monet\n  - file: lists/missing.txt\n",
         f"spec.yaml:8: preserve[1].file: cannot read {str(missing)!r} (No such file or directory)"),
    ]
    for extra, message in cases:
        assert _error(MINIMAL + extra, spec_dir) == message


def test_unreadable_spec_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SpecError) as info:
        load_spec("nope.yaml", methods=METHODS)
    assert str(info.value) == "nope.yaml: cannot read the spec (No such file or directory)"
    (tmp_path / "bad.yaml").write_bytes(b"erasec: 1\nname: \xff\n")
    with pytest.raises(SpecError) as info:
        load_spec(Path("bad.yaml"), methods=METHODS)
    assert str(info.value) == "bad.yaml: cannot read the spec (not UTF-8 text: byte 0xff on line 2)"
    with pytest.raises(SpecError) as info:
        load_spec(".", methods=METHODS)
    assert str(info.value) == ".: cannot read the spec (a folder, not a regular file)"


def test_default_method_unavailable() -> None:
    with pytest.raises(SpecError) as info:
        _parse(MINIMAL, methods=("time", "rece"))
    assert str(info.value) == (
        "spec.yaml:1: method: missing, and the default 'erasec' is not available; set one of 'rece', 'time'"
    )


# -- fuzzing ---------------------------------------------------------------------------------------

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

_YAML_PIECES = st.sampled_from(
    [
        "erasec", "name", "version", "model", "method", "erase", "preserve", "options", "output",
        "concept", "anchor", "synonyms", "templates", "strength", "file", "lambda", "rank", "dtype",
        "format", "pipeline", "adversarial", ": ", ":", "- ", "\n", "\n  ", "\n    ", "[", "]", "{", "}",
        ", ", "&a ", "*a", "<<: ", "!!str ", "!!int ", "!!float ", "!!binary ", "!!timestamp ", "!x ",
        "? ", "'", '"', "#", "---\n", "...\n", "1", "1.0.0", "0.5", "-1", ".nan", "1e-4", "yes", "~",
        "null", "builtin:x", "{}", "lists/a.txt", "Van Gogh", "\t", "|\n  ", ">\n  ", "%YAML 1.1\n", "\\",
        "\x00", "\ufeff", "2001-13-45", "0x1F", "1" * 5000,
    ]
)  # fmt: skip
_YAMLISH = st.lists(_YAML_PIECES | st.text(max_size=5), max_size=40).map("".join)


@FUZZ
@given(text=_YAMLISH | st.text(max_size=200))
def test_fuzz_text(text: str) -> None:
    try:
        parse_spec(text, source="f.yaml", base_dir=Path("/nonexistent"), methods=METHODS)
    except SpecError as e:
        assert str(e).startswith("f.yaml:")
        assert len(str(e).splitlines()) == 1


@FUZZ
@given(data=st.binary(max_size=300) | _YAMLISH.map(lambda s: s.encode("utf-8", "surrogatepass")))
def test_fuzz_bytes(data: bytes, tmp_path_factory: pytest.TempPathFactory) -> None:
    path = tmp_path_factory.getbasetemp() / "fuzz.yaml"
    path.write_bytes(data)
    try:
        load_spec(path, methods=METHODS)
    except SpecError as e:
        assert len(str(e).splitlines()) == 1


_VALID = {
    "erasec": 1,
    "name": "no-van-gogh",
    "version": "1.0.0",
    "model": "builtin:tiny-sd1",
    "method": "uce",
    "erase": [
        {
            "concept": "Van Gogh",
            "anchor": "art",
            "synonyms": ["Vincent van Gogh"],
            "templates": ["a painting in the style of {}"],
            "strength": 1.0,
        },
        {"file": "lists/erase.txt", "anchor": "art", "strength": 0.5},
    ],
    "preserve": ["Claude Monet", {"file": "lists/artists.txt"}],
    "options": {"lambda": 0.5, "erase_scale": 1.0, "preserve_scale": 0.1, "pipeline": "canonicalize,solve"},
    "output": {"format": "kohya", "dtype": "fp32", "rank": "auto"},
}

_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=6,
)


def _places(node: object) -> list[tuple[dict | list, object]]:
    """Every (container, key) of a JSON tree; key None stands for a new item."""
    if isinstance(node, dict):
        keys: list = list(node)
    elif isinstance(node, list):
        keys = list(range(len(node)))
    else:
        return []
    places = [(node, None)] + [(node, k) for k in keys]
    for k in keys:
        places += _places(node[k])
    return places


@st.composite
def _mutated(draw: st.DrawFn) -> object:
    """The valid spec with a few edits at random places: delete, retype, add a key, nest."""
    spec = json.loads(json.dumps(_VALID))
    for _ in range(draw(st.integers(1, 3))):
        node, key = draw(st.sampled_from(_places(spec)))
        if key is None:
            if isinstance(node, dict):
                node[draw(st.text(max_size=8) | st.sampled_from([*_VALID, "concept", "file", "lambda"]))] = draw(_JSON)
            else:
                node.append(draw(_JSON))
            continue
        action = draw(st.sampled_from(["delete", "replace", "nest"]))
        if action == "delete":
            del node[key]
        elif action == "replace":
            node[key] = draw(_JSON.filter(lambda v, old=node[key]: type(v) is not type(old)))
        else:
            node[key] = draw(st.sampled_from([[node[key]], {"concept": node[key]}, {"file": node[key]}]))
    return spec


@FUZZ
@given(spec=_mutated())
def test_fuzz_mutated_spec(spec: object, tmp_path_factory: pytest.TempPathFactory) -> None:
    base = _fuzz_dir(tmp_path_factory)
    text = yaml.safe_dump(spec, allow_unicode=True)
    try:
        result = parse_spec(text, source="m.yaml", base_dir=base, methods=METHODS)
    except SpecError as e:
        assert str(e).startswith("m.yaml:")
        assert len(str(e).splitlines()) == 1
    else:
        assert isinstance(result, Spec)


def _fuzz_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.getbasetemp() / "fuzz-spec"
    if not base.exists():
        (base / "lists").mkdir(parents=True)
        (base / "lists" / "erase.txt").write_text("Dali\nMiro\n")
        (base / "lists" / "artists.txt").write_text("Monet\nPicasso\n")
    return base


# Text a spec may carry: any code point but surrogates, including ones YAML must escape.
_TEXT = (
    st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=12)
    | st.text(st.sampled_from("ab é#:-{}'\"\t\n\u2028"), max_size=120)
).map(str.strip)
_TEMPLATE = st.tuples(st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="{}"), max_size=8),
                      st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="{}"), max_size=8)
                      ).map(lambda ab: (ab[0] + "{}" + ab[1]).strip())  # fmt: skip
_POSITIVE = st.floats(min_value=1e-6, max_value=1e6, allow_nan=False, allow_infinity=False)


@st.composite
def _valid_spec_text(draw: st.DrawFn) -> str:
    concepts = draw(st.lists(_TEXT.filter(bool), min_size=1, max_size=4, unique_by=str.casefold))
    erase = []
    for concept in concepts:
        entry: dict[str, object] = {"concept": concept}
        anchor = draw(st.none() | _TEXT)
        if anchor is not None and anchor.casefold() != concept.casefold():
            entry["anchor"] = anchor
        synonyms = draw(st.lists(_TEXT.filter(bool), max_size=2, unique_by=str.casefold))
        synonyms = [s for s in synonyms if s.casefold() != concept.casefold()]
        if synonyms:
            entry["synonyms"] = synonyms
        if draw(st.booleans()):
            entry["templates"] = draw(st.lists(_TEMPLATE, max_size=2, unique=True))
        if draw(st.booleans()):
            entry["strength"] = draw(st.floats(min_value=1e-9, max_value=1.0) | st.just(1))
        erase.append(entry)
    spec: dict[str, object] = {
        "erasec": 1,
        "name": draw(st.from_regex(r"[a-z0-9][a-z0-9._-]{0,10}", fullmatch=True)),
        "version": draw(st.sampled_from(["0.0.0", "1.2.3", "1.0.0-rc.1+build.5", "10.20.30-alpha"])),
        "erase": erase,
    }
    if draw(st.booleans()):
        spec["model"] = draw(st.sampled_from(["builtin:tiny-sd1", "models/sd", "/abs/model", "./a/../b"]))
    if draw(st.booleans()):
        spec["method"] = draw(st.sampled_from(METHODS))
    if draw(st.booleans()):
        spec["preserve"] = draw(st.lists(_TEXT, max_size=4))
    options = draw(
        st.fixed_dictionaries(
            {},
            optional={
                "lambda": st.floats(min_value=0, max_value=1e6) | st.integers(0, 10),
                "erase_scale": _POSITIVE,
                "preserve_scale": _POSITIVE,
                "pipeline": _TEXT.filter(bool),
            },
        )
    )
    if options:
        spec["options"] = options
    output = draw(
        st.fixed_dictionaries(
            {},
            optional={
                "format": st.just("kohya"),
                "dtype": st.sampled_from(["fp32", "fp16", "bf16"]),
                "rank": st.just("auto") | st.integers(1, 65_536),
                "link": st.booleans(),
            },
        )
    )
    if output:
        spec["output"] = output
    return yaml.safe_dump(spec, allow_unicode=draw(st.booleans()))


@FUZZ
@given(text=_valid_spec_text())
def test_round_trip(text: str) -> None:
    spec = parse_spec(text, source="r.yaml", base_dir=Path("/base"), methods=METHODS, allow_outside=True)
    dumped = dump_spec(spec)
    # a dumped spec names its model by absolute path: read elsewhere, it is outside that folder
    again = parse_spec(dumped, source="r.yaml", base_dir=Path("/elsewhere"), methods=METHODS, allow_outside=True)
    assert again == spec
    assert dump_spec(parse_spec(dumped, source="r.yaml", base_dir=Path("/"), methods=METHODS, allow_outside=True)) == dumped


def test_fuzz_seed_is_valid(tmp_path_factory: pytest.TempPathFactory) -> None:
    """The mutation fuzzer starts from a spec that parses, or it would only ever test the first error."""
    spec = parse_spec(yaml.safe_dump(_VALID), source="m.yaml", base_dir=_fuzz_dir(tmp_path_factory), methods=METHODS)
    assert [e.concept for e in spec.erase] == ["Van Gogh", "Dali", "Miro"]
    assert spec.preserve == ("Claude Monet", "Monet", "Picasso")


def test_options_rece_is_checked_where_it_is_written(tmp_path):
    """options.rece: a recipe of the rece pass's, bounded rounds and attack_lambda, a retain set;
    its recipe names are the pass's own (spec reading does not import the pass and its scipy)."""
    from erasec.compiler.frontend.parts import RECE_RECIPES
    from erasec.passes.rece import RECIPES

    assert RECE_RECIPES == tuple(RECIPES)
    head = "erasec: 1\nname: r\nversion: 1.0.0\nmodel: builtin:tiny-sd1\nmethod: rece\nerase: [{concept: Van Gogh}]\n"
    cases = {
        "options: {rece: {recipe: artsit}}": "spec.yaml:7: options.rece.recipe: 'artsit' is not one of",
        "options: {rece: {rounds: 99}}": "spec.yaml:7: options.rece.rounds: 99 is not in [0, 20]",
        "options: {rece: {attack_lambda: 0}}": "spec.yaml:7: options.rece.attack_lambda: '0' is not in",
        "options: {rece: {retain: all}}": "spec.yaml:7: options.rece.retain: 'all' is not one of",
        "options: {rece: {}}": "spec.yaml:7: options.rece: is empty",
        "options: {rece: {epochs: 3}}": "spec.yaml:7: options.rece.epochs: unknown key",
    }
    for body, message in cases.items():
        path = tmp_path / "spec.yaml"
        path.write_text(head + body + "\n")
        with pytest.raises(SpecError) as caught:
            load_spec(path, methods=METHODS + ("rece-joint",))
        assert str(caught.value).startswith(str(tmp_path / message)), str(caught.value)
    path.write_text(head + "options: {rece: {recipe: artist, rounds: 2}}\n")
    spec = load_spec(path, methods=METHODS + ("rece-joint",))
    assert spec.canonical()["options"]["rece"] == {"recipe": "artist", "rounds": 2}


def test_options_rece_needs_a_rece_pass(tmp_path):
    from erasec.compiler.frontend.methods import pipeline_text

    path = tmp_path / "spec.yaml"
    path.write_text("erasec: 1\nname: r\nversion: 1.0.0\nmodel: builtin:tiny-sd1\nmethod: uce\n"
                    "erase: [{concept: Van Gogh}]\noptions: {rece: {recipe: artist}}\n")
    spec = load_spec(path, methods=METHODS + ("rece-joint",))
    with pytest.raises(SpecError, match=r"spec.yaml:7: options.rece: the pipeline has no rece pass; use method: rece"):
        pipeline_text(spec)
    import dataclasses

    assert "rece{recipe=artist" in pipeline_text(dataclasses.replace(spec, method="rece"))
