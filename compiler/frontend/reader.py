"""Reading a spec's node tree into a ``Spec`` (DESIGN.md §3): keys, values, ``file:`` lists, the model.

``SpecReader`` adds to ``yaml_nodes.NodeReader`` what the spec's keys mean: required and known keys,
names and semantic versions, erase entries (one per line of a ``file:`` list, no repeats, never the
anchor itself), preserve prompts; ``parts.SpecPartsReader`` below it reads options and output
settings and the paths the spec names (confined to the spec's folder). Any text at all gives a ``Spec`` or a one-line ``SpecError``, never another exception.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

from yaml.nodes import MappingNode, Node

from .spec import (
    BUILTIN_PREFIX,
    DEFAULT_METHOD,
    FAMILIES,
    FORMAT_VERSION,
    TEXT_ENCODER_SLOTS,
    EraseEntry,
    Options,
    OutputSpec,
    Spec,
    model_problem,
    resolve_model,
)
from .parts import SpecPartsReader
from .text_files import decode_text, is_safetensors, read_regular
from .yaml_nodes import quote, spec_error

_TOP_KEYS = ("erasec", "name", "version", "model", "family", "text_encoders", "tokenizers", "method", "erase",
             "preserve", "options", "output")
_REQUIRED_KEYS = ("erasec", "name", "version", "erase")
_ERASE_KEYS = ("concept", "file", "anchor", "synonyms", "templates", "strength", "implicit", "triggers")

_NAME_RE = re.compile(r"[a-z0-9][a-z0-9._-]*")
# semver.org 2.0.0's regex, with [0-9] for \d (which would take any Unicode digit).
_SEMVER_RE = re.compile(
    r"(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)"
    r"(?:-((?:0|[1-9][0-9]*|[0-9]*[a-zA-Z-][0-9a-zA-Z-]*)"
    r"(?:\.(?:0|[1-9][0-9]*|[0-9]*[a-zA-Z-][0-9a-zA-Z-]*))*))?"
    r"(?:\+([0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*))?"
)


@dataclass(frozen=True, slots=True)
class SpecReader(SpecPartsReader):
    """Walks the node tree of one spec; every method raises a located ``SpecError`` on a mistake."""

    def read(self, text: str) -> Spec:
        """The ``Spec`` that YAML ``text`` says; ``RecursionError`` when it nests too deeply."""
        empty = "the spec is empty; it needs erasec, name, version and erase"
        spec = self.spec(self.compose(text, if_empty=empty))
        return dataclasses.replace(spec, lines=dict(self.lines))

    # -- the spec ----------------------------------------------------------------------------------

    def spec(self, root: Node) -> Spec:
        top = self.mapping(root, "", _TOP_KEYS)
        for key, (_, value) in top.items():
            self.mark(key, value)
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
            what = f"{quote(name)} is not a valid name; use a-z, 0-9, '.', '_' and '-', "
            what += "starting with a-z or 0-9"
            raise self.error(name_node, "name", what)
        version = self.string(semver_node, "version")
        if not _SEMVER_RE.fullmatch(version):
            what = f"{quote(version)} is not a semantic version; write MAJOR.MINOR.PATCH, e.g. '1.0.0'"
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
            text_encoders=self.slot_paths(top["text_encoders"][1], "text_encoders") if "text_encoders" in top else (),
            tokenizers=self.slot_paths(top["tokenizers"][1], "tokenizers") if "tokenizers" in top else (),
        )

    def model(self, node: Node) -> str:
        model = self.string(node, "model", optional=True)
        problem = model_problem(model)
        if problem:
            raise self.error(node, "model", problem)
        if self.base_dir is None:  # a recorded spec: the caller gives the model
            return resolve_model(model, Path.cwd())
        if self.check_model and not model.startswith(BUILTIN_PREFIX):
            self.path(node, "model", model)
        return resolve_model(model, self.base_dir)

    def slot_paths(self, node: Node, key: str) -> tuple[tuple[str, str], ...]:
        """``text_encoders`` / ``tokenizers``: slot → path, each confined to the spec's folder as
        ``model:`` is (a recorded spec's absolute paths are taken as they are)."""
        fields = self.mapping(node, key, TEXT_ENCODER_SLOTS)
        out = []
        for slot, (_, value) in sorted(fields.items()):
            where = f"{key}.{slot}"
            self.mark(where, value)
            written = self.string(value, where)
            if not written:
                raise self.error(value, where, "is empty; give the file's path")
            if self.base_dir is None:
                out.append((slot, os.path.abspath(os.path.expanduser(written))))
            else:
                out.append((slot, self.path(value, where, written)))
        return tuple(out)

    def method(self, item: tuple[Node, Node] | None, root: Node) -> str:
        if item is not None:
            return self.choice(item[1], "method", self.methods)
        if DEFAULT_METHOD not in self.methods:
            allowed = ", ".join(quote(m) for m in self.methods)
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
                **self.implicit(item, fields, path, anchor),
            )
            for concept, where, where_path, detail in concepts:
                if anchor.casefold() == concept.casefold():
                    if detail:
                        what = f"{quote(concept)}{detail} is the same as the anchor"
                    else:
                        where, where_path = fields["anchor"][1], f"{path}.anchor"
                        what = f"{quote(anchor)} is the concept itself"
                    fix = 'pick another anchor, or "" for the empty prompt'
                    raise self.error(where, where_path, f"{what}; {fix}")
                folded = concept.casefold()
                if folded in seen:
                    what = f"{quote(concept)}{detail} repeats {seen[folded]}; remove one of them"
                    raise self.error(where, where_path, what)
                seen[folded] = where_path + detail
                self.mark(f"erase[{len(entries)}]", where)  # Spec.erase's index: file entries expanded
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
                raise self.error(key, f"{path}.file", f"{quote(written, 1024)} lists no concepts")
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
                what = f"{quote(synonym)} repeats {seen[synonym.casefold()]}; remove it"
                raise self.error(node, where, what)
            seen[synonym.casefold()] = where
            out.append(synonym)
        return tuple(out)

    def templates(self, fields: dict, path: str) -> tuple[str, ...]:
        out: list[str] = []
        for index, (template, node) in enumerate(self.text_list(fields, "templates", path)):
            where = f"{path}.templates[{index}]"
            if template.count("{}") != 1 or any(c in "{}" for c in template.replace("{}", "", 1)):
                what = f"{quote(template)} must contain '{{}}' once, where the concept goes, "
                what += "and no other braces"
                raise self.error(node, where, what)
            if template in out:
                what = f"{quote(template)} repeats {path}.templates[{out.index(template)}]; remove it"
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


