"""The pass contract: a frozen dataclass with a registered ``name`` and one ``apply``.

Modelled on xDSL's ``ModulePass`` (xdsl/passes.py): options are typed dataclass fields limited to
int, float, bool, str and ``Literal`` choices, so every pass has a text form
``name{opt-a=1 opt-b=fp16}`` that parses back to an equal pass. ``apply`` takes valid IR and
returns valid IR: a new program, or the very same object when nothing changed.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from abc import ABC, abstractmethod
from typing import Any, ClassVar, Literal

from erasec.ir import EditProgram

from .errors import PassError, PassOptionError


def option_text(field_name: str) -> str:
    """``max_error`` → ``max-error``; a trailing underscore (``lambda_``, a Python keyword) is dropped."""
    return field_name.rstrip("_").replace("_", "-")


def format_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        short = f"{value:g}"
        return short if float(short) == value else repr(value)
    return str(value)


def _convert(pass_name: str, option: str, annotation: Any, text: str) -> Any:
    where = f"{pass_name}{{{option}}}"
    origin = typing.get_origin(annotation)
    if origin is Literal:
        choices = typing.get_args(annotation)
        if text not in choices:
            raise PassOptionError(f"{where}: {text!r} is not one of {', '.join(map(str, choices))}")
        return text
    if annotation is bool:
        if text not in ("true", "false"):
            raise PassOptionError(f"{where}: {text!r} is not true or false")
        return text == "true"
    if annotation is int:
        try:
            return int(text)
        except ValueError:
            raise PassOptionError(f"{where}: {text!r} is not an integer") from None
    if annotation is float:
        try:
            value = float(text)
        except ValueError:
            raise PassOptionError(f"{where}: {text!r} is not a number") from None
        if not math.isfinite(value):
            raise PassOptionError(f"{where}: {text!r} is not a finite number")
        return value
    if annotation is str:
        return text
    raise TypeError(f"{pass_name}: option {option} has an unsupported type {annotation!r}")


class EditPass(ABC):
    """Base of every pass; subclasses are ``@dataclass(frozen=True, slots=True)``."""

    name: ClassVar[str]

    @abstractmethod
    def apply(self, program: EditProgram) -> EditProgram:
        """Valid IR in, valid IR out; return ``program`` itself when nothing changes."""

    @classmethod
    def from_options(cls, options: dict[str, str]) -> "EditPass":
        """Build from text options (``{"max-error": "1e-4"}``); rejects unknown options by name."""
        hints = typing.get_type_hints(cls)
        fields = {option_text(f.name): f for f in dataclasses.fields(cls)}
        kwargs = {}
        for option, text in options.items():
            if option not in fields:
                known = ", ".join(fields) or "none"
                raise PassOptionError(f"{cls.name}: unknown option {option!r}; options are: {known}")
            field = fields[option]
            kwargs[field.name] = _convert(cls.name, option, hints[field.name], text)
        return cls(**kwargs)

    @classmethod
    def option_help(cls) -> list[tuple[str, str, str]]:
        """(option, type, default) for ``erasec passes``."""
        hints = typing.get_type_hints(cls)
        rows = []
        for field in dataclasses.fields(cls):
            annotation = hints[field.name]
            if typing.get_origin(annotation) is Literal:
                kind = "|".join(map(str, typing.get_args(annotation)))
            else:
                kind = annotation.__name__
            rows.append((option_text(field.name), kind, format_value(field.default)))
        return rows

    def __str__(self) -> str:
        fields = dataclasses.fields(self)
        if not fields:
            return self.name
        args = " ".join(f"{option_text(f.name)}={format_value(getattr(self, f.name))}" for f in fields)
        return f"{self.name}{{{args}}}"

    def reads_erase_rows(self) -> bool:
        """True when the pass needs every erase row one by one (RECE's attacks, mined neighbours, the
        separable solve); the lowering then folds none of them into moments (``ir.Moments``)."""
        return False

    def reads_site_weights(self) -> bool:
        """True when the pass needs each edited site's base weight W0_l (SPEED's per-layer retain
        sets); the lowering then supplies them as ``SpaceProgram.site_rows``."""
        return False

    def reads_preserve_rows(self) -> bool:
        """True when the pass needs every preserve row one by one; the lowering then folds none."""
        return False

    def check_site_weights(self, program: EditProgram) -> None:
        """Raise ``PassError`` unless every key space with preserve rows carries its sites' base weights
        and keeps every preserve row explicit: this pass reads them."""
        for space in program.spaces:
            if space.preserve.total and not space.site_rows:
                raise PassError(
                    f"key space {space.space}: no base weights in the program; build with a pipeline that lists "
                    "this pass (the lowering then supplies them)"
                )
            if space.preserve.folded is not None:
                raise PassError(
                    f"key space {space.space}: needs every preserve row, but {space.preserve.folded.rows} are folded "
                    "into moments; build with a pipeline that lists this pass (the lowering then keeps them)"
                )

    def check_unfolded(self, program: EditProgram) -> None:
        """Raise ``PassError`` when a key space's erase rows were folded: this pass needs them all."""
        for space in program.spaces:
            if space.erase.folded is not None:
                raise PassError(
                    f"key space {space.space}: needs every erase row, but {space.erase.folded.rows} are folded "
                    "into moments; build with a pipeline that lists this pass (the lowering then keeps them)"
                )

    def check_range(self, option: str, value: float, low: float, high: float, *, low_open: bool = False) -> None:
        """Raise ``PassOptionError`` unless ``low ≤ value ≤ high`` (``low < value`` if ``low_open``)."""
        ok = (value > low if low_open else value >= low) and value <= high
        if not ok:
            bracket = "(" if low_open else "["
            raise PassOptionError(f"{self.name}{{{option}}}: {format_value(value)} is not in {bracket}{format_value(low)}, {format_value(high)}]")
