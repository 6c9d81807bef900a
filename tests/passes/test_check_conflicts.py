from dataclasses import replace

import numpy as np
import pytest

from erasec.ir import PreserveRows, Provenance
from erasec.ir.printer import print_program
from erasec.passes.check_conflicts import CheckConflictsPass
from erasec.passes.errors import PassError
from erasec.passes.pipeline import Pipeline
from programs import conflicting_program, random_program


def test_reports_both_kinds_of_conflict_naming_both_sides():
    out = CheckConflictsPass().apply(conflicting_program())
    lines = [line for line in print_program(out).splitlines() if "[check-conflicts]" in line]
    assert len(lines) == 2
    assert "erase 'Monet' (prompt 'Monet') lies in the preserved span (cosine 1.000); closest preserve prompt" in lines[0]
    assert "erase 'Bill Clinton' (prompt 'Bill Clinton') and 'Bill Murray' (prompt 'Bill Murray') share keys (cosine 1.000) but go to different anchors" in lines[1]


def test_error_mode_stops_with_the_first_conflict():
    with pytest.raises(PassError) as error:
        CheckConflictsPass(on_conflict="error").apply(conflicting_program())
    assert str(error.value).endswith("(and 1 more); set options.on_conflict: warn to build anyway")


def test_independent_requests_pass_untouched():
    program = random_program(np.random.default_rng(1), dim=16, erase=3, preserve=3, requests=("a", "b", "c"))
    assert CheckConflictsPass().apply(program) is program


def test_round_trip():
    text = "check-conflicts{threshold=0.9 on-conflict=error}"
    assert str(Pipeline.parse(text)) == text


def test_a_preserve_row_equal_to_an_erase_row_is_named():
    program = conflicting_program()
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
