"""Pipeline strings: parse ↔ print, and errors that point at the column."""

from dataclasses import dataclass, replace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from erasec.ir import EditProgram, EraseRows, ErasecError
from erasec.ir.printer import print_program
from erasec.passes.base import EditPass
from erasec.passes.canonicalize import CanonicalizePass
from erasec.passes.errors import PassCrash, PassError, PipelineSyntaxError
from erasec.passes.filter_preserve import FilterPreservePass
from erasec.passes.pipeline import Pipeline, ir_callback
from erasec.passes.registry import get_pass_class, pass_names
from erasec.passes.solve import SolvePass
from programs import random_program


def test_canonical_text_lists_every_option():
    pipeline = Pipeline.parse(" canonicalize ,solve{max-condition=1e10},compress{dtype=fp16}")
    assert str(pipeline) == "canonicalize{eps=1e-09},solve{max-condition=1e+10},compress{dtype=fp16 max-rank=0 max-error=0}"
    assert str(Pipeline.parse(str(pipeline))) == str(pipeline)


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "pipeline '': column 1: empty pipeline; give at least one pass"),
        ("canonicalize,solv", "pipeline 'canonicalize,solv': column 14: unknown pass 'solv'; did you mean 'solve'?"),
        ("solve,,x", "pipeline 'solve,,x': column 7: expected a pass name, found ','"),
        ("solve solve", "pipeline 'solve solve': column 7: expected ',' or the end, found 's'"),
        (
            "solve{max-cond=3}",
            "pipeline 'solve{max-cond=3}': column 1: solve: unknown option 'max-cond'; options are: max-condition",
        ),
        (
            "solve{max-condition=abc}",
            "pipeline 'solve{max-condition=abc}': column 1: solve{max-condition}: 'abc' is not a number",
        ),
        (
            "solve{max-condition=0.5}",
            "pipeline 'solve{max-condition=0.5}': column 1: solve{max-condition}: 0.5 is not in [1, 1e+15]",
        ),
        (
            "compress{dtype=fp8}",
            "pipeline 'compress{dtype=fp8}': column 1: compress{dtype}: 'fp8' is not one of fp32, fp16, bf16",
        ),
        ("compress{dtype}", "pipeline 'compress{dtype}': column 15: expected '=' after option 'dtype'"),
        (
            "invariants{bos=true bos=false}",
            "pipeline 'invariants{bos=true bos=false}': column 21: invariants: option 'bos' given twice",
        ),
        ("invariants{bos=yes}", "pipeline 'invariants{bos=yes}': column 1: invariants{bos}: 'yes' is not true or false"),
    ],
)
def test_errors_name_the_column(text, message):
    with pytest.raises(PipelineSyntaxError) as error:
        Pipeline.parse(text)
    assert str(error.value) == message


values = {
    "canonicalize": {"eps": st.floats(0, 1e-3).map(repr)},
    "solve": {"max-condition": st.floats(1, 1e15).map(repr)},
    "compress": {
        "dtype": st.sampled_from(["fp32", "fp16", "bf16"]),
        "max-rank": st.integers(0, 100000).map(str),
        "max-error": st.floats(0, 1).map(repr),
    },
    "adversarial": {
        "rounds": st.integers(0, 20).map(str),
        "lambda": st.floats(1e-9, 1e6).map(repr),
        "weight": st.floats(1e-9, 1e6).map(repr),
    },
    "mine-neighbors": {
        "count": st.integers(0, 1000).map(str),
        "radius": st.floats(1e-6, 2).map(repr),
        "seed": st.integers(0, 2**31).map(str),
    },
    "orthogonalize": {
        "mode": st.sampled_from(["hard", "separable"]),
        "tau": st.floats(1e-12, 1e12).map(repr),
        "soft": st.sampled_from(["true", "false"]),
    },
    "check-conflicts": {
        "threshold": st.floats(1e-6, 1).map(repr),
        "on-conflict": st.sampled_from(["warn", "error"]),
    },
    "filter-preserve": {},
    "invariants": {
        "bos": st.sampled_from(["true", "false"]),
        "empty": st.sampled_from(["true", "false"]),
        "centroids": st.integers(0, 77).map(str),
    },
}


@st.composite
def pipeline_texts(draw):
    parts = []
    for name in draw(st.lists(st.sampled_from(sorted(values)), min_size=1, max_size=5)):
        options = draw(st.fixed_dictionaries({}, optional=values[name]))
        body = " ".join(f"{k}={draw(v) if not isinstance(v, str) else v}" for k, v in options.items())
        parts.append(f"{name}{{{body}}}" if options else name)
    return ",".join(parts)


