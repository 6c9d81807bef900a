"""Specs written by someone else (issue 16 items 4, 12, 13): a spec cannot read the host's files,
every bound holds, and any hostile text gives a ``Spec`` or one ``SpecError`` line naming the file."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cli_helpers import run
from erasec.compiler.errors import SpecError
from erasec.compiler.frontend.from_patch import spec_from_dict
from erasec.compiler.frontend.reader import load_spec, parse_spec
from erasec.ir.errors import ErasecError

METHODS = ("erasec", "uce", "uce-legacy", "time", "rece", "speed")
HEAD = "erasec: 1\nname: x\nversion: 1.0.0\n"
MINIMAL = HEAD + "erase:\n  - concept: Van Gogh\n"
FIX = "move it into the spec's folder, or pass --allow-outside-spec if you trust the spec"


def _write(folder: Path, text: str, name: str = "spec.yaml") -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def _error(path: Path, **options) -> str:
    with pytest.raises(SpecError) as info:
        load_spec(path, methods=METHODS, **options)
    message = str(info.value)
    assert "\n" not in message and message.startswith(str(path))
    return message


# -- paths the spec names stay in its folder -------------------------------------------------------


@pytest.mark.parametrize("target", ["/proc/self/environ", "/etc/passwd", "../../../../etc/passwd"])
def test_host_files_are_refused_naming_file_line_and_field(tmp_path, target):
    path = _write(tmp_path, HEAD + f"erase:\n  - file: {target}\n")
    assert _error(path) == f"{path}:5: erase[0].file: {target!r} is outside the spec's folder {str(tmp_path)!r}; {FIX}"
    path = _write(tmp_path, MINIMAL + f"preserve:\n  - file: {target}\n")
    assert _error(path).startswith(f"{path}:7: preserve[0].file: {target!r} is outside the spec's folder")


def test_a_symlink_out_of_the_folder_is_refused_and_one_inside_is_read(tmp_path):
    outside = tmp_path / "host.txt"
    outside.write_text("secret\n")
    folder = tmp_path / "specs"
    (folder / "lists").mkdir(parents=True)
    (folder / "lists" / "link.txt").symlink_to(outside)
    (folder / "lists" / "real.txt").write_text("Dali\n")
    (folder / "lists" / "inner.txt").symlink_to(folder / "lists" / "real.txt")
    path = _write(folder, HEAD + "erase:\n  - file: lists/link.txt\n")
    assert "erase[0].file: 'lists/link.txt' is outside the spec's folder" in _error(path)
    path = _write(folder, HEAD + "erase:\n  - file: lists/inner.txt\n")
    assert [e.concept for e in load_spec(path, methods=METHODS).erase] == ["Dali"]
    # the caller's opt-in reads it
    path = _write(folder, HEAD + "erase:\n  - file: lists/link.txt\n")
    assert [e.concept for e in load_spec(path, methods=METHODS, allow_outside=True).erase] == ["secret"]


def test_model_and_graph_are_confined_unless_the_caller_gives_the_model(tmp_path):
    path = _write(tmp_path, MINIMAL + "model: /models/sd15\n")
    assert _error(path) == f"{path}:6: model: '/models/sd15' is outside the spec's folder {str(tmp_path)!r}; {FIX}"
    assert load_spec(path, methods=METHODS, model="builtin:tiny-sd1").model == "builtin:tiny-sd1"
    assert load_spec(path, methods=METHODS, allow_outside=True).model == "/models/sd15"
    assert load_spec(_write(tmp_path, MINIMAL + "model: builtin:tiny-sd1\n"), methods=METHODS).model == "builtin:tiny-sd1"
    path = _write(tmp_path, MINIMAL + "output: {format: onnx, graph: ../unet.onnx}\n")
    assert "output.graph: '../unet.onnx' is outside the spec's folder" in _error(path)


def test_kernel_files_fifos_and_folders_are_not_read_even_when_allowed(tmp_path):
    path = _write(tmp_path, HEAD + "erase:\n  - file: /proc/self/environ\n")
    assert _error(path, allow_outside=True) == (
        f"{path}:5: erase[0].file: cannot read '/proc/self/environ' (a kernel or changing file: it reads other "
        "than its size says; copy it to a plain file)"
    )
    os.mkfifo(tmp_path / "fifo.txt")
    path = _write(tmp_path, HEAD + "erase:\n  - file: fifo.txt\n")
    assert _error(path).endswith(f"cannot read {str(tmp_path / 'fifo.txt')!r} (a FIFO, not a regular file)")
    assert _error(tmp_path / "fifo.txt") == f"{tmp_path / 'fifo.txt'}: cannot read the spec (a FIFO, not a regular file)"
    assert _error(tmp_path) == f"{tmp_path}: cannot read the spec (a folder, not a regular file)"


def test_binary_huge_and_patch_files(tmp_path):
    (tmp_path / "nul.txt").write_bytes(b"Dali\nMi\x00ro\n")
    path = _write(tmp_path, HEAD + "erase:\n  - file: nul.txt\n")
    assert _error(path).endswith("(holds a NUL byte on line 2 (binary, not text))")
    with open(tmp_path / "big.txt", "wb") as f:  # sparse: 17 MB without writing them
        f.truncate(17 * 1024 * 1024)
    path = _write(tmp_path, HEAD + "erase:\n  - file: big.txt\n")
    assert _error(path).endswith("(17,825,792 bytes; a spec reads text files of at most 16,777,216)")
    patch = tmp_path / "p.safetensors"
    header = b'{"__metadata__":{"erasec.name":"x"}}'
    patch.write_bytes(len(header).to_bytes(8, "little") + header)
    assert _error(patch) == (
        f"{patch}: this is a patch (a safetensors file), not a spec; give the spec's YAML file "
        "(erasec inspect shows what a patch holds)"
    )
    (tmp_path / "bin.yaml").write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe")
    assert _error(tmp_path / "bin.yaml") == f"{tmp_path / 'bin.yaml'}: cannot read the spec (not UTF-8 text: byte 0x89 on line 1)"


def test_a_spec_recorded_in_a_patch_reads_no_files(tmp_path, monkeypatch):
    """compose and retarget rebuild a patch's recorded spec: a crafted one must not read the host."""
    (tmp_path / "secret.txt").write_text("token\n")
    monkeypatch.chdir(tmp_path)
    data = {"erasec": 1, "name": "x", "version": "1.0.0", "model": "builtin:tiny-sd1", "erase": [{"file": "secret.txt"}]}
    with pytest.raises(SpecError) as info:
        spec_from_dict(data, source="p.safetensors:erasec.spec")
    assert str(info.value) == (
        "p.safetensors:erasec.spec:6: erase[0].file: a spec recorded in a patch names no files (its lists come "
        "expanded); remove the key"
    )
    data["erase"] = [{"concept": "Dali"}]
    data["output"] = {"format": "onnx", "graph": "/etc/passwd"}
    with pytest.raises(SpecError, match=r"output.graph: a spec recorded in a patch names no files"):
        spec_from_dict(data, source="p.safetensors:erasec.spec")


