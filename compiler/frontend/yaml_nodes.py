"""Reading hand-written YAML as a node tree, so that every mistake is a one-line located ``SpecError``.

``NodeReader`` composes YAML's node tree instead of calling ``safe_load``: nodes carry line numbers,
so every error reads ``<file>:<line>: <key.path>: <what is wrong>[; <what to do>]``, and they show
what plain data hides — duplicate keys (YAML keeps the last one silently) and ``yes`` versus
``"yes"``. It knows YAML's types (mapping, list, string, integer, number, boolean, closed choices),
not what any file means; ``reader.py`` builds the spec's reading on it.
"""

from __future__ import annotations

import difflib
import json
import math
import re
from collections.abc import Collection
from dataclasses import dataclass

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from ..errors import SpecError

TAG = "tag:yaml.org,2002:"
# PyYAML follows YAML 1.1, where a float needs a dot: plain `1e-4` is a string there. Accept it.
_PLAIN_FLOAT_RE = re.compile(r"[-+]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?")
_PLAIN_KEY_RE = re.compile(r"[A-Za-z0-9_-]+")
_LINE_BREAKS = frozenset("\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029")
# Plain scalars YAML reads as something else, often meant as text (`concept: yes`, `version: 1.0`).
_LOOKS_LIKE_TEXT = tuple(TAG + kind for kind in ("int", "float", "bool", "timestamp"))
# Bounds on what one YAML text may make the reader walk. Aliases share nodes, so a 642-byte text can
# name 9**9 of them ("billion laughs"); the walk counts each node as often as aliases repeat it.
MAX_NODES = 1_000_000
MAX_SCALAR_CHARS = 65_536  # a concept, prompt or path; CLIP reads 77 tokens
# libyaml's composer recurses in C without a limit (a 1,000-deep flow list crashes the process),
# so texts that may nest deeper than this go to PyYAML's Python composer, which stops cleanly.
_C_DEPTH = 200
_C_LOADER = getattr(yaml, "CSafeLoader", None)  # libyaml: 10 MB of YAML in a second, not minutes
_BLOCK_PREFIX_RE = re.compile(r"[ \t]*(?:[-?:][ \t]+)*")
_BRACKET_RE = re.compile(r"[\[\]{}]")
_SURROGATE_RE = re.compile("[\ud800-\udfff]")


def spec_error(message: str) -> SpecError:
    """A ``SpecError`` whose message is one line whatever text the input quoted."""
    return SpecError("".join(repr(ch)[1:-1] if ch in _LINE_BREAKS else ch for ch in message))


def quote(text: str, limit: int = 60) -> str:
    """Quote a value for a message, shortened past ``limit`` characters and with control characters
    escaped (a path gets a longer limit: a shortened path does not say which file)."""
    return repr(text) if len(text) <= limit else repr(text[: limit - 3]) + "..."


def node_kind(node: Node) -> str:
    """The YAML type of a node in words: ``int``, ``list``, ``mapping``..."""
    if not node.tag.startswith(TAG):
        return f"a value tagged {quote(node.tag)}"
    kind = node.tag[len(TAG) :]
    return {"seq": "list", "map": "mapping"}.get(kind, kind)


def text_problem(text: str) -> str:
    """Why ``text`` cannot be a spec's text ("" if it can): a lone surrogate (``"\\udc80"`` in a
    double-quoted scalar, read by PyYAML's own loader), which is no UTF-8 text: no tokenizer, JSON
    record or terminal takes it."""
    found = _SURROGATE_RE.search(text)
    if found is None:
        return ""
    return f"holds a lone surrogate U+{ord(found.group()):04X} at character {found.start() + 1}, which is not text; remove it"


def _depth_bound(text: str) -> int:
    """At least how deep ``text`` nests: open brackets (quotes not parsed, so it over-counts) plus
    the deepest line's indentation and compact ``- ``/``? ``/``: `` indicators."""
    flow = deepest = 0
    for bracket in _BRACKET_RE.findall(text):
        if bracket in "[{":
            flow += 1
            deepest = max(deepest, flow)
        elif flow:
            flow -= 1
    block = max((_BLOCK_PREFIX_RE.match(line).end() for line in text.split("\n")), default=0)
    return deepest + block


def _key_path(path: str, key: str) -> str:
    key = key if _PLAIN_KEY_RE.fullmatch(key) else quote(key)
    return f"{path}.{key}" if path else key


