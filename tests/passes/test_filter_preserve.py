import numpy as np

from erasec.ir.printer import print_program
from erasec.passes.filter_preserve import FilterPreservePass
from erasec.passes.pipeline import Pipeline
from programs import named_preserve_program, random_program

def test_drops_whole_word_matches_case_insensitively_and_reports_them():
    out = FilterPreservePass().apply(named_preserve_program())
    kept = [p.prompt for p in out.spaces[0].preserve.provenance]
    assert kept == ["Van Goghish swirls", "Claude Monet"]
    text = print_program(out)
    assert "note [filter-preserve] preserve prompt 'VAN GOGH' names an erased concept ('VAN GOGH') and was dropped" in text
    assert "'a painting by van gogh' names an erased concept ('van gogh')" in text


def test_synonyms_count_as_phrases():
    out = FilterPreservePass().apply(named_preserve_program())
    # "vincent's": the apostrophe is a word boundary, so the synonym "Vincent" matches
    assert "vincent's starry night" not in [p.prompt for p in out.spaces[0].preserve.provenance]


def test_nothing_to_drop_returns_the_same_program():
    program = random_program(np.random.default_rng(0))
    assert FilterPreservePass().apply(program) is program


def test_round_trip():
    assert str(Pipeline.parse("filter-preserve")) == "filter-preserve"
