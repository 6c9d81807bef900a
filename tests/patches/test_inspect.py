"""``erasec inspect``: the facts of a patch, from its header alone."""

from fake_patches import write_fake_patch

from erasec.patches.inspect import describe, render
from erasec.patches.read import read_patch


def test_inspect_describes_the_patch(tmp_path):
    patch = read_patch(write_fake_patch(tmp_path / "a.safetensors", concepts=("Van Gogh", "Monet")))
    facts = describe(patch)
    assert [e["concept"] for e in facts["erase"]] == ["Van Gogh", "Monet"]
    assert facts["rank"] == 1 and len(facts["layers"]) == 1 and facts["base"]["tensors"] == 1
    assert facts["sha256"] == patch.data_sha256 and not facts["linked"] and not facts["retargetable"]
    text = render(facts)
    assert "no-artists 1.0.0" in text and "Van Gogh" in text and "compose no (built without output.link)" in text


def test_a_report_whose_dropped_prompts_are_not_a_list_of_strings_is_refused(tmp_path):
    import json

    import pytest
    from fake_patches import recraft

    from erasec.patches.errors import PatchError

    patch = write_fake_patch(tmp_path / "a.safetensors")
    report = {"efficacy": {"Van Gogh": 0.9}, "specificity": 0.99}
    kept = recraft(patch, tmp_path / "ok.safetensors",
                   metadata={"erasec.report": json.dumps({**report, "dropped_preserve": ["a Van Gogh"]})})
    assert describe(read_patch(kept))["dropped_preserve"] == ["a Van Gogh"]
    bad = recraft(patch, tmp_path / "bad.safetensors", metadata={"erasec.report": json.dumps({**report, "dropped_preserve": [3]})})
    with pytest.raises(PatchError, match=r"bad.safetensors: erasec.report.dropped_preserve: is not a list of preserve prompts$"):
        read_patch(bad)
