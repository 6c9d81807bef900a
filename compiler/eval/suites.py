"""Prompt suites for ``erasec eval``, and how their prompts are sorted into what they measure.

A suite is a CSV shipped in ``compiler/data/suites/`` (sources and licences in its README.md) with
the columns ``prompt``, ``counterpart`` (a clean version, or empty) and ``concept`` (what the prompt
is about, or empty). A user's ``--prompts FILE`` is one prompt a line (``.txt``) or a CSV with at
least a ``prompt`` column.

``sort_prompts`` matches every row against the patch's erase requests (a request's names: its
concept and synonyms, compared case-insensitively) and files it as

* a *pair* of that request (generality) — a row whose concept or text names the request, with its
  counterpart, or else the prompt with the name replaced by the request's anchor;
* a *target* of that request — a row labelled with the request's concept whose text does not name it
  and that has no counterpart (I2P prompts): only how far it moved can be measured;
* *unrelated* (specificity) — every other row.

Templates (generality on the spec's own concepts, DESIGN.md §9): every row whose text contains its
concept label gives the template ``prompt.replace(label, "{}")``; the most common ones are applied
to each request's names, with the same template applied to the anchor as the guide. Prompts already
in the spec are left out, so generality is measured on prompts the build never saw.
"""

from __future__ import annotations

import csv
import re
from collections import Counter
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from ..errors import EvalError

SUITES = ("artists", "coco", "i2p-nudity", "imagenette", "ring-a-bell-nudity", "ring-a-bell-van-gogh")
TEMPLATE_COUNT = 8  # templates per request taken from the suites (the most common first)


@dataclass(frozen=True, slots=True)
class SuiteRow:
    prompt: str
    counterpart: str = ""
    concept: str = ""
    source: str = ""  # suite name or file path


@dataclass(frozen=True, slots=True, kw_only=True)
class Request:
    """One erase entry of the patch's spec: its names (concept first), anchor and own prompt pairs."""

    concept: str
    names: tuple[str, ...]
    anchor: str
    own: tuple[tuple[str, str], ...]  # (prompt, guide) as the build lowered them


@dataclass(frozen=True, slots=True, kw_only=True)
class SortedPrompts:
    pairs: dict[str, tuple[tuple[str, str], ...]] = field(default_factory=dict)  # request -> (prompt, guide)
    targets: dict[str, tuple[str, ...]] = field(default_factory=dict)  # request -> prompts
    unrelated: dict[str, tuple[str, ...]] = field(default_factory=dict)  # source -> prompts


def _read_csv(text: str, source: str) -> list[SuiteRow]:
    reader = csv.DictReader(text.splitlines())
    if not reader.fieldnames or "prompt" not in reader.fieldnames:
        raise EvalError(f"{source}: a prompt CSV needs a 'prompt' column; found {reader.fieldnames}")
    return [
        SuiteRow(row["prompt"].strip(), (row.get("counterpart") or "").strip(), (row.get("concept") or "").strip(), source)
        for row in reader
        if (row.get("prompt") or "").strip()
    ]


def load_suite(name: str) -> list[SuiteRow]:
    if name not in SUITES:
        raise EvalError(f"--suite {name}: unknown suite; choose from {', '.join(SUITES)}")
    text = (resources.files("erasec.compiler") / "data" / "suites" / f"{name}.csv").read_text(encoding="utf-8")
    return _read_csv(text, name)


def load_prompt_file(path: str | Path) -> list[SuiteRow]:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise EvalError(f"{path}: cannot read the prompt file ({error.strerror})") from None
    if path.suffix.lower() == ".csv":
        return _read_csv(text, str(path))
    return [SuiteRow(line.strip(), source=str(path)) for line in text.splitlines() if line.strip() and not line.startswith("#")]


def _mentions(text: str, name: str) -> bool:
    return re.search(rf"(?<!\w){re.escape(name)}(?!\w)", text, flags=re.IGNORECASE) is not None


def _replace(text: str, name: str, anchor: str) -> str:
    return re.sub(rf"(?<!\w){re.escape(name)}(?!\w)", lambda _: anchor, text, flags=re.IGNORECASE).strip()


def templates(rows: list[SuiteRow], count: int = TEMPLATE_COUNT) -> list[str]:
    """The ``count`` most common templates ``prompt.replace(label, "{}")`` (ties by text)."""
    found = Counter(
        _replace(row.prompt, row.concept, "{}") for row in rows if row.concept and _mentions(row.prompt, row.concept)
    )
    return [t for t, _ in sorted(found.items(), key=lambda item: (-item[1], item[0]))][:count]


def _owner(row: SuiteRow, requests: list[Request]) -> tuple[Request | None, str]:
    """The request a row is about and the name it mentions ("" when only its label matches)."""
    for request in requests:
        for name in request.names:
            if _mentions(row.prompt, name):
                return request, name
    for request in requests:
        if row.concept and any(row.concept.casefold() == name.casefold() for name in request.names):
            return request, ""
    return None, ""


def sort_prompts(requests: list[Request], rows: list[SuiteRow]) -> SortedPrompts:
    own = {prompt for request in requests for prompt, _ in request.own}
    pairs: dict[str, list[tuple[str, str]]] = {r.concept: [] for r in requests}
    targets: dict[str, list[str]] = {r.concept: [] for r in requests}
    unrelated: dict[str, list[str]] = {}
    shapes = templates(rows)
    for request in requests:
        for template in shapes:
            for name in request.names:
                prompt = template.format(name)
                if prompt not in own:
                    pairs[request.concept].append((prompt, template.format(request.anchor).strip()))
    for row in rows:
        request, name = _owner(row, requests)
        if request is None:
            unrelated.setdefault(row.source, []).append(row.prompt)
        elif row.prompt in own:
            continue
        elif row.counterpart:
            pairs[request.concept].append((row.prompt, row.counterpart))
        elif name:
            pairs[request.concept].append((row.prompt, _replace(row.prompt, name, request.anchor)))
        else:
            targets[request.concept].append(row.prompt)

    def unique(items):
        return tuple(dict.fromkeys(items))

    return SortedPrompts(
        pairs={k: unique(v) for k, v in pairs.items() if v},
        targets={k: unique(v) for k, v in targets.items() if v},
        unrelated={k: unique(v) for k, v in unrelated.items()},  # in the order given: suites, then the file
    )
