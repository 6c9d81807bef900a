import numpy as np
import pytest

from erasec.ir.linalg import regeneration_embeddings, regeneration_gap
from erasec.passes.adversarial import AdversarialPass
from erasec.passes.errors import PassError, PassOptionError
from erasec.passes.pipeline import Pipeline
from programs import random_program, with_site_gram


def _program(seed=0, dim=12, erase=3):
    rng = np.random.default_rng(seed)
    return with_site_gram(random_program(rng, dim=dim, erase=erase, preserve=4, lam=0.5), rng)


def _shared(program):
    solution = Pipeline.parse("solve").apply(program).solution.spaces[0]
    return np.eye(solution.left.shape[0]) + solution.left @ solution.right.T


def test_attack_embedding_is_the_closed_form_minimiser():
    """c' minimises Σ_l ‖W0_l T c' − W0_l c‖² + λ‖c'‖², checked against a plain stacked least squares."""
    program, weights = _program()
    T = _shared(program)
    keys = program.spaces[0].erase.keys
    lam = 0.1
    got = regeneration_embeddings(T, program.spaces[0].site_gram, keys, lam)
    stacked = np.concatenate([w @ T for w in weights.values()] + [np.sqrt(lam) * np.eye(T.shape[0])])
    for c, c_attack in zip(keys, got):
        target = np.concatenate([w @ c for w in weights.values()] + [np.zeros(T.shape[0])])
        expected, *_ = np.linalg.lstsq(stacked, target, rcond=None)
        np.testing.assert_allclose(c_attack, expected, rtol=1e-8, atol=1e-10)


def test_each_round_pushes_the_attack_further_away():
    program, _ = _program(seed=1, dim=16, erase=2)
    keys, gram = program.spaces[0].erase.keys, program.spaces[0].site_gram
    gaps = [regeneration_gap(_shared(program), gram, keys, 0.1).mean()]
    for rounds in (1, 2, 3):
        hardened = AdversarialPass(rounds=rounds, lambda_=0.1).apply(program)
        assert hardened.spaces[0].erase.count == 2 * (rounds + 1)
        gaps.append(regeneration_gap(_shared(hardened), gram, keys, 0.1).mean())
    assert all(later > earlier for earlier, later in zip(gaps, gaps[1:])), gaps


def test_needs_the_site_gram():
    program = random_program(np.random.default_rng(0))
    with pytest.raises(PassError, match="no site Gram in the program"):
        AdversarialPass().apply(program)


def test_zero_rounds_is_a_no_op_and_options_are_checked():
    program, _ = _program()
    assert AdversarialPass(rounds=0).apply(program) is program
    with pytest.raises(PassOptionError, match=r"^adversarial\{lambda\}: 0 is not in \(0, 1e\+06\]$"):
        AdversarialPass(lambda_=0.0)


def test_round_trip_uses_the_lambda_spelling():
    text = "adversarial{rounds=2 lambda=0.001 weight=1}"
    assert str(Pipeline.parse(text)) == text


def test_rece_recipes_by_name_and_their_text_form():
    from erasec.passes.rece import RecePass

    assert str(Pipeline.parse("rece").passes[0]) == (
        "rece{recipe=nudity rounds=3 attack-lambda=0.1 lambda=0.1 preserve-scale=0.1 retain=blank max-condition=1e+12}"
    )
    artist = Pipeline.parse("rece{recipe=artist}").passes[0]
    assert (artist.rounds, artist.attack_lambda, artist.retain) == (1, 1e-3, "spec")
    assert Pipeline.parse("rece{recipe=unsafe rounds=5}").passes[0].rounds == 5
    assert Pipeline.parse(str(artist)).passes[0] == artist
    with pytest.raises(PassOptionError, match=r"^rece\{rounds\}: 21 is not in \[0, 20\]$"):
        RecePass(rounds=21)


def test_rece_refuses_a_program_without_attack_rows():
    program, _ = _program()
    with pytest.raises(PassError) as error:
        Pipeline.parse("rece").apply(program)
    assert str(error.value) == (
        "rece: key space clip-l: no attack rows; RECE's rounds need method rece's lowering (not options.pooled)"
    )
