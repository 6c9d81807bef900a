from dataclasses import replace

import numpy as np

from erasec.ir import PreserveRows, Provenance
from erasec.ir.printer import print_program
from erasec.passes.filter_preserve import FilterPreservePass
from erasec.passes.pipeline import Pipeline
from programs import random_program

PROMPTS = ["a painting by van gogh", "Van Goghish swirls", "Claude Monet", "VAN GOGH", "vincent's starry night"]


def _program():
    program = random_program(np.random.default_rng(0), dim=4, erase=2, preserve=0, requests=("Van Gogh",))
    preserve = PreserveRows(
        keys=np.random.default_rng(1).standard_normal((len(PROMPTS), 4)),
        weights=np.ones(len(PROMPTS)),
        provenance=tuple(Provenance(request="preserve", prompt=p, token=0) for p in PROMPTS),
    )
    program = replace(program, spaces=(replace(program.spaces[0], preserve=preserve),))
    return replace(program, phrases=(("Van Gogh", "Vincent"),))


def test_drops_whole_word_matches_case_insensitively_and_reports_them():
    out = FilterPreservePass().apply(_program())
    kept = [p.prompt for p in out.spaces[0].preserve.provenance]
    assert kept == ["Van Goghish swirls", "Claude Monet"]
    text = print_program(out)
    assert "note [filter-preserve] preserve prompt 'VAN GOGH' names an erased concept ('VAN GOGH') and was dropped" in text
    assert "'a painting by van gogh' names an erased concept ('van gogh')" in text


def test_synonyms_count_as_phrases():
    out = FilterPreservePass().apply(_program())
    # "vincent's": the apostrophe is a word boundary, so the synonym "Vincent" matches
    assert "vincent's starry night" not in [p.prompt for p in out.spaces[0].preserve.provenance]


def test_nothing_to_drop_returns_the_same_program():
    program = random_program(np.random.default_rng(0))
    assert FilterPreservePass().apply(program) is program


def test_round_trip():
    assert str(Pipeline.parse("filter-preserve")) == "filter-preserve"
