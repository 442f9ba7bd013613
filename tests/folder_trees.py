"""Folder trees in the layouts users keep their data in, built in a temporary folder from the real
samples of ../shared/data: symbolic links to the files, or small files derived from them."""

import csv
import json
import os
from pathlib import Path

import numpy as np
import rasterio
from PIL import Image

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
EUROSAT_MS = SHARED_DATA / "eurosat_ms"

# EuroSAT class -> a coarser land-cover group: a second, derived label for multi-label indexes.
EUROSAT_GROUPS = {
    "AnnualCrop": "agriculture",
    "Forest": "vegetation",
    "HerbaceousVegetation": "vegetation",
    "Highway": "built-up",
    "Industrial": "built-up",
    "Pasture": "agriculture",
    "PermanentCrop": "agriculture",
    "Residential": "built-up",
    "River": "water",
    "SeaLake": "water",
}

# A BigEarthNet 19-class name of the sample -> one 43-class name that the 19-class one groups.
BIGEARTHNET_19_TO_43 = {
    "Urban fabric": "Discontinuous urban fabric",
    "Industrial or commercial units": "Industrial or commercial units",
    "Arable land": "Non-irrigated arable land",
    "Pastures": "Pastures",
    "Complex cultivation patterns": "Complex cultivation patterns",
    "Land principally occupied by agriculture, with significant areas of natural vegetation": (
        "Land principally occupied by agriculture, with significant areas of natural vegetation"
    ),
    "Broad-leaved forest": "Broad-leaved forest",
    "Coniferous forest": "Coniferous forest",
    "Mixed forest": "Mixed forest",
    "Transitional woodland, shrub": "Transitional woodland/shrub",
    "Inland wetlands": "Inland marshes",
    "Inland waters": "Water bodies",
}

LANDSAT_TILE = 200  # Taizhou (400 x 400) cut into 2 x 2 tiles.
LANDSAT_TEST_TILES = ("r1_c1",)


def _link(target: Path, link: Path) -> Path:
    link.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(target, link)
    return link