@settings(max_examples=150, deadline=None)
@given(pipeline_texts())
def test_print_parse_round_trip(text):
    printed = str(Pipeline.parse(text))
    reparsed = Pipeline.parse(printed)
    assert str(reparsed) == printed
    assert reparsed.passes == Pipeline.parse(text).passes


def test_every_registered_pass_round_trips_its_defaults():
    for name in pass_names():
        default = get_pass_class(name)()
        assert Pipeline.parse(str(default)).passes == (default,)


class _SpanError(PassError):
    """An error type whose constructor does not take one message (the pipeline must not call it)."""

    def __init__(self, where: str, what: str) -> None:
        super().__init__(f"{where}: {what}")
        self.where = where


@dataclass(frozen=True, slots=True)
class _RaisingPass(EditPass):
    """Raises a numpy error, a Python bug or a two-argument erasec error (test-only, not registered)."""

    name = "raising"
    kind: str = "linalg"

    def apply(self, program: EditProgram) -> EditProgram:
        if self.kind == "linalg":
            np.linalg.cholesky(-np.eye(2))  # a real numpy LinAlgError
        if self.kind == "bug":
            return program.no_such_field
        raise _SpanError("key space clip-l", "two-argument error")


def _pipeline(*passes):
    return Pipeline((CanonicalizePass(), FilterPreservePass(), *passes, SolvePass()))


def test_a_non_erasec_exception_is_a_crash_naming_the_pass_and_those_before_it():
    with pytest.raises(PassCrash) as error:
        _pipeline(_RaisingPass()).apply(random_program(np.random.default_rng(0)))
    assert str(error.value) == (
        "pass 'raising' failed after ['canonicalize', 'filter-preserve']: LinAlgError: Matrix is not positive definite"
    )
    assert not isinstance(error.value, ErasecError)  # a bug: the CLI must not print it as a user error
    cause = error.value.__cause__
    assert isinstance(cause, np.linalg.LinAlgError) and cause.__traceback__ is not None
    assert error.value.__notes__ == [
        "pipeline: canonicalize{eps=1e-09},filter-preserve,raising{kind=linalg},solve{max-condition=1e+12}"
    ]


def test_a_bug_in_the_first_pass_names_no_pass_before_it():
    with pytest.raises(PassCrash) as error:
        Pipeline((_RaisingPass(kind="bug"),)).apply(random_program(np.random.default_rng(0)))
    assert str(error.value) == (
        "pass 'raising' failed after []: AttributeError: 'EditProgram' object has no attribute 'no_such_field'"
    )
    assert isinstance(error.value.__cause__, AttributeError)


def test_an_erasec_error_keeps_its_type_and_attributes_with_the_pass_name_prefixed():
    with pytest.raises(_SpanError) as error:
        _pipeline(_RaisingPass(kind="span")).apply(random_program(np.random.default_rng(0)))
    assert str(error.value) == "raising: key space clip-l: two-argument error"
    assert error.value.where == "key space clip-l"
    assert error.value.__notes__ == ["after the passes ['canonicalize', 'filter-preserve']"]
    assert str(error.value.__cause__) == "key space clip-l: two-argument error"


def _emitted(program, text="canonicalize,filter-preserve,solve", **options):
    emitted = []
    out = Pipeline.parse(text, ir_callback(emitted.append, **options)).apply(program)
    return out, emitted


def test_print_ir_changed_prints_only_the_passes_that_changed_the_program():
    program = random_program(np.random.default_rng(0))  # no duplicates, no named preserve prompt
    out, emitted = _emitted(program, print_changed=True)
    assert emitted == [f"// ----- IR after solve{{max-condition=1e+12}} ----- //\n{print_program(out)}"]
    # canonicalize changes a program with a duplicate erase row: then it prints too
    space = program.spaces[0]
    rows = space.erase
    erase = EraseRows(
        keys=np.vstack([rows.keys, rows.keys[:1]]),
        guides=np.vstack([rows.guides, rows.guides[:1]]),
        weights=np.concatenate([rows.weights, [1.0]]),
        provenance=rows.provenance + rows.provenance[:1],
    )
    _, emitted = _emitted(replace(program, spaces=(replace(space, erase=erase),)), print_changed=True)
    assert [text.splitlines()[0] for text in emitted] == [
        "// ----- IR after canonicalize{eps=1e-09} ----- //",
        "// ----- IR after solve{max-condition=1e+12} ----- //",
    ]


def test_print_ir_after_names_and_all_print_changed_or_not():
    program = random_program(np.random.default_rng(0))
    _, emitted = _emitted(program, print_after=("filter-preserve",))
    assert emitted == [f"// ----- IR after filter-preserve ----- //\n{print_program(program)}"]
    _, emitted = _emitted(program, print_after=("all",), print_changed=True)
    assert len(emitted) == 3  # each pass once, never twice
    _, emitted = _emitted(program)
    assert emitted == []
