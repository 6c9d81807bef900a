"""``options.neighbors``: which concepts near each erased one the build preserves (docs/spec.md).

Erasing a concept moves its neighbours almost as much as its paraphrases (issue 15: U/N ≈ 1.1 at
12 concepts on builtin:minilm-sd1). RealEra (Liu et al., 2024, arXiv 2410.09140, "beyond-concept
regularization") and SPEED (Li et al., 2025, arXiv 2503.07392, influence-based prior filtering)
both keep the concepts *near* the erased one from moving. The lowering (compiler/lowering/neighbors.py)
finds them in the model's own key space, from a vocabulary: the built-in one
(compiler/data/neighbors/, compiler/data/README.md) and any the spec names. This module reads the
spec's side: a mapping

    neighbors: {count: 8, radius: 0.9, weight: 1, vocabulary: [builtin, {file: names.txt}, {names: [..]}]}

``{file: PATH}`` follows the spec's ``file:`` rules (confined to the spec's folder, regular UTF-8
text, compiler/frontend/text_files.py); an empty or unreadable file is a one-line ``SpecError``.
The recorded spec (``erasec.spec``) names no files: a file's names come expanded as ``{names: [..]}``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from yaml.nodes import MappingNode, Node, ScalarNode

NEIGHBOR_KEYS = ("count", "radius", "weight", "vocabulary", "rows")
# which rows of a kept neighbour are preserved: its subject (last-token) row encoded alone, or every row
# after BOS (padding included) of the neighbour in each of ``NEIGHBOR_TEMPLATES`` (compiler/lowering/neighbors.py)
NEIGHBOR_ROWS = ("last", "all")
VOCABULARY_KEYS = ("file", "names")
BUILTIN = "builtin"
MAX_COUNT = 100  # neighbours per erased concept: past this the preserve rows crowd the erase rows


@dataclass(frozen=True, slots=True, kw_only=True)
class Neighbors:
    """The mining settings; defaults are what a method that turns mining on gets (``Preset.neighbors``)."""

    count: int = 8  # neighbours preserved per erased concept; 0 = off
    # cosine in the site-Gram metric at or above which a vocabulary entry is the concept itself (a
    # paraphrase), not a neighbour: calibrated on builtin:minilm-sd1 (docs/compiler.md, "Neighbours")
    radius: float = 0.9
    weight: float = 1.0  # preserve weight of each neighbour's row (a spec's preserve prompts weigh 1)
    rows: str = "last"  # NEIGHBOR_ROWS: "all" = every row of the neighbour in the templates, each at ``weight``
    builtin: bool = True  # the shipped vocabulary (compiler/data/neighbors/)
    names: tuple[str, ...] = ()  # the spec's own vocabulary, files expanded, first spelling kept
    # where each of ``names`` was written ("names.txt line 3"), for errors; not part of canonical()
    origins: tuple[str, ...] = field(default=(), compare=False, repr=False)

    def canonical(self) -> dict:
        vocabulary: list = [BUILTIN] if self.builtin else []
        if self.names:
            vocabulary.append({"names": list(self.names)})
        out = {"count": self.count, "radius": self.radius, "weight": self.weight, "vocabulary": vocabulary}
        if self.rows != "last":  # listed only when set, so older specs keep their JSON
            out["rows"] = self.rows
        return out


def read_neighbors(reader, node: Node) -> Neighbors:
    """``options.neighbors`` through the spec reader ``reader`` (``parts.SpecPartsReader``)."""
    path = "options.neighbors"
    fields = reader.mapping(node, path, NEIGHBOR_KEYS)
    values: dict = {}
    if "count" in fields:
        value = fields["count"][1]
        count = reader.integer(value, f"{path}.count")
        if not 0 <= count <= MAX_COUNT:
            raise reader.error(value, f"{path}.count", f"{count} is not in [0, {MAX_COUNT}] (0 turns mining off)")
        values["count"] = count
    if "radius" in fields:
        value = fields["radius"][1]
        radius = reader.number(value, f"{path}.radius")
        if not 0 < radius <= 1:
            raise reader.error(value, f"{path}.radius", f"{value.value} is not in (0, 1]: it is a cosine")
        values["radius"] = radius
    if "weight" in fields:
        value = fields["weight"][1]
        weight = reader.number(value, f"{path}.weight")
        if not 1e-6 <= weight <= 1e6:
            raise reader.error(value, f"{path}.weight", f"{value.value} is not in [1e-06, 1e+06]")
        values["weight"] = weight
    if "rows" in fields:
        value = fields["rows"][1]
        rows = reader.string(value, f"{path}.rows")
        if rows not in NEIGHBOR_ROWS:
            raise reader.error(value, f"{path}.rows", f"{rows!r} is not one of {', '.join(NEIGHBOR_ROWS)}")
        values["rows"] = rows
    if "vocabulary" in fields:
        values.update(_vocabulary(reader, fields["vocabulary"][1], f"{path}.vocabulary"))
    return Neighbors(**values)


def _vocabulary(reader, node: Node, path: str) -> dict:
    items = reader.sequence(node, path)
    if not items:
        raise reader.error(node, path, f"the list is empty; give {BUILTIN}, {{file: PATH}} or {{names: [..]}}")
    builtin, names = False, {}  # casefolded name -> (name, origin)
    for index, item in enumerate(items):
        where = f"{path}[{index}]"
        if isinstance(item, ScalarNode) and item.tag.endswith(":str"):
            word = reader.string(item, where)
            if word != BUILTIN:
                what = f"{word!r} is not a vocabulary; write {BUILTIN}, {{file: PATH}} or {{names: [..]}}"
                raise reader.error(item, where, what)
            builtin = True
            continue
        if not isinstance(item, MappingNode):
            raise reader.error(item, where, f"expected {BUILTIN}, {{file: PATH}} or {{names: [..]}}")
        fields = reader.mapping(item, where, VOCABULARY_KEYS)
        if len(fields) != 1:
            raise reader.error(item, where, "give either 'file' or 'names'")
        if "file" in fields:
            written, listed = reader.list_file(*fields["file"], f"{where}.file")
            if not listed:
                raise reader.error(fields["file"][0], f"{where}.file", f"{written!r} lists no names; add one a line")
            found = [(name, f"{written} line {line}") for name, line in listed]
        else:
            entries = reader.sequence(fields["names"][1], f"{where}.names")
            found = [(reader.string(e, f"{where}.names[{i}]").strip(), f"{where}.names[{i}]") for i, e in enumerate(entries)]
            found = [(name, origin) for name, origin in found if name]
            if not found:
                raise reader.error(fields["names"][1], f"{where}.names", "the list is empty; give the names to consider")
        for name, origin in found:
            names.setdefault(name.casefold(), (name, origin))
    return {"builtin": builtin, "names": tuple(n for n, _ in names.values()), "origins": tuple(o for _, o in names.values())}
