"""The spec: a YAML file saying what to erase, read into a frozen ``Spec`` (DESIGN.md §3).

The reader composes YAML's node tree instead of calling ``safe_load``: nodes carry line numbers, so
every error reads ``<file>:<line>: <key.path>: <what is wrong>[; <what to do>]``, and they show what
plain data hides — duplicate keys (YAML keeps the last one silently) and ``yes`` versus ``"yes"``.
Any text at all gives a ``Spec`` or a one-line ``SpecError``, never another exception.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import os
import re
import stat
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from erasec.compiler.errors import SpecError

FORMAT_VERSION = 1
DEFAULT_METHOD = "erasec"  # docs/results.md says why
BUILTIN_PREFIX = "builtin:"
OUTPUT_FORMATS = ("kohya", "peft", "checkpoint", "onnx")  # backends/kohya.py, peft.py, checkpoint.py, onnx/
ONNX_MODES = ("bake", "switchable", "adapter")  # backends/onnx/rewrite.py
OUTPUT_DTYPES = ("fp32", "fp16", "bf16")

_TOP_KEYS = ("erasec", "name", "version", "model", "family", "method", "erase", "preserve", "options", "output")
FAMILIES = ("sd1", "sd2", "sdxl")
_REQUIRED_KEYS = ("erasec", "name", "version", "erase")
_ERASE_KEYS = ("concept", "file", "anchor", "synonyms", "templates", "strength")
_OPTION_KEYS = ("lambda", "erase_scale", "preserve_scale", "prior_scale", "on_conflict", "pipeline", "pooled")
_OPTIONS_NOT_YET = ("rows", "preserve", "adversarial")  # DESIGN.md §3
ON_CONFLICT = ("warn", "error")
_OUTPUT_KEYS = ("format", "dtype", "rank", "link", "mode", "graph")

_NAME_RE = re.compile(r"[a-z0-9][a-z0-9._-]*")
# semver.org 2.0.0's regex, with [0-9] for \d (which would take any Unicode digit).
_SEMVER_RE = re.compile(
    r"(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)"
    r"(?:-((?:0|[1-9][0-9]*|[0-9]*[a-zA-Z-][0-9a-zA-Z-]*)"
    r"(?:\.(?:0|[1-9][0-9]*|[0-9]*[a-zA-Z-][0-9a-zA-Z-]*))*))?"
    r"(?:\+([0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*))?"
)
# PyYAML follows YAML 1.1, where a float needs a dot: plain `1e-4` is a string there. Accept it.
_PLAIN_FLOAT_RE = re.compile(r"[-+]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?")
_PLAIN_KEY_RE = re.compile(r"[A-Za-z0-9_-]+")
_LINE_BREAKS = frozenset("\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029")
_TAG = "tag:yaml.org,2002:"
# Plain scalars YAML reads as something else, often meant as text (`concept: yes`, `version: 1.0`).
_LOOKS_LIKE_TEXT = tuple(_TAG + kind for kind in ("int", "float", "bool", "timestamp"))


@dataclass(frozen=True, slots=True, kw_only=True)
class EraseEntry:
    """One concept to erase; a ``file:`` entry of the spec becomes one entry per listed concept."""

    concept: str
    anchor: str = ""  # "" is the empty prompt
    synonyms: tuple[str, ...] = ()
    templates: tuple[str, ...] = ()
    strength: float = 1.0


@dataclass(frozen=True, slots=True, kw_only=True)
class Options:
    """Solver options; ``None`` means the method's default. ``lam`` is ``lambda`` in the spec."""

    lam: float | None = None
    erase_scale: float | None = None
    preserve_scale: float | None = None
    prior_scale: float | None = None  # weight of each row of the method's preserve prior (0 = off)
    on_conflict: str | None = None  # warn | error: what check-conflicts does (None: the method's)
    pipeline: str | None = None
    pooled: bool = False  # SDXL: also edit the pooled path, add_embedding.linear_1 (docs/models.md)


@dataclass(frozen=True, slots=True, kw_only=True)
class OutputSpec:
    format: str = "kohya"
    dtype: str = "fp32"
    rank: int | str = "auto"
    link: bool = False  # carry the rows in the patch so that `erasec compose` can re-solve (docs/patch-format.md)
    mode: str = "bake"  # format onnx: bake | switchable | adapter (docs/onnx.md)
    graph: str | None = None  # format onnx: the UNet graph to patch (absolute); None = export the model's