def load_spec(
    path: str | os.PathLike,
    *,
    methods: Collection[str],
    model: str | None = None,
    allow_outside: bool = False,
) -> Spec:
    """Read and check the spec at ``path``; ``file:`` lists are read relative to its folder.

    ``model`` is the caller's ``--model`` (it replaces the spec's, whose path is then not checked);
    ``allow_outside`` lets the spec name files outside its folder (``--allow-outside-spec``).
    """
    source = str(path)
    try:
        data = read_regular(Path(path))
        if is_safetensors(data):
            what = "this is a patch (a safetensors file), not a spec; give the spec's YAML file"
            raise spec_error(f"{source}: {what} (erasec inspect shows what a patch holds)")
        text = decode_text(data)
    except ValueError as e:
        raise spec_error(f"{source}: cannot read the spec ({e})") from None
    spec = parse_spec(
        text, source=source, base_dir=Path(path).parent, methods=methods, allow_outside=allow_outside,
        check_model=model is None,
    )
    return spec if model is None else spec.with_model(model)


def parse_spec(
    text: str,
    *,
    source: str,
    base_dir: Path | None,
    methods: Collection[str],
    allow_outside: bool = False,
    check_model: bool = True,
) -> Spec:
    """Check spec ``text``; ``source`` names it in errors, ``base_dir`` anchors relative paths.

    Paths the spec names must lie in ``base_dir`` (real paths: no ``..`` or symlink out) unless
    ``allow_outside``; ``check_model`` off skips that for ``model:`` (the caller replaces it).
    ``base_dir`` None is a spec that came from no folder (the one a patch records): it may name no
    file at all, and a relative ``model:`` is taken from the working directory.
    """
    reader = SpecReader(
        source=str(source),
        base_dir=None if base_dir is None else Path(base_dir),
        methods=tuple(sorted(methods)),
        confine=not allow_outside,
        check_model=check_model,
    )
    try:
        return reader.read(text)
    except RecursionError:
        raise spec_error(f"{source}:1: the YAML is nested too deeply") from None
