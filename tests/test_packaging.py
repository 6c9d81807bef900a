"""`pip install .` gives a working `erasec` command (a wheel built and installed in a fresh venv)."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_installs_a_working_command(tmp_path):
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels), str(ROOT)],
        check=True,
        capture_output=True,
    )
    (wheel,) = wheels.glob("erasec-*.whl")
    venv = tmp_path / "venv"
    # the fresh venv sees this interpreter's packages (torch, diffusers, …) but not erasec's source tree;
    # --ignore-installed: CI has already installed erasec into those packages, and pip would stop there
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True)
    pip = venv / "bin" / "pip"
    subprocess.run([str(pip), "install", "--no-deps", "--ignore-installed", "-q", str(wheel)], check=True, capture_output=True)
    result = subprocess.run([str(venv / "bin" / "erasec"), "--version"], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "erasec 0.1.0"
    listing = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import erasec.ir, erasec.compiler.models.tokenizer as t, importlib.resources as r;"
         "d = r.files('erasec.compiler') / 'data';"
         "print((d / 'bpe_simple_vocab_16e6.txt.gz').is_file() and (d / 'suites' / 'coco.csv').is_file(), erasec.ir.__file__)"],
        capture_output=True, text=True, cwd=tmp_path,
    )
    found, location = listing.stdout.split()
    assert found == "True", listing.stderr
    assert Path(location).is_relative_to(venv), f"imported {location}, not the wheel"



def test_every_package_folder_is_in_the_wheel():
    """A sub-package missing from pyproject's explicit list works in an editable checkout and is
    absent from an installed erasec (CI installs one): every folder with an __init__.py is listed."""
    import tomllib

    root = Path(__file__).resolve().parents[1]
    config = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]
    folders = {f"erasec.{name}": name for name in ("compiler", "ir", "passes", "backends", "patches")}
    found = {
        ".".join(["erasec", *init.parent.relative_to(root).parts])
        for top in folders.values()
        for init in (root / top).rglob("__init__.py")
    }
    assert found - set(config["packages"]) == set()