@dataclass(frozen=True, slots=True, kw_only=True)
class Spec:
    """A checked spec: files expanded, defaults filled, the model path absolute (or ``builtin:``)."""

    source: str  # the spec's path as the caller gave it; not part of canonical()
    name: str
    version: str
    model: str | None
    method: str
    erase: tuple[EraseEntry, ...]
    preserve: tuple[str, ...]
    options: Options
    output: OutputSpec
    family: str | None = None  # overrides the family detected from the model files

    def canonical(self) -> dict:
        """Plain JSON-able data in a fixed key order, for hashing and for ``dump_spec``."""
        return {
            "erasec": FORMAT_VERSION,
            "name": self.name,
            "version": self.version,
            "model": self.model,
            **({"family": self.family} if self.family is not None else {}),  # absent when detected
            "method": self.method,
            "erase": [
                {
                    "concept": e.concept,
                    "anchor": e.anchor,
                    "synonyms": list(e.synonyms),
                    "templates": list(e.templates),
                    "strength": e.strength,
                }
                for e in self.erase
            ],
            "preserve": list(self.preserve),
            "options": {
                "lambda": self.options.lam,
                "erase_scale": self.options.erase_scale,
                "preserve_scale": self.options.preserve_scale,
                "pipeline": self.options.pipeline,
                **({"prior_scale": self.options.prior_scale} if self.options.prior_scale is not None else {}),
                **({"on_conflict": self.options.on_conflict} if self.options.on_conflict is not None else {}),
                **({"pooled": True} if self.options.pooled else {}),  # absent when off: older specs keep their JSON
            },
            "output": {
                "format": self.output.format,
                "dtype": self.output.dtype,
                "rank": self.output.rank,
                **({"link": True} if self.output.link else {}),  # absent when off: older specs keep their JSON
                **({"mode": self.output.mode} if self.output.format == "onnx" else {}),
                **({"graph": self.output.graph} if self.output.graph else {}),
            },
        }

    def canonical_json(self) -> str:
        """``canonical()`` as compact JSON with the erase entries and preserve prompts sorted: the
        order of a spec's lists does not change what it builds, so it does not change the record."""
        data = self.canonical()
        data["erase"] = sorted(data["erase"], key=lambda e: (e["concept"].casefold(), e["concept"]))
        data["preserve"] = sorted(data["preserve"], key=lambda p: (p.casefold(), p))
        return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)

    def with_model(self, model: str) -> Spec:
        """The CLI's ``--model``: a relative path is taken from the working directory."""
        problem = _model_problem(model)
        if problem:
            raise _spec_error(f"--model: {problem}")
        return dataclasses.replace(self, model=_resolve_model(model, Path.cwd()))


def load_spec(path: str | os.PathLike, *, methods: Collection[str]) -> Spec:
    """Read and check the spec at ``path``; ``file:`` lists are read relative to its folder."""
    source = str(path)
    try:
        text = _read_utf8(Path(path))
    except ValueError as e:
        raise _spec_error(f"{source}: cannot read the spec ({e})") from None
    return parse_spec(text, source=source, base_dir=Path(path).parent, methods=methods)


def parse_spec(text: str, *, source: str, base_dir: Path, methods: Collection[str]) -> Spec:
    """Check spec ``text``; ``source`` names it in errors, ``base_dir`` anchors relative paths."""
    reader = _Reader(source=str(source), base_dir=Path(base_dir), methods=tuple(sorted(methods)))
    try:
        return reader.spec(reader.compose(text))
    except RecursionError:
        raise _spec_error(f"{source}:1: the YAML is nested too deeply") from None


def dump_spec(spec: Spec) -> str:
    """YAML that reads back as an equal ``Spec`` (with the same source); files come expanded."""
    data = spec.canonical()
    if data["model"] is None:
        del data["model"]
    options = {k: v for k, v in data["options"].items() if v is not None}
    if options:
        data["options"] = options
    else:
        del data["options"]
    return yaml.dump(
        data, Dumper=_SpecDumper, sort_keys=False, allow_unicode=True, default_flow_style=False
    )