# -- bounds --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("output: {rank: 9223372036854775808}\n",
         "spec.yaml:6: output.rank: '9223372036854775808' is more than 65536, above any layer's full rank; use 'auto'"),
        ("output: {rank: 65537}\n", "spec.yaml:6: output.rank: '65537' is more than 65536, above any layer's full rank; use 'auto'"),
        ("options: {erase_scale: 1e308}\n", "spec.yaml:6: options.erase_scale: '1e308' is not in [1e-06, 1e+06]"),
        ("options: {erase_scale: 1e-300}\n", "spec.yaml:6: options.erase_scale: '1e-300' is not in [1e-06, 1e+06]"),
        ("options: {lambda: 1.0e+7}\n", "spec.yaml:6: options.lambda: '1.0e+7' is not in [0, 1e+06]"),
        ("options: {prior_scale: 1e999}\n", "spec.yaml:6: options.prior_scale: 1e999 is not a finite number"),
        ("options: {preserve_scale: .nan}\n", "spec.yaml:6: options.preserve_scale: .nan is not a finite number"),
        ("options: {lambda: -.inf}\n", "spec.yaml:6: options.lambda: -.inf is not a finite number"),
        # libyaml refuses the escape itself; PyYAML's loader reads it (the test below)
        ('preserve: ["a\\udc80b"]\n', "spec.yaml:6: YAML syntax error: found invalid Unicode character escape code"),
    ],
)  # fmt: skip
def test_bounds(extra, message):
    with pytest.raises(SpecError) as info:
        parse_spec(MINIMAL + extra, source="spec.yaml", base_dir=Path("/nonexistent"), methods=METHODS)
    assert str(info.value) == message


