"""Pipeline strings: parse ↔ print, and errors that point at the column."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from erasec.passes.errors import PipelineSyntaxError
from erasec.passes.pipeline import Pipeline
from erasec.passes.registry import get_pass_class, pass_names


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