class _SpecDumper(yaml.SafeDumper):
    """``SafeDumper`` that double-quotes text holding NEL, LS or PS.

    With ``allow_unicode`` PyYAML 6 writes those raw inside single quotes and reads them back as
    line breaks (``'0\x850'`` becomes ``'0 0'``); double quotes escape them.
    """

    def represent_scalar(self, tag, value, style=None):
        if style is None and any(ch in value for ch in "\x85\u2028\u2029"):
            style = '"'
        return super().represent_scalar(tag, value, style)


def _spec_error(message: str) -> SpecError:
    """A ``SpecError`` whose message is one line whatever text the input quoted."""
    return SpecError("".join(repr(ch)[1:-1] if ch in _LINE_BREAKS else ch for ch in message))


def _q(text: str) -> str:
    """Quote a value for a message, shortened and with control characters escaped."""
    return repr(text) if len(text) <= 60 else repr(text[:57]) + "..."


def _key_path(path: str, key: str) -> str:
    key = key if _PLAIN_KEY_RE.fullmatch(key) else _q(key)
    return f"{path}.{key}" if path else key


def _did_you_mean(word: str, choices: Collection[str]) -> str:
    for choice in choices:
        if choice.casefold() == word.casefold():
            return f"; did you mean {choice!r}?"
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def _kind(node: Node) -> str:
    """The YAML type of a node in words: ``int``, ``list``, ``mapping``..."""
    if not node.tag.startswith(_TAG):
        return f"a value tagged {_q(node.tag)}"
    kind = node.tag[len(_TAG) :]
    return {"seq": "list", "map": "mapping"}.get(kind, kind)


def _read_utf8(path: Path) -> str:
    """The text of a file; ``ValueError`` with the reason when it is not readable UTF-8 text."""
    try:
        if not stat.S_ISREG(path.stat().st_mode):
            raise ValueError("not a regular file")
        data = path.read_bytes()
    except OSError as e:
        raise ValueError(e.strerror or type(e).__name__) from None
    try:
        return data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise ValueError(f"not UTF-8 text: byte 0x{data[e.start]:02x} on line {line}") from None


def _model_problem(model: str) -> str:
    if not model:
        return "is empty; give a model folder or builtin:NAME"
    if model == BUILTIN_PREFIX:
        return f"{_q(model)} names no built-in model; write builtin:NAME"
    return ""


def _resolve_model(model: str, base_dir: Path) -> str:
    if model.startswith(BUILTIN_PREFIX):
        return model
    return os.path.abspath(os.path.join(base_dir, os.path.expanduser(model)))


