"""The one way tests run the ``erasec`` command in-process, and the spec texts they build from.

Importable as ``cli_helpers`` (pytest's ``pythonpath`` includes ``tests/``). ``cli`` is imported on
first use, so a module of ``ir``/``patches`` tests that calls ``run`` collects without loading the
compiler.

- ``run(*args)``: ``CliRunner().invoke`` with every argument turned into text; exceptions propagate
  (a traceback is a bug, never an expected outcome).
- ``ok_json(*args)``: ``run(*args, "--json")``, asserting exit 0, parsed.
- ``fails(args, message, code=2)``: asserts the refusal contract (exit ``code``, exactly one stderr
  line, starting ``erasec: error: `` and containing ``message``) and returns that line.
- ``spec_text(...)``: a spec in the layout the CLI tests use (``erasec``, ``name``, ``version``,
  ``model``, ``method``, ``erase`` as a block list, ``preserve`` as a flow list, then ``extra``);
  ``write_spec(folder, text)`` writes one.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from click.testing import Result

ERROR_PREFIX = "erasec: error: "

# erase entries as the specs write them (flow mappings, one per line)
VAN_GOGH = "{concept: Van Gogh, anchor: art}"
KELLY = "{concept: Kelly McKernan}"
RUTKOWSKI = "{concept: Greg Rutkowski, anchor: a painter}"
PRESERVE = ("Claude Monet", "a photo of a cat")


def run(*args, **kwargs) -> Result:
    """``erasec ARGS`` in-process; keyword arguments go to ``CliRunner.invoke`` (``input=``, ``env=``)."""
    from click.testing import CliRunner

    from erasec.compiler.cli import cli

    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False, **kwargs)


def ok_json(*args) -> dict:
    """``erasec ARGS --json``: asserts exit 0 and returns the parsed summary."""
    result = run(*args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def fails(args: Iterable, message: str, *, code: int = 2) -> str:
    """One line ``erasec: error: …`` on stderr containing ``message``, exit ``code``; returns the line."""
    result = run(*args)
    assert result.exit_code == code, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(ERROR_PREFIX), lines[0]
    assert message in lines[0], lines[0]
    return lines[0]


def spec_text(
    *,
    name: str = "no-van-gogh",
    version: str = "1.0.0",
    model: str = "builtin:tiny-sd1",
    method: str = "uce",
    erase: Iterable[str] = (VAN_GOGH,),
    preserve: Iterable[str] = ("Claude Monet",),
    extra: str = "",
) -> str:
    """The spec text; ``erase`` entries are written as given, one ``  - ENTRY`` line each."""
    lines = [
        "erasec: 1", f"name: {name}", f"version: {version}", f"model: {model}", f"method: {method}", "erase:",
        *(f"  - {entry}" for entry in erase),
        f"preserve: [{', '.join(preserve)}]",
    ]
    return "\n".join(lines) + "\n" + extra


def write_spec(folder: Path, text: str, name: str = "spec.yaml") -> Path:
    """``text`` written to ``folder/name`` (the folder is created); returns the path."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path
