"""Pipeline strings and the pass manager.

Grammar (whitespace allowed around ``,``; option values are bare words)::

    pipeline := pass ("," pass)*
    pass     := NAME [ "{" [ option (" "+ option)* ] "}" ]
    option   := NAME "=" VALUE
    NAME     := [a-z][a-z0-9-]*
    VALUE    := any run of characters other than space, ",", "{", "}", "="

``str(Pipeline.parse(text))`` is canonical — every option of every pass, in field order — and is
what a patch records as ``erasec.pipeline``. Errors give the 1-based column of the bad token.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

from erasec.ir import EditProgram, ErasecError
from erasec.ir.printer import print_program

from .base import EditPass
from .errors import PassCrash, PipelineSyntaxError
from .registry import get_pass_class, unknown_pass_hint

Callback = Callable[[EditPass | None, EditProgram, EditPass | None], None]

_NAME = re.compile(r"[a-z][a-z0-9-]*")
_VALUE = re.compile(r"[^\s,{}=]+")


class _Reader:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def error(self, message: str, pos: int | None = None) -> PipelineSyntaxError:
        column = (self.pos if pos is None else pos) + 1
        return PipelineSyntaxError(f"pipeline {self.text!r}: column {column}: {message}")

    def skip_space(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos].isspace():
            self.pos += 1

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def match(self, pattern: re.Pattern, what: str) -> str:
        found = pattern.match(self.text, self.pos)
        if not found:
            got = repr(self.peek()) if self.peek() else "the end"
            raise self.error(f"expected {what}, found {got}")
        self.pos = found.end()
        return found.group()


def _parse_pass(reader: _Reader) -> EditPass:
    start = reader.pos
    name = reader.match(_NAME, "a pass name")
    cls = get_pass_class(name)
    if cls is None:
        raise reader.error(f"unknown pass {name!r}{unknown_pass_hint(name)}", start)
    options: dict[str, str] = {}
    if reader.peek() == "{":
        reader.pos += 1
        reader.skip_space()
        while reader.peek() != "}":
            option_start = reader.pos
            option = reader.match(_NAME, "an option name")
            if option in options:
                raise reader.error(f"{name}: option {option!r} given twice", option_start)
            if reader.peek() != "=":
                raise reader.error(f"expected '=' after option {option!r}")
            reader.pos += 1
            options[option] = reader.match(_VALUE, f"a value for {option!r}")
            if reader.peek() not in (" ", "}") and not reader.peek().isspace():
                raise reader.error("expected a space or '}' after an option")
            reader.skip_space()
        reader.pos += 1
    try:
        return cls.from_options(options)
    except ErasecError as error:
        raise reader.error(str(error), start) from None


def ir_callback(
    emit: Callable[[str], None],
    *,
    print_after: tuple[str, ...] = (),
    print_changed: bool = False,
    verify_each: bool = False,
) -> Callback:
    """The driver's callback: ``--verify-each``, ``--print-ir-after=all|NAMES`` and
    ``--print-ir-changed`` (print after a pass only when it changed the program; a pass returns the
    very same object when nothing changed, so identity is the test, as LLVM's ``-print-changed``
    compares printed IR). ``emit`` receives each banner and printed program as one string."""
    wanted = set(print_after)
    seen: list[EditProgram] = []  # the program the current pass started from

    def callback(previous: EditPass | None, program: EditProgram, following: EditPass | None) -> None:
        changed = not seen or program is not seen[0]
        seen[:] = [program]
        if previous is None:
            return
        if verify_each:
            program.verify()
        if "all" in wanted or previous.name in wanted or (print_changed and changed):
            emit(f"// ----- IR after {previous} ----- //\n{print_program(program)}")

    return callback


@dataclass(frozen=True, slots=True)
class Pipeline:
    """A frozen sequence of passes plus an optional callback(previous, program, next).

    The driver's callback (``ir_callback``) implements ``--verify-each``, ``--print-ir-after`` and
    ``--print-ir-changed``; ``verify()`` always runs before the first and after the last pass. An
    exception inside a pass names the pass: an ``ErasecError`` keeps its type with the name
    prefixed, anything else is a bug and becomes ``PassCrash`` naming the passes run before it.
    """

    passes: tuple[EditPass, ...]
    callback: Callback | None = None

    @classmethod
    def parse(cls, text: str, callback: Callback | None = None) -> "Pipeline":
        reader = _Reader(text)
        reader.skip_space()
        if not reader.peek():
            raise reader.error("empty pipeline; give at least one pass")
        passes = [_parse_pass(reader)]
        reader.skip_space()
        while reader.peek():
            if reader.peek() != ",":
                raise reader.error(f"expected ',' or the end, found {reader.peek()!r}")
            reader.pos += 1
            reader.skip_space()
            passes.append(_parse_pass(reader))
            reader.skip_space()
        return cls(tuple(passes), callback)

    def __str__(self) -> str:
        return ",".join(str(p) for p in self.passes)

    def names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.passes)

    def reads_erase_rows(self) -> bool:
        """Whether any pass needs every erase row (``EditPass.reads_erase_rows``)."""
        return any(p.reads_erase_rows() for p in self.passes)

    def reads_site_weights(self) -> bool:
        """Whether any pass needs the edited sites' base weights (``EditPass.reads_site_weights``)."""
        return any(p.reads_site_weights() for p in self.passes)

    def reads_preserve_rows(self) -> bool:
        """Whether any pass needs every preserve row (``EditPass.reads_preserve_rows``)."""
        return any(p.reads_preserve_rows() for p in self.passes)

    def apply(self, program: EditProgram) -> EditProgram:
        program.verify()
        if self.callback is not None:
            self.callback(None, program, self.passes[0] if self.passes else None)
        for index, edit_pass in enumerate(self.passes):
            try:
                program = edit_pass.apply(program)
            except ErasecError as error:
                prefixed = _prefixed(error, edit_pass.name)
                prefixed.add_note(f"after the passes {list(self.names()[:index])}")
                raise prefixed from error
            except Exception as error:  # a bug in the pass: name it and those before it, keep the cause
                raise self._crash(index, error) from error
            if self.callback is not None:
                following = self.passes[index + 1] if index + 1 < len(self.passes) else None
                self.callback(edit_pass, program, following)
        program.verify()
        return program

    def _crash(self, index: int, error: Exception) -> PassCrash:
        """A non-erasec exception in pass ``index`` as a bug report naming the pass and those run
        before it (as onnx-ir's pass runner does); the whole pipeline text goes in a note so that the
        traceback says how to reproduce it."""
        before = [p.name for p in self.passes[:index]]
        crash = PassCrash(f"pass {self.passes[index].name!r} failed after {before}: {type(error).__name__}: {error}")
        crash.add_note(f"pipeline: {self}")
        return crash


def _prefixed(error: ErasecError, prefix: str) -> ErasecError:
    """``error`` with ``prefix: `` before its message, of the same type and attributes.

    Built without calling the subclass's constructor, which may take other arguments than one
    message; ``BaseException.__str__`` then reads the new ``args``."""
    cls = type(error)
    prefixed = cls.__new__(cls)
    prefixed.__dict__.update(error.__dict__)
    prefixed.args = (f"{prefix}: {error}",)
    return prefixed
