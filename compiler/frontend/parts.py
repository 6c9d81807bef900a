"""The parts of a spec read on their own: ``options``, ``output``, and the paths and ``file:`` lists it names.

``SpecPartsReader`` is the base of ``reader.SpecReader``: it holds where the spec came from and
what it may read, confines every path the spec names to the spec's folder (real paths, so ``..``
and symlinks cannot leave it) unless the caller opts in, reads ``file:`` lists through
``text_files`` (regular UTF-8 text only), bounds ranks and numbers, and records the line of each
key so that later steps can say where in the spec a value was written (``Spec.where``).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import os
from dataclasses import dataclass, field
from pathlib import Path

from yaml.nodes import MappingNode, Node, ScalarNode

from .neighbors import read_neighbors
from .presets import ROW_RULES
from .spec import ON_CONFLICT, ONNX_MODES, OUTPUT_DTYPES, OUTPUT_FORMATS, Options, OutputSpec
from .text_files import inside, read_utf8
from .yaml_nodes import MAX_SCALAR_CHARS, TAG, NodeReader, node_kind, quote

OPTION_KEYS = (
    "lambda", "erase_scale", "preserve_scale", "prior_scale", "on_conflict", "pipeline", "pooled", "rece", "max_drift",
    "sequence_length", "neighbors", "implicit_rows",
)
TRIGGER_KEYS = ("prompt", "counterpart", "file")  # an item of an implicit entry's triggers
RECE_KEYS = ("recipe", "rounds", "attack_lambda", "retain")  # the rece pass's schedule (passes/rece.py)
RECE_RECIPES = ("nudity", "unsafe", "artist", "object")
RECE_RETAIN = ("blank", "spec")
MAX_RECE_ROUNDS = 20
OPTIONS_NOT_YET = ("rows", "preserve", "adversarial")  # DESIGN.md §3
OUTPUT_KEYS = ("format", "dtype", "rank", "link", "mode", "graph")

MAX_SEQUENCE_LENGTH = 4096  # T5 rows: beyond any pipeline's max_sequence_length (T5's own is 512)
MAX_RANK = 65_536  # above any layer's full rank in SD1/SD2/SDXL (the build also checks the layers')
MAX_OPTION = 1e6  # lambda, the scales: far past any useful value, far below float64 overflow in a Gram
MIN_POSITIVE_OPTION = 1e-6  # erase_scale, preserve_scale: smaller ones square to nothing in a Gram
_OUTSIDE_FIX = "move it into the spec's folder, or pass --allow-outside-spec if you trust the spec"


@dataclass(frozen=True, slots=True)
class SpecPartsReader(NodeReader):
    """Reads the parts of one spec; every method raises a located ``SpecError`` on a mistake."""

    base_dir: Path | None  # relative paths are taken from here; None: the spec may name no file
    methods: tuple[str, ...]
    confine: bool = True  # paths must lie in base_dir (real paths); off: --allow-outside-spec
    check_model: bool = True  # off when the caller replaces ``model:`` (--model)
    lines: dict[str, int] = field(default_factory=dict)  # key path -> line, filled while reading

    def mark(self, path: str, node: Node) -> None:
        """Record where ``path`` was written, for errors of later steps (``Spec.where``)."""
        self.lines.setdefault(path, node.start_mark.line + 1)

    def path(self, node: Node, where: str, written: str) -> str:
        """The absolute path a spec names (``~`` expanded, from the spec's folder), confined to it."""
        if self.base_dir is None:
            what = "a spec recorded in a patch names no files (its lists come expanded); remove the key"
            raise self.error(node, where, what)
        full = os.path.abspath(os.path.join(self.base_dir, os.path.expanduser(written)))
        if self.confine and not inside(full, self.base_dir):
            folder = os.path.realpath(self.base_dir)
            what = f"{quote(written, 1024)} is outside the spec's folder {folder!r}"
            raise self.error(node, where, f"{what}; {_OUTSIDE_FIX}")
        return full

    # -- options and output ----------------------------------------------------------------------

    def options(self, node: Node) -> Options:
        fields = self.mapping(node, "options", OPTION_KEYS + OPTIONS_NOT_YET)
        for key, (_, value) in fields.items():
            self.mark(f"options.{key}", value)
        for key, (key_node, _) in fields.items():
            if key in OPTIONS_NOT_YET:
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
            rece=self.rece(fields["rece"][1]) if "rece" in fields else None,
            implicit_rows=self.choice(fields["implicit_rows"][1], "options.implicit_rows", ROW_RULES)
            if "implicit_rows" in fields
            else None,
            max_drift=self.max_drift(fields),
            neighbors=read_neighbors(self, fields["neighbors"][1]) if "neighbors" in fields else None,
            sequence_length=self.sequence_length(fields["sequence_length"][1]) if "sequence_length" in fields else None,
        )

    def sequence_length(self, node: Node) -> int:
        """``options.sequence_length``: the T5 padding a diffusion transformer's rows are computed at
        (docs/models.md: diffusers FLUX-dev 512, FLUX-schnell and SD3 256, ComfyUI at least 256)."""
        length = self.integer(node, "options.sequence_length")
        if not 1 <= length <= MAX_SEQUENCE_LENGTH:
            raise self.error(node, "options.sequence_length", f"{length} is not in [1, {MAX_SEQUENCE_LENGTH}]")
        return length

    def rece(self, node: Node) -> tuple[tuple[str, object], ...]:
        """``options.rece``: RECE's schedule — a recipe by name (the reference's per-type settings)
        and any of rounds, attack_lambda, retain overriding it; in ``RECE_KEYS`` order."""
        fields = self.mapping(node, "options.rece", RECE_KEYS)
        values: dict[str, object] = {}
        if "recipe" in fields:
            values["recipe"] = self.choice(fields["recipe"][1], "options.rece.recipe", RECE_RECIPES)
        if "rounds" in fields:
            value = fields["rounds"][1]
            rounds = self.integer(value, "options.rece.rounds")
            if not 0 <= rounds <= MAX_RECE_ROUNDS:
                raise self.error(value, "options.rece.rounds", f"{rounds} is not in [0, {MAX_RECE_ROUNDS}]")
            values["rounds"] = rounds
        if "attack_lambda" in fields:
            value = fields["attack_lambda"][1]
            number = self.number(value, "options.rece.attack_lambda")
            if not MIN_POSITIVE_OPTION <= number <= MAX_OPTION:
                what = f"{quote(value.value)} is not in [{MIN_POSITIVE_OPTION:g}, {MAX_OPTION:g}]"
                raise self.error(value, "options.rece.attack_lambda", what)
            values["attack_lambda"] = number
        if "retain" in fields:
            values["retain"] = self.choice(fields["retain"][1], "options.rece.retain", RECE_RETAIN)
        if not values:
            raise self.error(node, "options.rece", f"is empty; give any of {', '.join(RECE_KEYS)}, or remove it")
        return tuple((key, values[key]) for key in RECE_KEYS if key in values)

    def max_drift(self, fields: dict) -> float | None:
        """``options.max_drift``: the drift budget, a fraction of the preserved rows' K/V outputs in (0, 1)."""
        if "max_drift" not in fields:
            return None
        node = fields["max_drift"][1]
        number = self.number(node, "options.max_drift")
        if not 0 < number < 1:
            what = f"{quote(node.value)} is not in (0, 1); a drift budget is a fraction of the preserved rows' outputs, e.g. 0.05"
            raise self.error(node, "options.max_drift", what)
        return number

    def flag(self, fields: dict, key: str, where: str) -> bool:
        if key not in fields:
            return False
        return self.boolean(fields[key][1], where)

    def option_number(self, fields: dict, key: str, *, allow_zero: bool) -> float | None:
        if key not in fields:
            return None
        node = fields[key][1]
        number = self.number(node, f"options.{key}")
        if number < 0 or (number == 0 and not allow_zero):
            what = f"{node.value} is not {'>=' if allow_zero else '>'} 0"
            raise self.error(node, f"options.{key}", what)
        low = 0 if allow_zero else MIN_POSITIVE_OPTION
        if number > MAX_OPTION or number < low:
            what = f"{quote(node.value)} is not in [{low:g}, {MAX_OPTION:g}]"
            raise self.error(node, f"options.{key}", what)
        return number

    def output(self, node: Node) -> OutputSpec:
        fields = self.mapping(node, "output", OUTPUT_KEYS)
        for key, (_, value) in fields.items():
            self.mark(f"output.{key}", value)
        out = OutputSpec()
        if "format" in fields:
            format_ = self.choice(fields["format"][1], "output.format", OUTPUT_FORMATS)
            out = dataclasses.replace(out, format=format_, format_chosen=True)
        if "dtype" in fields:
            dtype = self.choice(fields["dtype"][1], "output.dtype", OUTPUT_DTYPES)
            out = dataclasses.replace(out, dtype=dtype)
        if "rank" in fields:
            out = dataclasses.replace(out, rank=self.rank(fields["rank"][1]))
        if "link" in fields:
            out = dataclasses.replace(out, link=self.boolean(fields["link"][1], "output.link"))
        for key in ("mode", "graph"):
            if key in fields and out.format != "onnx":
                raise self.error(fields[key][1], f"output.{key}", "applies to format onnx only")
        if "mode" in fields:
            out = dataclasses.replace(out, mode=self.choice(fields["mode"][1], "output.mode", ONNX_MODES))
        if "graph" in fields:
            node = fields["graph"][1]
            out = dataclasses.replace(out, graph=self.path(node, "output.graph", self.string(node, "output.graph")))
        return out

    def rank(self, node: Node) -> int | str:
        if isinstance(node, ScalarNode) and node.tag == TAG + "str":
            if node.value != "auto":
                what = f"{quote(node.value)} is not 'auto' or an integer >= 1"
                raise self.error(node, "output.rank", what)
            return "auto"
        if not (isinstance(node, ScalarNode) and node.tag == TAG + "int"):
            raise self.error(node, "output.rank", f"expected 'auto' or an integer, got {node_kind(node)}")
        rank = self.integer(node, "output.rank")
        if rank < 1:
            raise self.error(node, "output.rank", f"{node.value} is not >= 1")
        if rank > MAX_RANK:
            what = f"{quote(node.value)} is more than {MAX_RANK}, above any layer's full rank; use 'auto'"
            raise self.error(node, "output.rank", what)
        return rank

    # -- files -------------------------------------------------------------------------------------

    def file_text(self, key: Node, value: Node, path: str) -> tuple[str, str]:
        """The path as written and the text of the file a ``file:`` key names (confined, regular UTF-8)."""
        written = self.string(value, path)
        if not written.strip():
            raise self.error(value, path, "is empty; give the path of a text file, one entry a line")
        full = self.path(key, path, written)
        try:
            return written, read_utf8(Path(full))
        except ValueError as e:
            raise self.error(key, path, f"cannot read {full!r} ({e})") from None

    def list_file(self, key: Node, value: Node, path: str) -> tuple[str, list[tuple[str, int]]]:
        """The path as written and the (entry, line number) pairs of a ``file:`` list."""
        written, text = self.file_text(key, value, path)
        entries = []
        for number, line in enumerate(text.split("\n"), 1):
            line = line.strip()
            if line and not line.startswith("#"):
                if len(line) > MAX_SCALAR_CHARS:
                    what = f"{written} line {number}: {len(line):,} characters; an entry holds at most {MAX_SCALAR_CHARS:,}"
                    raise self.error(key, path, what)
                entries.append((line, number))
        return written, entries

    # -- implicit entries ------------------------------------------------------------------------

    def implicit(self, item: Node, fields: dict, path: str, anchor: str) -> dict:
        """An erase entry's ``implicit`` and ``triggers`` (docs/spec.md, "Implicit concepts"), as
        ``EraseEntry`` fields: an implicit entry needs triggers, triggers need ``implicit: true``."""
        implicit = self.boolean(fields["implicit"][1], f"{path}.implicit") if "implicit" in fields else False
        if not implicit:
            if "triggers" in fields:
                raise self.error(fields["triggers"][0], f"{path}.triggers", "applies to implicit entries; add implicit: true")
            return {}
        if "file" in fields:
            what = "not allowed in a file entry; give the implicit concept an entry of its own with 'concept'"
            raise self.error(fields["implicit"][0], f"{path}.implicit", what)
        if "triggers" not in fields:
            what = "an implicit entry needs triggers; add triggers: [prompts] or triggers: [{file: PATH}]"
            raise self.error(fields["implicit"][0], f"{path}.implicit", what)
        triggers = self.triggers(fields["triggers"][1], f"{path}.triggers")
        for prompt, counterpart in triggers:
            if not counterpart and prompt.casefold() == anchor.casefold():
                what = f"{quote(prompt)} has no counterpart and is the anchor itself; give it a counterpart or remove it"
                raise self.error(fields["triggers"][1], f"{path}.triggers", what)
        return {"implicit": True, "triggers": triggers}

    def triggers(self, node: Node, path: str) -> tuple[tuple[str, str], ...]:
        """(prompt, counterpart) pairs from a list of prompts, ``{prompt, counterpart}`` mappings and
        ``{file: PATH}`` lists; stripped, the first of repeated prompts kept; "" = no counterpart."""
        out: dict[str, str] = {}
        for index, item in enumerate(self.sequence(node, path)):
            where = f"{path}[{index}]"
            if not isinstance(item, MappingNode):
                pairs = [(self.string(item, where).strip(), "", item, where)]
            else:
                fields = self.mapping(item, where, TRIGGER_KEYS)
                if "file" in fields:
                    if len(fields) > 1:
                        raise self.error(item, where, "give either 'file' or 'prompt', not both")
                    pairs = self.trigger_file(*fields["file"], f"{where}.file")
                elif "prompt" in fields:
                    counterpart = fields.get("counterpart")
                    counterpart = self.string(counterpart[1], f"{where}.counterpart").strip() if counterpart else ""
                    pairs = [(self.string(fields["prompt"][1], f"{where}.prompt").strip(), counterpart, item, where)]
                else:
                    raise self.error(item, where, "missing key 'prompt' (or 'file' for a list of trigger prompts)")
            for prompt, counterpart, at, what_path in pairs:
                if not prompt:
                    raise self.error(at, what_path, "a trigger prompt is empty")
                if prompt == counterpart:
                    raise self.error(at, what_path, f"{quote(prompt)} is its own counterpart; give a safe prompt")
                out.setdefault(prompt, counterpart)
        if not out:
            raise self.error(node, path, "the list is empty; give the prompts that carry the concept")
        return tuple(out.items())

    def trigger_file(self, key: Node, value: Node, path: str) -> list[tuple[str, str, Node, str]]:
        """A triggers ``file:``: a ``.csv`` with a ``prompt`` column and an optional ``counterpart``
        column (the shipped suites' layout, compiler/data/suites/README.md), else one prompt a line."""
        written, text = self.file_text(key, value, path)
        if not written.lower().endswith(".csv"):
            rows = [(prompt, "", key, f"{path} ({written} line {n})") for prompt, n in self.list_file(key, value, path)[1]]
        else:
            try:
                table = csv.DictReader(io.StringIO(text, newline=""))
                columns = table.fieldnames or []
                if "prompt" not in columns:
                    shown = ", ".join(quote(c) for c in columns) or "none"
                    raise self.error(key, path, f"{quote(written, 1024)} has no 'prompt' column (columns: {shown})")
                rows = [
                    ((row.get("prompt") or "").strip(), (row.get("counterpart") or "").strip(), key, f"{path} ({written} line {table.line_num})")
                    for row in table
                    if (row.get("prompt") or "").strip()
                ]
            except csv.Error as e:
                raise self.error(key, path, f"cannot read {quote(written, 1024)} as CSV ({e})") from None
            for prompt, counterpart, _, where in rows:
                if max(len(prompt), len(counterpart)) > MAX_SCALAR_CHARS:
                    raise self.error(key, where, f"an entry holds at most {MAX_SCALAR_CHARS:,} characters")
        if not rows:
            raise self.error(key, path, f"{quote(written, 1024)} lists no trigger prompts")
        return rows
