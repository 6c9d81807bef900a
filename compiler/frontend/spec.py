"""The spec: a YAML file saying what to erase, read into a frozen ``Spec`` (DESIGN.md §3).

This module is the spec's public face: the frozen values (``Spec``, ``EraseEntry``, ``Options``,
``OutputSpec``), the closed sets they draw from, and ``load_spec`` / ``parse_spec`` / ``dump_spec``.
The reading lives in ``reader.py`` (what the keys mean), on top of ``yaml_nodes.py`` (YAML's
node tree with line numbers, so every error is one line ``<file>:<line>: <key.path>: <what is
wrong>[; <what to do>]``). Any text at all gives a ``Spec`` or a one-line ``SpecError``, never another
exception.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ..hub_cache import HUB_PREFIX, hub_id
from .neighbors import Neighbors
from .yaml_nodes import quote, spec_error

FORMAT_VERSION = 1
DEFAULT_METHOD = "erasec"  # docs/results.md says why
BUILTIN_PREFIX = "builtin:"
OUTPUT_FORMATS = ("kohya", "peft", "checkpoint", "onnx")  # backends/kohya.py, peft.py, checkpoint.py, onnx/
ONNX_MODES = ("bake", "switchable", "adapter")  # backends/onnx/rewrite.py
OUTPUT_DTYPES = ("fp32", "fp16", "bf16")
FAMILIES = ("sd1", "sd2", "sdxl", "flux", "chroma", "sd3", "wan")
ON_CONFLICT = ("warn", "error")
# a diffusion transformer's text encoders given apart (docs/models.md; each family's slots are its
# registry entry's encoder_slots, kept equal to this by tests/compiler/test_dit_single_file.py)
TEXT_ENCODER_SLOTS = ("t5", "clip_l", "clip_g")


@dataclass(frozen=True, slots=True, kw_only=True)
class EraseEntry:
    """One concept to erase; a ``file:`` entry of the spec becomes one entry per listed concept."""

    concept: str
    anchor: str = ""  # "" is the empty prompt
    synonyms: tuple[str, ...] = ()
    templates: tuple[str, ...] = ()
    strength: float = 1.0
    # a concept carried by whole prompts (nudity, violence): its trigger prompts, each with its safe
    # counterpart ("" = the entry's anchor), lowered with the method's implicit row rule
    implicit: bool = False
    triggers: tuple[tuple[str, str], ...] = ()


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
    # method rece's schedule (docs/spec.md): (key, value) pairs of recipe, rounds, attack_lambda, retain
    rece: tuple[tuple[str, object], ...] | None = None
    implicit_rows: str | None = None  # the row rule of implicit entries' triggers (None: the method's)
    max_drift: float | None = None  # drift budget, in (0, 1): passes/drift_budget.py (None: no budget)
    neighbors: Neighbors | None = None  # concepts near each erased one, preserved (compiler/frontend/neighbors.py)
    sequence_length: int | None = None  # a DiT's T5 padding (docs/models.md); None: its pipeline's default


@dataclass(frozen=True, slots=True, kw_only=True)
class OutputSpec:
    format: str = "kohya"
    # whether the spec wrote output.format; when not, a diffusion transformer's build writes PEFT
    # (compiler/build.py format_for_family). Not part of the canonical spec (the recorded one says the format)
    format_chosen: bool = field(default=False, compare=False)
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
    # a DiT's text encoders and tokenizers given apart from it: (slot, absolute path), sorted by slot
    text_encoders: tuple[tuple[str, str], ...] = ()
    tokenizers: tuple[tuple[str, str], ...] = ()
    # key path ("output.rank", "erase[0]", "options.lambda"...) -> line in ``source``, so that a
    # later step can name where in the spec a refused value was written; not part of canonical()
    lines: Mapping[str, int] = field(default_factory=dict, compare=False, repr=False)

    def where(self, key: str) -> str:
        """``<source>:<line>: <key>`` for an error about spec entry ``key`` (no line if unknown)."""
        line = self.lines.get(key)
        return f"{self.source}:{line}: {key}" if line else f"{self.source}: {key}"

    def canonical(self) -> dict:
        """Plain JSON-able data in a fixed key order, for hashing and for ``dump_spec``."""
        return {
            "erasec": FORMAT_VERSION,
            "name": self.name,
            "version": self.version,
            "model": self.model,
            **({"family": self.family} if self.family is not None else {}),  # absent when detected
            # absent when not given: older specs keep their JSON
            **({"text_encoders": dict(self.text_encoders)} if self.text_encoders else {}),
            **({"tokenizers": dict(self.tokenizers)} if self.tokenizers else {}),
            "method": self.method,
            "erase": [
                {
                    "concept": e.concept,
                    "anchor": e.anchor,
                    "synonyms": list(e.synonyms),
                    "templates": list(e.templates),
                    "strength": e.strength,
                    # absent unless implicit: older specs keep their JSON
                    **({"implicit": True, "triggers": [{"prompt": p, "counterpart": c} for p, c in e.triggers]} if e.implicit else {}),
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
                **({"rece": dict(self.options.rece)} if self.options.rece is not None else {}),
                **({"implicit_rows": self.options.implicit_rows} if self.options.implicit_rows is not None else {}),
                **({"max_drift": self.options.max_drift} if self.options.max_drift is not None else {}),
                **({"neighbors": self.options.neighbors.canonical()} if self.options.neighbors is not None else {}),
                **({"sequence_length": self.options.sequence_length} if self.options.sequence_length is not None else {}),
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
        problem = model_problem(model)
        if problem:
            raise spec_error(f"--model: {problem}")
        return dataclasses.replace(self, model=resolve_model(model, Path.cwd()))

    def with_text_inputs(self, encoders: Mapping[str, str | None], tokenizers: Mapping[str, str | None]) -> Spec:
        """The CLI's ``--text-encoder SLOT=PATH`` and ``--tokenizer SLOT=PATH``: each replaces the
        spec's for its slot; a relative path is taken from the working directory (not confined)."""
        def merged(current: tuple[tuple[str, str], ...], given: Mapping[str, str | None], option: str):
            out = dict(current)
            for slot, path in given.items():
                if path is None:
                    raise spec_error(f"{option} {quote(slot)}: not SLOT=PATH (e.g. t5=t5xxl_fp16.safetensors)")
                if slot not in TEXT_ENCODER_SLOTS:
                    allowed = ", ".join(TEXT_ENCODER_SLOTS)
                    raise spec_error(f"{option} {slot}=…: {quote(slot)} is not a text-encoder slot; use one of {allowed}")
                if not path:
                    raise spec_error(f"{option} {slot}=: the path is empty")
                out[slot] = os.path.abspath(os.path.expanduser(path))
            return tuple(sorted(out.items()))

        return dataclasses.replace(
            self, text_encoders=merged(self.text_encoders, encoders, "--text-encoder"),
            tokenizers=merged(self.tokenizers, tokenizers, "--tokenizer"),
        )


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


def model_problem(model: str) -> str:
    """What is wrong with a model as written ("" for nothing); the spec's ``model`` and ``--model``."""
    if not model:
        return "is empty; give a model folder or builtin:NAME"
    if model == BUILTIN_PREFIX:
        return f"{quote(model)} names no built-in model; write builtin:NAME"
    return ""


def resolve_model(model: str, base_dir: Path) -> str:
    """``builtin:NAME`` as is, a path made absolute from ``base_dir`` (``~`` expanded); a hub id
    (``org/name``, ``hf:org/name``) as is when no such path exists (compiler/hub_cache.py)."""
    if model.startswith((BUILTIN_PREFIX, HUB_PREFIX)):
        return model
    return model if hub_id(model, base_dir) is not None else os.path.abspath(os.path.join(base_dir, os.path.expanduser(model)))
