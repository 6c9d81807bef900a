"""directed-augment (SPEED's DPA): per site, copies of the preserve rows moved along the site's
weakest input direction, the ones the plain erase edit moves more than average kept."""

import numpy as np
import pytest
from erasec.passes.directed_augment import DirectedAugmentPass
from erasec.passes.errors import PassError, PassOptionError
from erasec.passes.pipeline import Pipeline
from programs import random_program, site_rows_program


def _copies(site):
    return [(i, p) for i, p in enumerate(site.preserve.provenance) if "<augmented" in p.prompt]


def test_copies_differ_from_their_row_only_along_the_weakest_direction():
    program = site_rows_program(preserve=10)
    space = program.spaces[0]
    source = {(p.prompt, p.token): k for p, k in zip(space.preserve.provenance, space.preserve.keys)}
    out = DirectedAugmentPass(count=4).apply(program).spaces[0]
    for site in out.site_rows:
        vt = np.linalg.svd(site.weight)[2]
        weakest = vt[min(site.weight.shape) - 1]  # torch.svd(W)'s last right-singular vector
        copies = _copies(site)
        assert 0 < len(copies) < 4 * 10
        for i, p in copies:
            step = site.preserve.keys[i] - source[p.prompt.split(" <")[0], p.token]
            assert np.linalg.norm(step - (step @ weakest) * weakest) <= 1e-12 * np.linalg.norm(step)
        assert site.preserve.count == 10 + len(copies)


def test_the_seed_decides_the_copies():
    program = site_rows_program()
    first = DirectedAugmentPass(seed=3).apply(program).spaces[0].site_rows[0].preserve.keys
    again = DirectedAugmentPass(seed=3).apply(program).spaces[0].site_rows[0].preserve.keys
    other = DirectedAugmentPass(seed=4).apply(program).spaces[0].site_rows[0].preserve.keys
    assert np.array_equal(first, again)
    assert first.shape != other.shape or not np.allclose(first, other)


def test_count_zero_changes_nothing_and_reads_nothing():
    program = random_program(np.random.default_rng(0))
    augment = DirectedAugmentPass(count=0)
    assert augment.apply(program) is program
    assert not augment.reads_site_weights()


def test_refuses_a_program_without_base_weights():
    with pytest.raises(PassError, match=r"^key space clip-l: no base weights in the program"):
        DirectedAugmentPass().apply(random_program(np.random.default_rng(0)))


def test_refuses_a_negative_count():
    with pytest.raises(PassOptionError, match=r"^directed-augment\{count\}: -1 is not in \[0, 1000\]$"):
        DirectedAugmentPass(count=-1)


def test_pipeline_text_round_trip():
    text = "influence-filter,directed-augment{count=20 seed=7}"
    assert str(Pipeline.parse(text)) == text
    assert str(Pipeline.parse(str(Pipeline.parse("directed-augment")))) == "directed-augment{count=10 seed=0}"