@dataclass(frozen=True, slots=True)
class _Reader:
    """Walks the node tree of one spec; every method raises a located ``SpecError`` on a mistake."""

    source: str
    base_dir: Path
    methods: tuple[str, ...]

    def error(self, where: Node | int, path: str, what: str) -> SpecError:
        line = where if isinstance(where, int) else where.start_mark.line + 1
        return _spec_error(f"{self.source}:{line}: {path + ': ' if path else ''}{what}")

    def compose(self, text: str) -> MappingNode:
        try:
            root = yaml.compose(text, Loader=yaml.SafeLoader)
        except yaml.MarkedYAMLError as e:
            mark = e.problem_mark or e.context_mark
            problem = e.problem or e.context or "invalid YAML"
            raise self.error(mark.line + 1 if mark else 1, "", f"YAML syntax error: {problem}") from None
        except yaml.reader.ReaderError as e:
            line = text.count("\n", 0, max(e.position, 0)) + 1
            code = ord(e.character) if isinstance(e.character, str) else int(e.character)
            char = f"U+{code:04X}"
            raise self.error(line, "", f"YAML does not allow the character {char}; remove it") from None
        except yaml.YAMLError as e:
            raise self.error(1, "", f"YAML syntax error: {type(e).__name__}") from None
        if root is None or (root.tag == _TAG + "null" and not root.value):
            raise self.error(1, "", "the spec is empty; it needs erasec, name, version and erase")
        return root

    # -- structure ---------------------------------------------------------------------------------

    def pairs(self, node: MappingNode, path: str, inside: tuple[Node, ...]) -> list[tuple[Node, Node]]:
        """The key/value nodes of a mapping, merge keys (``<<``) applied, duplicate keys refused."""
        explicit: dict[str, tuple[Node, Node]] = {}
        merged: list[tuple[Node, Node]] = []
        for key, value in node.value:
            if key.tag == _TAG + "merge":
                sources = value.value if isinstance(value, SequenceNode) else [value]
                for src in sources:
                    if not isinstance(src, MappingNode) or src.tag != _TAG + "map":
                        what = f"a merge key (<<) takes a mapping or a list of them, got {_kind(src)}"
                        raise self.error(src, path, what)
                    if any(src is outer for outer in inside):
                        raise self.error(src, path, "a merge key (<<) includes its own mapping")
                    merged += self.pairs(src, path, (*inside, src))
                continue
            if not isinstance(key, ScalarNode):
                raise self.error(key, path, f"a key must be text, got {_kind(key)}")
            if key.value in explicit:
                first = explicit[key.value][0].start_mark.line + 1
                what = f"duplicate key (first on line {first})"
                raise self.error(key, _key_path(path, key.value), what)
            explicit[key.value] = (key, value)
        names = set(explicit)
        rest = []
        for key, value in merged:
            if key.value not in names:
                names.add(key.value)
                rest.append((key, value))
        return [*explicit.values(), *rest]

    def mapping(self, node: Node, path: str, known: tuple[str, ...]) -> dict[str, tuple[Node, Node]]:
        """Key → (key node, value node) of a mapping whose keys are all in ``known``."""
        if not isinstance(node, MappingNode) or node.tag != _TAG + "map":
            raise self.error(node, path or "top level", f"expected a mapping, got {_kind(node)}")
        items = {}
        for key, value in self.pairs(node, path, (node,)):
            if key.value not in known:
                hint = _did_you_mean(key.value, known) or "; expected one of " + ", ".join(known)
                raise self.error(key, _key_path(path, key.value), f"unknown key{hint}")
            items[key.value] = (key, value)
        return items

    def sequence(self, node: Node, path: str) -> list[Node]:
        if not isinstance(node, SequenceNode) or node.tag != _TAG + "seq":
            raise self.error(node, path, f"expected a list, got {_kind(node)}")
        return list(node.value)

    # -- scalars -----------------------------------------------------------------------------------

    def string(self, node: Node, path: str, *, optional: bool = False) -> str:
        if isinstance(node, ScalarNode) and node.tag == _TAG + "str":
            return node.value
        what = f"expected a string, got {_kind(node)}"
        if isinstance(node, ScalarNode) and node.tag in _LOOKS_LIKE_TEXT:
            what += f"; write it in quotes ({json.dumps(node.value)}) if you mean the text"
        elif node.tag == _TAG + "null" and optional:
            what += "; remove the key to use the default"
        raise self.error(node, path, what)

    def integer(self, node: Node, path: str) -> int:
        if isinstance(node, ScalarNode) and node.tag == _TAG + "int":
            try:
                return yaml.constructor.SafeConstructor().construct_yaml_int(node)
            except (ValueError, OverflowError):
                raise self.error(node, path, f"{_q(node.value)} is not a valid integer") from None
        raise self.error(node, path, f"expected an integer, got {_kind(node)}")

    def number(self, node: Node, path: str) -> float:
        """A finite float from an int, a float, or a plain ``1e-4`` (a string to YAML 1.1)."""
        if isinstance(node, ScalarNode) and node.tag == _TAG + "int":
            value: object = self.integer(node, path)
        elif isinstance(node, ScalarNode) and node.tag == _TAG + "float":
            try:
                value = yaml.constructor.SafeConstructor().construct_yaml_float(node)
            except (ValueError, OverflowError):
                raise self.error(node, path, f"{_q(node.value)} is not a valid number") from None
        elif (
            isinstance(node, ScalarNode)
            and node.tag == _TAG + "str"
            and node.style is None
            and _PLAIN_FLOAT_RE.fullmatch(node.value)
        ):
            value = node.value
        else:
            raise self.error(node, path, f"expected a number, got {_kind(node)}")
        try:
            result = float(value)  # type: ignore[arg-type]
        except OverflowError:
            result = math.inf
        if not math.isfinite(result):
            raise self.error(node, path, f"{node.value} is not a finite number")
        return result

    def choice(self, node: Node, path: str, choices: tuple[str, ...]) -> str:
        value = self.string(node, path, optional=True)
        if value not in choices:
            allowed = ", ".join(_q(c) for c in choices) if choices else "(none)"
            what = f"{_q(value)} is not one of {allowed}{_did_you_mean(value, choices)}"
            raise self.error(node, path, what)
        return value

    def text_list(self, items: dict, key: str, path: str) -> list[tuple[str, Node]]:
        """Stripped strings of an optional list key, each with its node."""
        if key not in items:
            return []
        path = f"{path}.{key}"
        nodes = self.sequence(items[key][1], path)
        return [(self.string(n, f"{path}[{i}]").strip(), n) for i, n in enumerate(nodes)]

    def list_file(self, key: Node, value: Node, path: str) -> tuple[str, list[tuple[str, int]]]:
        """The path as written and the (entry, line number) pairs of a ``file:`` list."""
        written = self.string(value, path)
        if not written.strip():
            raise self.error(value, path, "is empty; give the path of a text file, one entry a line")
        full = self.base_dir / written
        try:
            text = _read_utf8(full)
        except ValueError as e:
            raise self.error(key, path, f"cannot read {str(full)!r} ({e})") from None
        entries = []
        for number, line in enumerate(text.split("\n"), 1):
            line = line.strip()
            if line and not line.startswith("#"):
                entries.append((line, number))
        return written, entries

    # -- the spec ----------------------------------------------------------------------------------

    def spec(self, root: Node) -> Spec:
        top = self.mapping(root, "", _TOP_KEYS)
        if "erasec" in top:  # first: a spec of another version may differ in any other key
            node = top["erasec"][1]
            if self.integer(node, "erasec") != FORMAT_VERSION:
                what = f"format version {node.value} is not known; this erasec reads version 1"
                raise self.error(node, "erasec", what)
        for key in _REQUIRED_KEYS:
            if key not in top:
                raise self.error(root, key, "missing required key")
        name_node, semver_node = top["name"][1], top["version"][1]
        name = self.string(name_node, "name")
        if not _NAME_RE.fullmatch(name):
            what = f"{_q(name)} is not a valid name; use a-z, 0-9, '.', '_' and '-', "
            what += "starting with a-z or 0-9"
            raise self.error(name_node, "name", what)
        version = self.string(semver_node, "version")
        if not _SEMVER_RE.fullmatch(version):
            what = f"{_q(version)} is not a semantic version; write MAJOR.MINOR.PATCH, e.g. '1.0.0'"
            raise self.error(semver_node, "version", what)
        return Spec(
            source=self.source,
            name=name,
            version=version,
            model=self.model(top["model"][1]) if "model" in top else None,
            method=self.method(top.get("method"), root),
            erase=self.erase(top["erase"][1]),
            preserve=self.preserve(top["preserve"][1]) if "preserve" in top else (),
            options=self.options(top["options"][1]) if "options" in top else Options(),
            output=self.output(top["output"][1]) if "output" in top else OutputSpec(),
            family=self.choice(top["family"][1], "family", FAMILIES) if "family" in top else None,
        )

    def model(self, node: Node) -> str:
        model = self.string(node, "model", optional=True)
        problem = _model_problem(model)
        if problem:
            raise self.error(node, "model", problem)
        return _resolve_model(model, self.base_dir)

    def method(self, item: tuple[Node, Node] | None, root: Node) -> str:
        if item is not None:
            return self.choice(item[1], "method", self.methods)
        if DEFAULT_METHOD not in self.methods:
            allowed = ", ".join(_q(m) for m in self.methods)
            what = f"missing, and the default {DEFAULT_METHOD!r} is not available; set one of {allowed}"
            raise self.error(root, "method", what)
        return DEFAULT_METHOD

    def erase(self, node: Node) -> tuple[EraseEntry, ...]:
        items = self.sequence(node, "erase")
        if not items:
            raise self.error(node, "erase", "the list is empty; add a concept to erase")
        entries: list[EraseEntry] = []
        seen: dict[str, str] = {}  # casefolded concept -> where it was first given
        for index, item in enumerate(items):
            path = f"erase[{index}]"
            fields = self.mapping(item, path, _ERASE_KEYS)
            concepts = self.entry_concepts(item, fields, path)
            anchor = ""
            if "anchor" in fields:
                anchor = self.string(fields["anchor"][1], f"{path}.anchor").strip()
            shared = dict(
                anchor=anchor,
                synonyms=self.synonyms(fields, path, concepts[0][0]),
                templates=self.templates(fields, path),
                strength=self.strength(fields, path),
            )
            for concept, where, where_path, detail in concepts:
                if anchor.casefold() == concept.casefold():
                    if detail:
                        what = f"{_q(concept)}{detail} is the same as the anchor"
                    else:
                        where, where_path = fields["anchor"][1], f"{path}.anchor"
                        what = f"{_q(anchor)} is the concept itself"
                    fix = 'pick another anchor, or "" for the empty prompt'
                    raise self.error(where, where_path, f"{what}; {fix}")
                folded = concept.casefold()
                if folded in seen:
                    what = f"{_q(concept)}{detail} repeats {seen[folded]}; remove one of them"
                    raise self.error(where, where_path, what)
                seen[folded] = where_path + detail
                entries.append(EraseEntry(concept=concept, **shared))
        return tuple(entries)

    def entry_concepts(self, item: Node, fields: dict, path: str) -> list[tuple[str, Node, str, str]]:
        """(concept, node, key path, detail) of an erase entry: one, or one per line of its file."""
        if "concept" in fields and "file" in fields:
            raise self.error(item, path, "give either 'concept' or 'file', not both")
        if "file" in fields:
            if "synonyms" in fields:
                what = "not allowed in a file entry; give the concept an entry of its own for synonyms"
                raise self.error(fields["synonyms"][0], f"{path}.synonyms", what)
            key, value = fields["file"]
            written, listed = self.list_file(key, value, f"{path}.file")
            if not listed:
                raise self.error(key, f"{path}.file", f"{_q(written)} lists no concepts")
            return [(c, key, f"{path}.file", f" ({written} line {n})") for c, n in listed]
        if "concept" in fields:
            value = fields["concept"][1]
            concept = self.string(value, f"{path}.concept").strip()
            if not concept:
                raise self.error(value, f"{path}.concept", "is empty")
            return [(concept, value, f"{path}.concept", "")]
        raise self.error(item, path, "missing key 'concept' (or 'file' for a list of concepts)")

    def synonyms(self, fields: dict, path: str, concept: str) -> tuple[str, ...]:
        seen = {concept.casefold(): f"{path}.concept"}
        out = []
        for index, (synonym, node) in enumerate(self.text_list(fields, "synonyms", path)):
            where = f"{path}.synonyms[{index}]"
            if not synonym:
                raise self.error(node, where, "is empty")
            if synonym.casefold() in seen:
                what = f"{_q(synonym)} repeats {seen[synonym.casefold()]}; remove it"
                raise self.error(node, where, what)
            seen[synonym.casefold()] = where
            out.append(synonym)
        return tuple(out)

    def templates(self, fields: dict, path: str) -> tuple[str, ...]:
        out: list[str] = []
        for index, (template, node) in enumerate(self.text_list(fields, "templates", path)):
            where = f"{path}.templates[{index}]"
            if template.count("{}") != 1 or any(c in "{}" for c in template.replace("{}", "", 1)):
                what = f"{_q(template)} must contain '{{}}' once, where the concept goes, "
                what += "and no other braces"
                raise self.error(node, where, what)
            if template in out:
                what = f"{_q(template)} repeats {path}.templates[{out.index(template)}]; remove it"
                raise self.error(node, where, what)
            out.append(template)
        return tuple(out)

    def strength(self, fields: dict, path: str) -> float:
        if "strength" not in fields:
            return 1.0
        node = fields["strength"][1]
        strength = self.number(node, f"{path}.strength")
        if not 0 < strength <= 1:
            raise self.error(node, f"{path}.strength", f"{node.value} is not in (0, 1]")
        return strength

    def preserve(self, node: Node) -> tuple[str, ...]:
        """Strings and ``{file: PATH}`` lists; stripped, empties dropped, first of duplicates kept.

        A preserved concept that is also erased stays: a later pass decides what that means.
        """
        out: dict[str, str] = {}  # casefolded -> as first written
        for index, item in enumerate(self.sequence(node, "preserve")):
            path = f"preserve[{index}]"
            if isinstance(item, MappingNode):
                fields = self.mapping(item, path, ("file",))
                if "file" not in fields:
                    raise self.error(item, path, "missing key 'file'")
                names = [name for name, _ in self.list_file(*fields["file"], f"{path}.file")[1]]
            else:
                names = [self.string(item, path).strip()]
            for name in names:
                if name:
                    out.setdefault(name.casefold(), name)
        return tuple(out.values())

    def options(self, node: Node) -> Options:
        fields = self.mapping(node, "options", _OPTION_KEYS + _OPTIONS_NOT_YET)
        for key, (key_node, _) in fields.items():
            if key in _OPTIONS_NOT_YET:
                raise self.error(key_node, f"options.{key}", "not available in erasec 0.1")
        pipeline = None
        if "pipeline" in fields:
            value = fields["pipeline"][1]
            pipeline = self.string(value, "options.pipeline", optional=True).strip()
            if not pipeline:
                what = "is empty; remove the key to use the method's pipeline"
                raise self.error(value, "options.pipeline", what)
        return Options(
            lam=self.option_number(fields, "lambda", allow_zero=True),
            erase_scale=self.option_number(fields, "erase_scale", allow_zero=False),
            preserve_scale=self.option_number(fields, "preserve_scale", allow_zero=False),
            prior_scale=self.option_number(fields, "prior_scale", allow_zero=True),
            on_conflict=self.choice(fields["on_conflict"][1], "options.on_conflict", ON_CONFLICT)
            if "on_conflict" in fields
            else None,
            pipeline=pipeline,
            pooled=self.flag(fields, "pooled", "options.pooled"),
        )

    def flag(self, fields: dict, key: str, where: str) -> bool:
        if key not in fields:
            return False
        node = fields[key][1]
        if not (isinstance(node, ScalarNode) and node.tag == _TAG + "bool"):
            raise self.error(node, where, f"expected true or false, got {_kind(node)}")
        return yaml.constructor.SafeConstructor().construct_yaml_bool(node)

    def option_number(self, fields: dict, key: str, *, allow_zero: bool) -> float | None:
        if key not in fields:
            return None
        node = fields[key][1]
        number = self.number(node, f"options.{key}")
        if number < 0 or (number == 0 and not allow_zero):
            what = f"{node.value} is not {'>=' if allow_zero else '>'} 0"
            raise self.error(node, f"options.{key}", what)
        return number

    def output(self, node: Node) -> OutputSpec:
        fields = self.mapping(node, "output", _OUTPUT_KEYS)
        out = OutputSpec()
        if "format" in fields:
            format_ = self.choice(fields["format"][1], "output.format", OUTPUT_FORMATS)
            out = dataclasses.replace(out, format=format_)
        if "dtype" in fields:
            dtype = self.choice(fields["dtype"][1], "output.dtype", OUTPUT_DTYPES)
            out = dataclasses.replace(out, dtype=dtype)
        if "rank" in fields:
            out = dataclasses.replace(out, rank=self.rank(fields["rank"][1]))
        if "link" in fields:
            node = fields["link"][1]
            if not (isinstance(node, ScalarNode) and node.tag == _TAG + "bool"):
                raise self.error(node, "output.link", f"expected true or false, got {_kind(node)}")
            out = dataclasses.replace(out, link=yaml.constructor.SafeConstructor().construct_yaml_bool(node))
        for key in ("mode", "graph"):
            if key in fields and out.format != "onnx":
                raise self.error(fields[key][1], f"output.{key}", "applies to format onnx only")
        if "mode" in fields:
            out = dataclasses.replace(out, mode=self.choice(fields["mode"][1], "output.mode", ONNX_MODES))
        if "graph" in fields:
            written = os.path.expanduser(self.string(fields["graph"][1], "output.graph"))
            graph = os.path.abspath(os.path.join(self.base_dir, written))
            out = dataclasses.replace(out, graph=graph)
        return out

    def rank(self, node: Node) -> int | str:
        if isinstance(node, ScalarNode) and node.tag == _TAG + "str":
            if node.value != "auto":
                what = f"{_q(node.value)} is not 'auto' or an integer >= 1"
                raise self.error(node, "output.rank", what)
            return "auto"
        if not (isinstance(node, ScalarNode) and node.tag == _TAG + "int"):
            raise self.error(node, "output.rank", f"expected 'auto' or an integer, got {_kind(node)}")
        rank = self.integer(node, "output.rank")
        if rank < 1:
            raise self.error(node, "output.rank", f"{node.value} is not >= 1")
        return rank
