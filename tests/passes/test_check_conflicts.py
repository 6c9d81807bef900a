from dataclasses import replace

import numpy as np
import pytest

from erasec.ir import EraseRows, PreserveRows, Provenance
from erasec.ir.printer import print_program
from erasec.passes.check_conflicts import CheckConflictsPass
from erasec.passes.errors import PassError
from erasec.passes.pipeline import Pipeline
from programs import random_program


def _program():
    rng = np.random.default_rng(0)
    program = random_program(rng, dim=8, erase=1, preserve=0, requests=("Bill Clinton", "Bill Murray", "Monet"))
    a, b, c, u = rng.standard_normal((4, 8))
    keys = np.stack([a, a + 0.01 * b, c + u])
    guides = np.stack([b, c, b])
    erase = EraseRows(
        keys=keys,
        guides=guides,
        weights=np.ones(3),
        provenance=tuple(Provenance(request=r, prompt=r, token=2) for r in ("Bill Clinton", "Bill Murray", "Monet")),
    )
    preserve = PreserveRows(
        keys=np.stack([c, u]),  # Monet's row is their sum: in the span, close to neither
        weights=np.ones(2),
        provenance=(Provenance(request="preserve", prompt="Claude Monet", token=3), Provenance(request="preserve", prompt="a cat", token=3)),
    )
    return replace(program, spaces=(replace(program.spaces[0], erase=erase, preserve=preserve),))


def test_reports_both_kinds_of_conflict_naming_both_sides():
    out = CheckConflictsPass().apply(_program())
    lines = [line for line in print_program(out).splitlines() if "[check-conflicts]" in line]
    assert len(lines) == 2
    assert "erase 'Monet' (prompt 'Monet') lies in the preserved span (cosine 1.000); closest preserve prompt" in lines[0]
    assert "erase 'Bill Clinton' (prompt 'Bill Clinton') and 'Bill Murray' (prompt 'Bill Murray') share keys (cosine 1.000) but go to different anchors" in lines[1]


def test_error_mode_stops_with_the_first_conflict():
    with pytest.raises(PassError) as error:
        CheckConflictsPass(on_conflict="error").apply(_program())
    assert str(error.value).endswith("(and 1 more); set options.on_conflict: warn to build anyway")


def test_independent_requests_pass_untouched():
    program = random_program(np.random.default_rng(1), dim=16, erase=3, preserve=3, requests=("a", "b", "c"))
    assert CheckConflictsPass().apply(program) is program


def test_round_trip():
    text = "check-conflicts{threshold=0.9 on-conflict=error}"
    assert str(Pipeline.parse(text)) == text


def test_a_preserve_row_equal_to_an_erase_row_is_named():
    program = _program()
    space = program.spaces[0]
    twin = PreserveRows(
        keys=space.erase.keys[2:3] * 3.0,
        weights=np.ones(1),
        provenance=(Provenance(request="preserve", prompt="Claude Monet", token=3),),
    )
    out = CheckConflictsPass().apply(replace(program, spaces=(replace(space, preserve=twin),)))
    assert "erase 'Monet' (prompt 'Monet') is preserved too (cosine 1.000); closest preserve prompt 'Claude Monet'" in print_program(out)


def test_a_preserve_set_spanning_the_space_is_not_a_conflict_by_itself():
    """A prior of many rows spans all directions; only near-identical single rows are reported then."""
    rng = np.random.default_rng(3)
    program = random_program(rng, dim=8, erase=2, preserve=40, requests=("a", "b"))
    assert CheckConflictsPass().apply(program) is program
