from dataclasses import replace

import numpy as np
import pytest

from erasec.ir import EraseRows

from erasec.ir.printer import print_program
from erasec.passes.errors import PassError, PassOptionError
from erasec.passes.mine_neighbors import MineNeighborsPass
from erasec.passes.pipeline import Pipeline
from programs import as_per_layer, base_weights, random_program


def test_neighbours_lie_within_the_radius_and_keep_the_guide():
    program = random_program(np.random.default_rng(0), dim=6, erase=2)
    out = MineNeighborsPass(count=5, radius=0.2, weight=0.5).apply(program)
    rows, source = out.spaces[0].erase, program.spaces[0].erase
    assert rows.count == 2 + 10
    for i in range(2):
        mined = slice(2 + 5 * i, 2 + 5 * (i + 1))
        distance = np.linalg.norm(rows.keys[mined] - source.keys[i], axis=1) / np.linalg.norm(source.keys[i])
        assert np.all((distance > 0) & (distance <= 0.2 + 1e-12))
        np.testing.assert_array_equal(rows.guides[mined], np.repeat(source.guides[i][None], 5, axis=0))
        np.testing.assert_allclose(rows.weights[mined], 0.5 * source.weights[i])
    assert "prompt='x ~1'" in print_program(out)


def test_mined_rows_do_not_depend_on_row_order():
    program = random_program(np.random.default_rng(0), dim=6, erase=3, requests=("a", "b", "c"))
    space = program.spaces[0]
    e = space.erase
    order = [2, 0, 1]
    permuted = EraseRows(
        keys=e.keys[order], guides=e.guides[order], weights=e.weights[order], provenance=tuple(e.provenance[i] for i in order)
    )
    a = MineNeighborsPass(count=3).apply(program).spaces[0].erase
    b = MineNeighborsPass(count=3).apply(replace(program, spaces=(replace(space, erase=permuted),))).spaces[0].erase

    def by_prompt(rows):
        return {(p.request, p.prompt): rows.keys[i].tobytes() for i, p in enumerate(rows.provenance)}

    assert by_prompt(a) == by_prompt(b)


def test_per_layer_targets_are_refused():
    rng = np.random.default_rng(0)
    program = random_program(rng)
    with pytest.raises(PassError, match="per-layer targets cannot be mined"):
        MineNeighborsPass().apply(as_per_layer(program, base_weights(program.target, rng)))


def test_refuses_a_zero_radius():
    with pytest.raises(PassOptionError, match=r"^mine-neighbors\{radius\}: 0 is not in \(0, 2\]$"):
        MineNeighborsPass(radius=0.0)


def test_round_trip():
    text = "mine-neighbors{count=8 radius=0.05 seed=3 weight=0.5}"
    assert str(Pipeline.parse(text)) == text


def test_folded_erase_rows_stay_folded_and_the_explicit_ones_are_mined():
    """A diffusion transformer's padded rows fold once they outnumber the key width; the pass mines
    the explicit (subject) rows and keeps the moments as they were, so the lowering may fold."""
    from erasec.ir import MomentSum

    program = random_program(np.random.default_rng(3))
    space = program.spaces[0]
    rng = np.random.default_rng(4)
    extra = rng.standard_normal((6, space.erase.keys.shape[1]))
    fold = MomentSum(extra.shape[1], cross=True)
    fold.add(extra, np.ones(6), ["p"] * 6, rng.standard_normal(extra.shape))
    folded = replace(space.erase, folded=fold.result())
    program = replace(program, spaces=(replace(space, erase=folded), *program.spaces[1:]))
    assert not MineNeighborsPass(count=3).reads_erase_rows()
    mined = MineNeighborsPass(count=3).apply(program).spaces[0].erase
    assert mined.count == 4 * space.erase.count
    assert mined.folded is folded.folded