def _did_you_mean(word: str, choices: Collection[str]) -> str:
    for choice in choices:
        if choice.casefold() == word.casefold():
            return f"; did you mean {choice!r}?"
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


@dataclass(frozen=True, slots=True)
class NodeReader:
    """Typed reads of the nodes of one YAML text named ``source``; each raises a located ``SpecError``.

    ``path`` arguments are the key path shown in messages (``erase[0].strength``).
    """

    source: str

    def error(self, where: Node | int, path: str, what: str) -> SpecError:
        line = where if isinstance(where, int) else where.start_mark.line + 1
        return spec_error(f"{self.source}:{line}: {path + ': ' if path else ''}{what}")

    def compose(self, text: str, *, if_empty: str) -> Node:
        """The root node of ``text``, its size bounded; an empty document is an error saying ``if_empty``."""
        try:
            data = text.encode("utf-8")
        except UnicodeEncodeError as e:
            what = f"holds a lone surrogate U+{ord(text[e.start]):04X}, which is not text; remove it"
            raise self.error(text.count("\n", 0, e.start) + 1, "", what) from None
        loader = _C_LOADER if _C_LOADER is not None and _depth_bound(text) <= _C_DEPTH else yaml.SafeLoader
        try:
            root = yaml.compose(text, Loader=loader)
        except yaml.reader.ReaderError as e:
            if loader is _C_LOADER:  # libyaml counts UTF-8 bytes
                line = data.count(b"\n", 0, max(e.position, 0)) + 1
            else:
                line = text.count("\n", 0, max(e.position, 0)) + 1
            code = ord(e.character) if isinstance(e.character, str) else int(e.character)
            char = f"U+{code:04X}"
            raise self.error(line, "", f"YAML does not allow the character {char}; remove it") from None
        except yaml.MarkedYAMLError as e:
            mark = e.problem_mark or e.context_mark
            problem = e.problem or e.context or "invalid YAML"
            raise self.error(mark.line + 1 if mark else 1, "", f"YAML syntax error: {problem}") from None
        except yaml.YAMLError as e:
            raise self.error(1, "", f"YAML syntax error: {type(e).__name__}") from None
        if root is None or (root.tag == TAG + "null" and not root.value):
            raise self.error(1, "", if_empty)
        self.bound(root)
        return root

    def bound(self, root: Node) -> None:
        """Refuse a tree that expands (through aliases) past ``MAX_NODES``, or a too-long value.

        A node that is its own ancestor (``&a [*a]``) is not followed: the reader meets it at most
        once per level it walks, and says what is wrong there (a merge key including its mapping).
        """
        count, on_path, stack = 0, set(), [(root, False)]
        while stack:
            node, leaving = stack.pop()
            if leaving:
                on_path.discard(id(node))
                continue
            if id(node) in on_path:
                continue
            count += 1
            if count > MAX_NODES:
                what = f"the YAML expands to more than {MAX_NODES:,} values (aliases repeat what they name)"
                raise self.error(node, "", f"{what}; write the spec without nested aliases")
            if isinstance(node, ScalarNode):
                if len(node.value) > MAX_SCALAR_CHARS:
                    what = f"a value of {len(node.value):,} characters; a spec value holds at most {MAX_SCALAR_CHARS:,}"
                    raise self.error(node, "", what)
                continue
            on_path.add(id(node))
            stack.append((node, True))
            children = node.value if isinstance(node, SequenceNode) else [n for pair in node.value for n in pair]
            stack.extend((child, False) for child in reversed(children))

    # -- structure ---------------------------------------------------------------------------------

    def pairs(self, node: MappingNode, path: str, inside: tuple[Node, ...]) -> list[tuple[Node, Node]]:
        """The key/value nodes of a mapping, merge keys (``<<``) applied, duplicate keys refused."""
        explicit: dict[str, tuple[Node, Node]] = {}
        merged: list[tuple[Node, Node]] = []
        for key, value in node.value:
            if key.tag == TAG + "merge":
                sources = value.value if isinstance(value, SequenceNode) else [value]
                for src in sources:
                    if not isinstance(src, MappingNode) or src.tag != TAG + "map":
                        what = f"a merge key (<<) takes a mapping or a list of them, got {node_kind(src)}"
                        raise self.error(src, path, what)
                    if any(src is outer for outer in inside):
                        raise self.error(src, path, "a merge key (<<) includes its own mapping")
                    merged += self.pairs(src, path, (*inside, src))
                continue
            if not isinstance(key, ScalarNode):
                raise self.error(key, path, f"a key must be text, got {node_kind(key)}")
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
        if not isinstance(node, MappingNode) or node.tag != TAG + "map":
            raise self.error(node, path or "top level", f"expected a mapping, got {node_kind(node)}")
        items = {}
        for key, value in self.pairs(node, path, (node,)):
            if key.value not in known:
                hint = _did_you_mean(key.value, known) or "; expected one of " + ", ".join(known)
                raise self.error(key, _key_path(path, key.value), f"unknown key{hint}")
            items[key.value] = (key, value)
        return items

    def sequence(self, node: Node, path: str) -> list[Node]:
        if not isinstance(node, SequenceNode) or node.tag != TAG + "seq":
            raise self.error(node, path, f"expected a list, got {node_kind(node)}")
        return list(node.value)

    # -- scalars -----------------------------------------------------------------------------------

    def string(self, node: Node, path: str, *, optional: bool = False) -> str:
        if isinstance(node, ScalarNode) and node.tag == TAG + "str":
            problem = text_problem(node.value)
            if problem:
                raise self.error(node, path, problem)
            return node.value
        what = f"expected a string, got {node_kind(node)}"
        if isinstance(node, ScalarNode) and node.tag in _LOOKS_LIKE_TEXT:
            what += f"; write it in quotes ({json.dumps(node.value)}) if you mean the text"
        elif node.tag == TAG + "null" and optional:
            what += "; remove the key to use the default"
        raise self.error(node, path, what)

    def integer(self, node: Node, path: str) -> int:
        if isinstance(node, ScalarNode) and node.tag == TAG + "int":
            try:
                return yaml.constructor.SafeConstructor().construct_yaml_int(node)
            except (ValueError, OverflowError):
                raise self.error(node, path, f"{quote(node.value)} is not a valid integer") from None
        raise self.error(node, path, f"expected an integer, got {node_kind(node)}")

    def number(self, node: Node, path: str) -> float:
        """A finite float from an int, a float, or a plain ``1e-4`` (a string to YAML 1.1)."""
        if isinstance(node, ScalarNode) and node.tag == TAG + "int":
            value: object = self.integer(node, path)
        elif isinstance(node, ScalarNode) and node.tag == TAG + "float":
            try:
                value = yaml.constructor.SafeConstructor().construct_yaml_float(node)
            except (ValueError, OverflowError):
                raise self.error(node, path, f"{quote(node.value)} is not a valid number") from None
        elif (
            isinstance(node, ScalarNode)
            and node.tag == TAG + "str"
            and not node.style  # plain: None from PyYAML, "" from libyaml
            and _PLAIN_FLOAT_RE.fullmatch(node.value)
        ):
            value = node.value
        else:
            raise self.error(node, path, f"expected a number, got {node_kind(node)}")
        try:
            result = float(value)  # type: ignore[arg-type]
        except OverflowError:
            result = math.inf
        if not math.isfinite(result):
            raise self.error(node, path, f"{node.value} is not a finite number")
        return result

    def boolean(self, node: Node, path: str) -> bool:
        if not (isinstance(node, ScalarNode) and node.tag == TAG + "bool"):
            raise self.error(node, path, f"expected true or false, got {node_kind(node)}")
        return yaml.constructor.SafeConstructor().construct_yaml_bool(node)

    def choice(self, node: Node, path: str, choices: tuple[str, ...]) -> str:
        value = self.string(node, path, optional=True)
        if value not in choices:
            allowed = ", ".join(quote(c) for c in choices) if choices else "(none)"
            what = f"{quote(value)} is not one of {allowed}{_did_you_mean(value, choices)}"
            raise self.error(node, path, what)
        return value

    def text_list(self, items: dict, key: str, path: str) -> list[tuple[str, Node]]:
        """Stripped strings of an optional list key, each with its node."""
        if key not in items:
            return []
        path = f"{path}.{key}"
        nodes = self.sequence(items[key][1], path)
        return [(self.string(n, f"{path}[{i}]").strip(), n) for i, n in enumerate(nodes)]