def test_a_lone_surrogate_in_a_concept_is_refused_by_the_python_loader_too(monkeypatch):
    import erasec.compiler.frontend.yaml_nodes as yaml_nodes

    monkeypatch.setattr(yaml_nodes, "_C_LOADER", None)  # PyYAML's own loader reads "\udc80" as U+DC80
    with pytest.raises(SpecError) as info:
        parse_spec(HEAD + 'erase:\n  - concept: "x\\udc80"\n', source="s.yaml", base_dir=Path("."), methods=METHODS)
    assert str(info.value) == "s.yaml:5: erase[0].concept: holds a lone surrogate U+DC80 at character 2, which is not text; remove it"
    with pytest.raises(SpecError) as info:  # surrogates already in the text (a patch's recorded spec)
        parse_spec(MINIMAL + "preserve: [\udc80]\n", source="s.yaml", base_dir=Path("."), methods=METHODS)
    assert str(info.value) == "s.yaml:6: holds a lone surrogate U+DC80, which is not text; remove it"


def test_an_alias_bomb_is_refused():
    """642 bytes naming 9**9 values through nested aliases: refused after a million, not expanded."""
    lines = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    lines += [f"a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 9)]
    text = "\n".join(lines) + "\n" + MINIMAL + "preserve: *a8\n"
    with pytest.raises(SpecError) as info:
        parse_spec(text, source="bomb.yaml", base_dir=Path("."), methods=METHODS)
    assert "the YAML expands to more than 1,000,000 values (aliases repeat what they name)" in str(info.value)
    merge = "b0: &b0 {k: v}\n" + "".join(
        f"b{i}: &b{i} {{" + ", ".join(f"<<: *b{i - 1}" if j == 0 else f"k{j}: *b{i - 1}" for j in range(9)) + "}\n"
        for i in range(1, 9)
    )
    with pytest.raises(SpecError, match=r"^bomb.yaml:\d+: the YAML expands to more than"):
        parse_spec(merge + MINIMAL + "options: *b8\n", source="bomb.yaml", base_dir=Path("."), methods=METHODS)


def test_huge_scalars_and_deep_nesting_are_refused_cleanly():
    with pytest.raises(SpecError) as info:  # libyaml reads 10 MB in well under a second
        parse_spec(MINIMAL + "preserve: [" + "x" * 10_000_000 + "]\n", source="s.yaml", base_dir=Path("."), methods=METHODS)
    assert str(info.value) == "s.yaml:6: a value of 10,000,000 characters; a spec value holds at most 65,536"
    for text in ("[" * 100_000 + "]" * 100_000, "- " * 5_000 + "x", "".join(" " * i + "a:\n" for i in range(3000))):
        with pytest.raises(SpecError, match=r"^s.yaml:"):  # libyaml's composer would crash on these
            parse_spec(text, source="s.yaml", base_dir=Path("."), methods=METHODS)


# -- any hostile spec: a Spec or one SpecError line starting with the file's name ----------------

_ODD_TEXT = st.sampled_from(
    ["\udc80", "\ud800x", "\x00", "\x85", "\u2028", "\ufeff", "'", '"', "\\", "{}", "{", "*a", "&a", "<<",
     "a: b", "- x", "\t", "\r\n", "é", "🎨", "x" * 70_000, "/proc/self/environ", "/etc/passwd", "../x.txt",
     "~/x.txt", "/dev/zero", ".", "lists", "lists/a.txt", "builtin:", "builtin:tiny-sd1", ""]
)  # fmt: skip
_NUMBER = st.sampled_from(
    [0, -1, 1, 2**63, -(2**63), 10**400, 65536, 65537, 1e308, -1e308, 1e-320, float("nan"), float("inf"), 0.5, 1e6, 1e7]
)
_SCALAR = st.none() | st.booleans() | _NUMBER | st.integers() | st.floats() | _ODD_TEXT | st.text(max_size=12)
_KEYS = st.sampled_from(
    ["erasec", "name", "version", "model", "family", "method", "erase", "preserve", "options", "output", "concept",
     "file", "anchor", "synonyms", "templates", "strength", "lambda", "erase_scale", "preserve_scale", "prior_scale",
     "on_conflict", "pipeline", "pooled", "format", "dtype", "rank", "link", "mode", "graph", "<<"]
) | _ODD_TEXT  # fmt: skip
_TREE = st.recursive(_SCALAR, lambda kids: st.lists(kids, max_size=4) | st.dictionaries(_KEYS, kids, max_size=5), max_leaves=25)


@st.composite
def _hostile_spec(draw: st.DrawFn) -> str:
    """A spec-shaped mapping with hostile values in its known keys, as YAML (or raw YAML tricks)."""
    spec: dict = {"erasec": 1, "name": "x", "version": "1.0.0", "erase": [{"concept": "Van Gogh"}]}
    for key in draw(st.lists(_KEYS, max_size=4)):
        spec[key] = draw(_TREE)
    entry = draw(st.dictionaries(_KEYS, _TREE, max_size=3))
    if entry:
        spec["erase"] = [entry, *spec["erase"]] if isinstance(spec.get("erase"), list) else spec["erase"]
    try:
        text = yaml.dump(spec, allow_unicode=draw(st.booleans()), default_flow_style=draw(st.booleans()))
    except (yaml.YAMLError, UnicodeEncodeError):
        text = str(spec)
    trick = draw(st.sampled_from(["", "&a ", "*a", "<<: *a\n", "!!python/object:os.system x\n", "[" * 300, "%YAML 1.1\n"]))
    return draw(st.sampled_from([text, trick + text, text + trick]))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(text=_hostile_spec())
def test_hostile_specs_parse_or_give_one_line_naming_the_file(text, tmp_path_factory):
    folder = tmp_path_factory.getbasetemp() / "hostile"
    (folder / "lists").mkdir(parents=True, exist_ok=True)
    (folder / "lists" / "a.txt").write_text("Dali\nMiro\n")
    path = folder / "h.yaml"
    path.write_bytes(text.encode("utf-8", "surrogatepass"))
    for read in (
        lambda: parse_spec(text, source="h.yaml", base_dir=folder, methods=METHODS),
        lambda: load_spec(path, methods=METHODS),
    ):
        try:
            spec = read()
        except SpecError as error:
            assert isinstance(error, ErasecError)
            message = str(error)
            assert len(message.splitlines()) == 1 and message.startswith(("h.yaml", str(path))), message
            assert "None" not in message.replace("'None'", ""), message
            continue
        for entry in spec.erase:  # what parses is text a tokenizer and a JSON record take
            entry.concept.encode("utf-8")
        spec.canonical_json().encode("utf-8")
        assert spec.model is None or spec.model.startswith("builtin:") or spec.model.startswith(str(folder))


# -- the commands: build and build-many refuse, the caller opts in; later errors name the spec line --


_BUILD = HEAD + "model: builtin:tiny-sd1\nmethod: uce\nerase:\n  - {concept: Van Gogh, anchor: art}\n  - {concept: Kelly McKernan}\n"


def test_build_and_build_many_confine_file_lists_unless_allowed(tmp_path):
    (tmp_path / "host.txt").write_text("Dali\n")
    specs = tmp_path / "specs"
    specs.mkdir()
    path = _write(specs, _BUILD + "preserve:\n  - file: ../host.txt\n")
    out = tmp_path / "out"
    result = run("build", path, "-o", out / "p.safetensors")
    assert result.exit_code == 2 and not out.exists()
    assert result.output == f"erasec: error: {path}:10: preserve[0].file: '../host.txt' is outside the spec's folder {str(specs)!r}; {FIX}\n"
    many = run("build-many", specs, "-o", out, "-j", "1")
    assert many.exit_code == 2 and "preserve[0].file: '../host.txt' is outside the spec's folder" in many.output
    assert run("build", path, "-o", out / "p.safetensors", "--allow-outside-spec").exit_code == 0
    assert run("build-many", specs, "-o", out / "many", "-j", "1", "--allow-outside-spec").exit_code == 0


def test_a_rank_the_layers_cannot_take_is_refused_naming_the_spec_line(tmp_path):
    """Above full rank a LoRA is bigger than the dense ΔW (issue 16: rank 100000 wrote 973 MB)."""
    path = _write(tmp_path, _BUILD + "output: {rank: 65536}\n")
    result = run("build", path, "-o", tmp_path / "p.safetensors")
    assert result.exit_code == 2 and not (tmp_path / "p.safetensors").exists()
    assert result.output == (
        f"erasec: error: {path}:9: output.rank: 65536 is above the full rank 32 of "
        "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k (32×32); use 'auto' or at most 32\n"
    )
    path = _write(tmp_path, _BUILD + "output:\n  format: peft\n  rank: 1\n")
    result = run("build", path, "-o", tmp_path / "p.safetensors")
    assert result.output == f"erasec: error: {path}:11: output.rank: 1 is below the solved rank 2; use 'auto' or a rank of at least 2\n"
