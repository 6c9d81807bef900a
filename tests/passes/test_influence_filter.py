"""influence-filter (SPEED's IPF): per site, the preserve rows whose ‖Δ0_l r‖ is above the mean."""

from dataclasses import replace

import numpy as np
import pytest
from erasec.ir import Moments
from erasec.passes.errors import PassError
from erasec.passes.influence_filter import InfluenceFilterPass
from erasec.passes.pipeline import Pipeline
from programs import random_program, site_rows_program, with_space


def test_each_site_keeps_the_rows_its_plain_edit_moves_more_than_average():
    program = site_rows_program(preserve=10)
    space = program.spaces[0]
    K, G, w = space.erase.keys.T, space.erase.guides.T, space.erase.weights
    s_tt, s_at = (K * w) @ K.T, (G * w) @ K.T
    plain = (s_at - s_tt) @ np.linalg.inv(np.eye(K.shape[0]) + s_tt)  # the script's (I + S_tt).inverse()
    out = InfluenceFilterPass().apply(program).spaces[0]
    for site in out.site_rows:
        scores = np.linalg.norm(space.preserve.keys @ (site.weight @ plain).T, axis=1)
        expected = [p for p, s in zip(space.preserve.provenance, scores) if s > scores.mean()]
        assert list(site.preserve.provenance) == expected
        assert 0 < len(expected) < 10
    assert out.preserve.count == 10  # the space's rows stay for sites without their own


def test_the_filter_changes_the_edit():
    program = site_rows_program(preserve=4)
    pipeline = "orthogonalize{soft=false},solve"
    plain = Pipeline.parse(pipeline).apply(program).solution.spaces[0]
    filtered = Pipeline.parse("influence-filter," + pipeline).apply(program).solution.spaces[0]
    assert plain.form == "shared" and filtered.form == "per-layer"
    site = program.spaces[0].site_rows[0]
    ours = filtered.delta(site.module_path, site.weight)
    assert np.linalg.norm(ours - plain.delta(site.module_path, site.weight)) > 1e-3 * np.linalg.norm(ours)


def test_refuses_a_program_without_base_weights():
    program = random_program(np.random.default_rng(0))
    with pytest.raises(PassError, match=r"^key space clip-l: no base weights in the program; build with a pipeline that lists this pass \(the lowering then supplies them\)$"):
        InfluenceFilterPass().apply(program)


def test_refuses_folded_preserve_rows():
    program = site_rows_program()
    rows = program.spaces[0].preserve
    folded = Moments(gram=rows.keys.T @ rows.keys, plain=rows.keys.T @ rows.keys, rows=rows.count, weight=float(rows.count), prompts=("p",))
    program = with_space(program, preserve=replace(rows, folded=folded))
    with pytest.raises(PassError, match=r"^key space clip-l: needs every preserve row, but 8 are folded into moments"):
        InfluenceFilterPass().apply(program)


def test_without_preserve_rows_nothing_changes():
    program = site_rows_program(preserve=0)
    assert InfluenceFilterPass().apply(program) is program


def test_pipeline_text_round_trip():
    pipeline = Pipeline.parse("influence-filter")
    assert str(pipeline) == "influence-filter"
    assert pipeline.reads_site_weights() and pipeline.reads_preserve_rows()
