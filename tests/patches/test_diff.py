"""``erasec diff``: changes between two patch versions and the semver rule."""

import pytest
from cli_helpers import run
from fake_patches import write_fake_patch

from erasec.patches.diff import diff_patches, render, version_bump
from erasec.patches.read import read_patch


@pytest.mark.parametrize(
    ("old", "new", "bump"),
    [
        ("1.0.0", "2.0.0", "major"),
        ("1.2.3", "1.3.0", "minor"),
        ("1.2.3", "1.2.4", "patch"),
        ("1.2.3", "1.2.3", "none"),
        ("1.2.3", "1.2.2", "downgrade"),
        ("1.2.3", "1.10.0", "minor"),
        ("1.2.3-rc.1", "1.2.3", "none"),
        ("x", "1.0.0", "invalid"),
    ],
)
def test_version_bump(old, new, bump):
    assert version_bump(old, new) == bump


def _diff(tmp_path, old: dict, new: dict) -> dict:
    a = write_fake_patch(tmp_path / "a.safetensors", **old)
    b = write_fake_patch(tmp_path / "b.safetensors", seed=1, **new)
    return diff_patches(read_patch(a), read_patch(b))


def test_removing_a_concept_needs_a_major_bump(tmp_path):
    result = _diff(tmp_path, {"concepts": ("A", "B")}, {"concepts": ("A",), "version": "1.1.0"})
    assert result["concepts"] == {"added": [], "removed": ["B"], "changed": []}
    assert result["version"] == {
        "bump": "minor",
        "required": "major",
        "reasons": ["concept removed: B"],
        "matches": False,
    }
    assert "version bump minor; the changes need major: does NOT match" in render(result)


def test_adding_a_concept_is_minor_and_a_major_bump_also_matches(tmp_path):
    result = _diff(tmp_path, {"concepts": ("A",)}, {"concepts": ("A", "C"), "version": "2.0.0"})
    assert result["concepts"]["added"] == ["C"]
    assert (result["version"]["required"], result["version"]["matches"]) == ("minor", True)


def test_a_changed_base_is_major(tmp_path):
    result = _diff(tmp_path, {}, {"base_seed": 7, "version": "1.0.1"})
    assert result["base_changed"] is True
    assert result["version"]["required"] == "major" and not result["version"]["matches"]


def test_options_and_preserve_changes_are_patch_level(tmp_path):
    result = _diff(tmp_path, {}, {"lam": 0.9, "preserve": ("Claude Monet", "a cat"), "version": "1.0.1"})
    assert result["options"] == [{"key": "options.lambda", "old": None, "new": 0.9}]
    assert result["preserve"] == {"added": ["a cat"], "removed": []}
    assert result["version"]["required"] == "patch" and result["version"]["matches"]
    text = render(result)
    assert "~ options.lambda: None → 0.9" in text and "+ preserve a cat" in text


def test_new_weights_under_the_same_version_do_not_match(tmp_path):
    result = _diff(tmp_path, {}, {})
    assert result["weights_changed"] and result["version"]["required"] == "patch"
    assert result["version"]["bump"] == "none" and not result["version"]["matches"]


def test_the_cli_exits_1_when_the_bump_does_not_match_and_0_when_it_does(tmp_path):
    """A hub's CI gates on the exit code (issue 12 item 7): 1 is 'the check answered no'."""
    a = write_fake_patch(tmp_path / "a.safetensors", concepts=("A", "B"))
    short = write_fake_patch(tmp_path / "short.safetensors", seed=1, concepts=("A",), version="1.1.0")
    major = write_fake_patch(tmp_path / "major.safetensors", seed=1, concepts=("A",), version="2.0.0")
    refused = run("diff", a, short)
    assert refused.exit_code == 1, refused.output
    assert refused.output.rstrip().endswith("version bump minor; the changes need major: does NOT match")
    assert run("diff", a, short, "--json").exit_code == 1
    accepted = run("diff", a, major)
    assert accepted.exit_code == 0 and accepted.output.rstrip().endswith("the changes need major: matches")


@pytest.mark.parametrize("which", ["old", "new"])
def test_a_folder_given_as_a_patch_is_named_a_folder(tmp_path, which):
    patch = write_fake_patch(tmp_path / "a.safetensors")
    folder = tmp_path / "hub"
    folder.mkdir()
    args = (patch, folder) if which == "new" else (folder, patch)
    result = run("diff", *args)
    assert result.exit_code == 2
    assert result.output.strip() == f"erasec: error: {folder}: is a folder; give a patch file (.safetensors)"