def eurosat_rows() -> list[dict[str, str]]:
    """The rows of eurosat_ms/labels.csv, with a "split" of "test" for every 4th file of a class
    (in file order) and "train" for the others."""
    with open(EUROSAT_MS / "labels.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    seen: dict[str, int] = {}
    for row in rows:
        n = seen[row["class_name"]] = seen.get(row["class_name"], -1) + 1
        row["split"] = "test" if n % 4 == 3 else "train"
    return rows


def eurosat_class_tree(tmp: Path) -> Path:
    """`<root>/{train,test}/<Class>/<patch>.tif`: the 216 EuroSAT-MS GeoTIFFs, linked."""
    root = tmp / "eurosat_classes"
    for row in eurosat_rows():
        path = Path(row["path"])
        _link(EUROSAT_MS / path, root / row["split"] / row["class_name"] / path.name)
    return root


def eurosat_csv_split_roots(tmp: Path) -> tuple[Path, Path]:
    """(train root, test root), each `images/<patch>.tif` (linked) + `labels.csv` (path,label)."""
    roots = {split: tmp / f"eurosat_{split}" for split in ("train", "test")}
    listed: dict[str, list[tuple[str, str]]] = {split: [] for split in roots}
    for row in eurosat_rows():
        name = Path(row["path"]).name
        _link(EUROSAT_MS / row["path"], roots[row["split"]] / "images" / name)
        listed[row["split"]].append((f"images/{name}", row["class_name"]))
    for split, root in roots.items():
        with open(root / "labels.csv", "w", newline="") as f:
            csv.writer(f).writerows([("path", "label"), *listed[split]])
    return roots["train"], roots["test"]


def eurosat_index_root(tmp: Path, per_class: int = 4) -> Path:
    """`<root>/tifs/<patch>.tif` (the first `per_class` patches of each class, linked) and indexes:
    `multilabel.csv` (path,label = "<Class>;<group>", split), `multilabel.json` (a list of
    {"path", "labels": [class, group], "split"}) and `by_path.json` (path -> class)."""
    root = tmp / "eurosat_index"
    counts: dict[str, int] = {}
    chosen = []
    for row in eurosat_rows():
        counts[row["class_name"]] = counts.get(row["class_name"], 0) + 1
        if counts[row["class_name"]] <= per_class:
            chosen.append(row)
    entries = []
    for row in chosen:
        name = Path(row["path"]).name
        _link(EUROSAT_MS / row["path"], root / "tifs" / name)
        labels = [row["class_name"], EUROSAT_GROUPS[row["class_name"]]]
        entries.append({"path": f"tifs/{name}", "labels": labels, "split": row["split"]})
    with open(root / "multilabel.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(("path", "label", "split"))
        writer.writerows((e["path"], ";".join(e["labels"]), e["split"]) for e in entries)
    (root / "multilabel.json").write_text(json.dumps(entries))
    (root / "by_path.json").write_text(json.dumps({e["path"]: e["labels"][0] for e in entries}))
    return root


def bigearthnet_v1_tree(tmp: Path) -> Path:
    """The BigEarthNet sample with v1-style metadata: per patch "labels_19" (the v2 labels) and
    "labels_43" (`BIGEARTHNET_19_TO_43` of them), no "labels", split "validation" renamed "val";
    `patches/` linked."""
    source = SHARED_DATA / "bigearthnet_v2_s1s2"
    root = tmp / "bigearthnet_v1"
    metadata = json.loads((source / "metadata.json").read_text())
    for patch in metadata["patches"]:
        labels = patch.pop("labels")
        patch["labels_19"] = labels
        patch["labels_43"] = sorted({BIGEARTHNET_19_TO_43[name] for name in labels})
        patch["split"] = {"validation": "val"}.get(patch["split"], patch["split"])
    root.mkdir(parents=True)
    (root / "metadata.json").write_text(json.dumps(metadata))
    _link(source / "patches", root / "patches")
    return root


def sen1floods11_image_mask_tree(tmp: Path) -> Path:
    """`<root>/images/<chip>.tif` (S2Hand, 13 bands) and `<root>/masks/<chip>.tif` (LabelHand:
    -1 nodata, 0 no water, 1 water), linked."""
    source = SHARED_DATA / "sen1floods11_sample"
    root = tmp / "sen1floods11_folders"
    for s2 in sorted((source / "S2").glob("*_S2Hand.tif")):
        chip = s2.name.removesuffix("_S2Hand.tif")
        _link(s2, root / "images" / f"{chip}.tif")
        _link(source / "Labels" / f"{chip}_LabelHand.tif", root / "masks" / f"{chip}.tif")
    return root


def ukis_cloud_mask_tree(tmp: Path, scene: str = "landsat7") -> Path:
    """`<root>/images/<scene>.tif` (6-band TOA reflectance) and `<root>/masks/<scene>.png` (0
    cloud shadow, 1-3 clear, 4 cloud) of one UKIS scene, linked."""
    source = SHARED_DATA / "cloud_shadow_masks_ukis"
    root = tmp / "ukis_folders"
    _link(source / f"{scene}_img.tif", root / "images" / f"{scene}.tif")
    _link(source / f"{scene}_msk.png", root / "masks" / f"{scene}.png")
    return root


def taizhou_tiles() -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Tile stem "r<i>_c<j>" -> (t1 RGB, t2 RGB: uint8 [200, 200, 3] from Landsat B3, B2, B1;
    label: uint8 [200, 200], 255 where change.png is 255, else 0)."""
    folder = SHARED_DATA / "landsat_cd_taizhou_nanjing" / "Taizhou"
    dates = []
    for stem in ("t1", "t2"):
        (path,) = folder.glob(f"{stem}_*.tif")
        with rasterio.open(path) as f:
            dates.append(np.moveaxis(f.read([3, 2, 1]), 0, -1))
    with Image.open(folder / "change.png") as image:
        label = np.where(np.asarray(image) == 255, 255, 0).astype(np.uint8)
    tiles = {}
    for i in range(2):
        for j in range(2):
            rows = slice(i * LANDSAT_TILE, (i + 1) * LANDSAT_TILE)
            cols = slice(j * LANDSAT_TILE, (j + 1) * LANDSAT_TILE)
            tiles[f"r{i}_c{j}"] = (dates[0][rows, cols], dates[1][rows, cols], label[rows, cols])
    return tiles


def landsat_abl_png_tree(tmp: Path) -> Path:
    """`<root>/{train,test}/{A,B,label}/<tile>.png`: the Taizhou pair as RGB PNGs cut into 4 tiles
    (`taizhou_tiles`), `LANDSAT_TEST_TILES` in test."""
    root = tmp / "taizhou_abl"
    for stem, arrays in taizhou_tiles().items():
        split = "test" if stem in LANDSAT_TEST_TILES else "train"
        for part, array in zip(("A", "B", "label"), arrays):
            path = root / split / part / f"{stem}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(array).save(path)
    return root
