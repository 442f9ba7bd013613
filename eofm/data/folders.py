"""Sources over the folder layouts users keep their own data in.

- `class_folders`: one subfolder per class (EuroSAT, UC Merced, AID), optionally per split.
- `labelled_files`: a CSV or JSON index of path and label(s), single- or multi-label.
- `image_mask_folders`: segmentation images and masks in two folders, matched by file stem.
- `change_folders`: change-detection pairs `A/`, `B/` and a `label/` mask, matched by file stem.

Images are GeoTIFFs, read with `GeoTiffSource` (their bands named by `file_bands`, else by the
files' band descriptions, else the sensor's bands in registry order when the counts agree), or 8-bit
JPEG/PNG, read with `ImageFileSource` as sensor "rgb" (red, green, blue). Split names are matched
with `datasets.matching_splits` ("val", "valid" and "validation" are one split). The sources are
registered in `datasets.SOURCES` under their function names.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import rasterio.errors
from PIL import Image

from eofm import sensors as sensors_lib
from eofm.data import cube, datasets, raster
from eofm.data.datasets import IGNORE_INDEX, ImageFileSource, MaskedRasterSource
from eofm.data.sources import GeoTiffSource
from eofm.data.spec import SensorSpec

RASTER_SUFFIXES = (".tif", ".tiff")
EIGHT_BIT_SUFFIXES = (".jpg", ".jpeg", ".png")
IMAGE_SUFFIXES = RASTER_SUFFIXES + EIGHT_BIT_SUFFIXES
MASK_SUFFIXES = (".tif", ".tiff", ".png")
CHANGE_CLASSES = ("unchanged", "changed")


# ---------------------------------------------------------------------------------------------
# Sources that say where they come from


class _FromLayout:
    """Mixin of the sources below: names their folder or index in the repr, and lists the index
    first among the files read."""

    def __init__(self, *args, origin: str | os.PathLike, index: Path | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.origin = os.fspath(origin)
        self.index = None if index is None else os.fspath(index)

    def reads_from(self) -> dict[str, list[str]]:
        files = super().reads_from()["files"]
        return {"files": [self.index, *files] if self.index else files}

    def __repr__(self) -> str:
        (classes,) = self.label_names.values()
        shown = classes if len(classes) <= 12 else f"{len(classes)} classes"
        return (
            f"{type(self).__name__}({len(self)} examples from {self.origin}, {self.specs}, {shown})"
        )


class LabelledRasters(_FromLayout, GeoTiffSource):
    """`GeoTiffSource` of a class-folder tree or a labelled index."""


class LabelledImageFiles(_FromLayout, ImageFileSource):
    """`ImageFileSource` of a class-folder tree or a labelled index."""


class FolderMasks(_FromLayout, MaskedRasterSource):
    """`MaskedRasterSource` of image and mask folders matched by file stem."""


# ---------------------------------------------------------------------------------------------
# Files and split folders


def _check_folder(folder: Path) -> None:
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such folder")


def _subfolders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _files(folder: Path, suffixes: Sequence[str]) -> list[Path]:
    """Files directly in `folder` whose suffix (any case) is one of `suffixes`, sorted by name."""
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in suffixes)


def _split_folder(root: Path, split: str | None, splits: Sequence[str]) -> Path:
    """The subfolder of `root` for `split` among the split folders `splits` ([]: no split layer)."""
    if not splits:
        if split is not None:
            raise ValueError(f"{root}: has no split subfolders, so split={split!r} selects nothing")
        return root
    if split is None:
        raise ValueError(f"{root}: has split subfolders {list(splits)}; pass split= to pick one")
    names = datasets.matching_splits(split, splits, where=root)
    if len(names) > 1:
        raise ValueError(f"{root}: split {split!r} matches several folders {names}")
    return root / names[0]


def _layout_splits(root: Path, parts: Sequence[str]) -> list[str]:
    """Split folders of a layout with folders `parts`: [] when `root` holds them itself, else the
    subfolders of `root` that hold them all."""
    if all((root / part).is_dir() for part in parts):
        return []
    splits = [f.name for f in _subfolders(root) if all((f / p).is_dir() for p in parts)]
    if not splits:
        wanted = ", ".join(f"{p}/" for p in parts)
        raise FileNotFoundError(f"{root}: expected folders {wanted} in it or in root/<split>/")
    return splits


def _files_by_stem(folder: Path, suffixes: Sequence[str]) -> dict[str, Path]:
    """File stem -> file, for the files of `folder` with one of `suffixes`."""
    _check_folder(folder)
    out: dict[str, Path] = {}
    for path in _files(folder, suffixes):
        if path.stem in out:
            raise ValueError(
                f"{folder}: two files with stem {path.stem!r}: {out[path.stem]}, {path}"
            )
        out[path.stem] = path
    return out


def _matched_stems(folder: Path, files: Mapping[str, Mapping[str, Path]]) -> list[str]:
    """The stems present in every folder of `files` (folder name -> stem -> file), sorted.

    Raises:
        ValueError: listing, per folder, how many files have no match in the others, and some.
    """
    common = set.intersection(*(set(by_stem) for by_stem in files.values()))
    unmatched = {name: sorted(set(by_stem) - common) for name, by_stem in files.items()}
    if any(unmatched.values()):
        listed = "; ".join(
            f"{name}/: {len(stems)} of {len(files[name])} unmatched (e.g. {', '.join(stems[:3])})"
            for name, stems in unmatched.items()
            if stems
        )
        raise ValueError(f"{folder}: files not matched by stem across {list(files)}: {listed}")
    return sorted(common)


# ---------------------------------------------------------------------------------------------
# Image files: GeoTIFF or 8-bit RGB


def _is_raster(files: Sequence[Path]) -> bool:
    """Whether `files` are GeoTIFFs (else 8-bit JPEG/PNG); one kind per source."""
    rasters = [f for f in files if f.suffix.lower() in RASTER_SUFFIXES]
    others = [f for f in files if f.suffix.lower() not in RASTER_SUFFIXES]
    if rasters and others:
        raise ValueError(
            f"GeoTIFFs and 8-bit images are mixed (e.g. {rasters[0]} and {others[0]}); keep one"
            " kind per source"
        )
    return bool(rasters)


def _eight_bit_spec(first: Path, sensor: str | None, bands: Sequence[str] | None) -> SensorSpec:
    """Sensor "rgb" with all three bands: what an 8-bit RGB JPEG/PNG holds."""
    if sensor not in (None, "rgb"):
        raise ValueError(f"{first}: JPEG/PNG images are read as sensor 'rgb', not {sensor!r}")
    spec = SensorSpec.full("rgb")
    if bands is not None and SensorSpec("rgb", tuple(bands)).bands != spec.bands:
        raise ValueError(f"{first}: JPEG/PNG images yield red, green, blue, not bands {bands}")
    with Image.open(first) as image:
        mode = image.mode
    if mode != "RGB":
        raise ValueError(f"{first}: image mode {mode}; JPEG/PNG images here are 8-bit RGB")
    return spec


def _stored_bands(
    path: Path, sensor: sensors_lib.Sensor, file_bands: Sequence[str] | None
) -> tuple[str, ...]:
    """Registry names of the bands of GeoTIFF `path`, in file order: `file_bands`, else its band
    descriptions when they all name bands of `sensor`, else `sensor`'s bands when counts agree."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
            with rasterio.open(path) as f:
                count, descriptions = f.count, f.descriptions
    except rasterio.errors.RasterioError as e:
        raise raster.RasterReadError(f"{path}: cannot open raster: {e}") from e
    if file_bands is not None:
        if len(file_bands) != count:
            raise ValueError(
                f"{path}: has {count} bands, but file_bands names {len(file_bands)}:"
                f" {list(file_bands)}"
            )
        return sensor.resolve(tuple(file_bands))
    named = [cube.file_band_name(d, sensor) if d else None for d in descriptions]
    if all(named) and len(set(named)) == count:
        return tuple(named)
    if count == len(sensor):
        return sensor.band_names
    raise ValueError(
        f"{path}: has {count} bands without band descriptions naming them, and {sensor.name} has"
        f" {len(sensor)} ({', '.join(sensor.band_names)}); pass file_bands=[...] naming the"
        f" {count} bands in file order"
    )


def _raster_spec(
    first: Path,
    sensor: str | None,
    bands: Sequence[str] | None,
    file_bands: Sequence[str] | None,
) -> tuple[SensorSpec, tuple[str, ...]]:
    """(bands to yield: `bands`, default those stored in registry order; the stored bands)."""
    if sensor is None:
        raise ValueError(
            f"{first}: GeoTIFFs need sensor= naming a registry sensor (e.g. 'sentinel2_l1c', or"
            " 'rgb' for 8-bit RGB GeoTIFFs such as UC Merced's)"
        )
    info = sensors_lib.get_sensor(sensor)
    stored = _stored_bands(first, info, file_bands)
    wanted = tuple(bands) if bands else tuple(b for b in info.band_names if b in stored)
    return SensorSpec(sensor, wanted), stored


def _labelled_source(
    files: Sequence[Path],
    labels: Sequence[Any],
    class_names: Sequence[str],
    *,
    sensor: str | None,
    bands: Sequence[str] | None,
    file_bands: Sequence[str] | None,
    key: str,
    origin: str | os.PathLike,
    index: Path | None = None,
) -> LabelledRasters | LabelledImageFiles:
    """One labelled image per file: GeoTIFFs or 8-bit RGB images."""
    common = dict(key=key, labels=labels, label_names=class_names, origin=origin, index=index)
    if _is_raster(files):
        spec, stored = _raster_spec(files[0], sensor, bands, file_bands)
        return LabelledRasters(files, spec, file_bands=stored, **common)
    return LabelledImageFiles(files, _eight_bit_spec(files[0], sensor, bands), **common)


def _one_file_sources(
    files: Sequence[Path],
    *,
    sensor: str | None,
    bands: Sequence[str] | None,
    file_bands: Sequence[str] | None,
    key: str,
) -> list[GeoTiffSource | ImageFileSource]:
    """A source over each one of `files`, all with the bands of the first."""
    if _is_raster(files):
        spec, stored = _raster_spec(files[0], sensor, bands, file_bands)
        return [GeoTiffSource([f], spec, key=key, file_bands=stored) for f in files]
    spec = _eight_bit_spec(files[0], sensor, bands)
    return [ImageFileSource([f], spec, key=key) for f in files]


def _class_order(found: Iterable[str], classes: Sequence[str] | None, *, where: Path) -> list[str]:
    """`classes` when given (every found name must be one), else the found names sorted (by value
    when all are integers)."""
    found = set(found)
    if classes is None:
        numeric = all(name.lstrip("-").isdigit() for name in found)
        return sorted(found, key=int if numeric else None)
    unknown = sorted(found - set(classes))
    if unknown:
        raise ValueError(f"{where}: names {unknown} found here are not in classes={list(classes)}")
    return list(classes)


# ---------------------------------------------------------------------------------------------
# Classification: one folder per class


def _class_tree_splits(root: Path) -> list[str]:
    """Split folders of a class tree: [] when the subfolders of `root` hold images (classes), else
    the subfolders that hold class folders."""
    folders = _subfolders(root)
    if any(_files(f, IMAGE_SUFFIXES) for f in folders):
        return []
    return [f.name for f in folders if _subfolders(f)]


def class_folders(
    root: str | os.PathLike,
    *,
    split: str | None = None,
    sensor: str | None = None,
    bands: Sequence[str] | None = None,
    file_bands: Sequence[str] | None = None,
    key: str = "image",
    classes: Sequence[str] | None = None,
) -> LabelledRasters | LabelledImageFiles:
    """Images in one subfolder per class (EuroSAT, UC Merced, AID).

    Layout `root/<class>/<image>` or, with splits, `root/<split>/<class>/<image>` (then `split`
    picks one). Images: GeoTIFF (`sensor` needed) or 8-bit RGB JPEG/PNG, one kind per tree. Class
    indices follow the folder names sorted, or `classes` (which must name every class folder).
    Item: `{key: f32[H, W, C], key_valid, "id": path, "label": int}`.
    """
    root = Path(root)
    _check_folder(root)
    folder = _split_folder(root, split, _class_tree_splits(root))
    found = [f.name for f in _subfolders(folder)]
    names = _class_order(found, classes, where=folder)
    missing = [name for name in names if name not in found]
    if missing:
        raise ValueError(f"{folder}: no folder for classes {missing} (class folders: {found})")
    files, labels = [], []
    for index, name in enumerate(names):
        images = _files(folder / name, IMAGE_SUFFIXES)
        if not images:
            raise ValueError(f"{folder / name}: no images ({', '.join(IMAGE_SUFFIXES)})")
        files += images
        labels += [index] * len(images)
    datasets.require_examples(len(files), root, split)
    return _labelled_source(
        files,
        labels,
        names,
        sensor=sensor,
        bands=bands,
        file_bands=file_bands,
        key=key,
        origin=folder,
    )


# ---------------------------------------------------------------------------------------------
# Classification: an index of path, label(s)


def _csv_entries(index: Path) -> list[dict[str, Any]]:
    with open(index, newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    if not {"path", "label"} <= set(reader.fieldnames or ()):
        raise ValueError(
            f"{index}: needs columns path and label (and optionally split); it has"
            f" {reader.fieldnames}"
        )
    return rows


def _json_entries(index: Path) -> list[dict[str, Any]]:
    data = json.loads(index.read_text())
    if isinstance(data, dict):
        return [{"path": path, "label": label} for path, label in data.items()]
    entries = []
    for i, entry in enumerate(data if isinstance(data, list) else [data]):
        if (
            not isinstance(entry, dict)
            or "path" not in entry
            or not entry.keys() & {"label", "labels"}
        ):
            raise ValueError(
                f"{index}: entry {i} is {entry!r}; expected a list of {{'path', 'labels' or"
                " 'label', optional 'split'}} or a dict path -> label(s)"
            )
        label = entry["labels"] if "labels" in entry else entry["label"]
        extra = {"split": entry["split"]} if "split" in entry else {}
        entries.append({"path": entry["path"], "label": label, **extra})
    return entries


def _is_multi_label(entries: Sequence[Mapping[str, Any]], separator: str) -> bool:
    """Whether some label is a list, or a string holding `separator`."""
    return any(isinstance(e["label"], list) or separator in str(e["label"]) for e in entries)


def _names_of(label: Any, separator: str, multi: bool) -> list[str]:
    """The class names of one index entry's label."""
    if isinstance(label, list):
        return [str(v).strip() for v in label]
    if multi:
        return [n.strip() for n in str(label).split(separator) if n.strip()]
    return [str(label).strip()]


def _encode_labels(
    entries: Sequence[Mapping[str, Any]], class_names: Sequence[str], multi: bool
) -> list[Any]:
    """Per entry: the index of its class (int), or a float32 multi-hot [K] of its classes."""
    column = {name: i for i, name in enumerate(class_names)}
    labels = []
    for entry in entries:
        if multi:
            hot = np.zeros(len(class_names), np.float32)
            hot[[column[n] for n in entry["names"]]] = 1.0
            labels.append(hot)
        else:
            labels.append(column[entry["names"][0]])
    return labels


def labelled_files(
    index: str | os.PathLike,
    *,
    root: str | os.PathLike | None = None,
    split: str | None = None,
    sensor: str | None = None,
    bands: Sequence[str] | None = None,
    file_bands: Sequence[str] | None = None,
    key: str = "image",
    classes: Sequence[str] | None = None,
    label_separator: str = ";",
) -> LabelledRasters | LabelledImageFiles:
    """Images listed with their labels in a CSV or JSON index.

    CSV (any suffix but .json): columns `path,label` and optionally `split`. JSON: a list of
    `{"path", "labels" or "label", optional "split"}` or a dict path -> label(s). Paths are
    relative to `root` (default: the index's folder). Multi-label when a JSON label is a list or a
    label holds `label_separator` ("a;b"): "label" is then a float32 multi-hot [K], else an int.
    Classes: `classes` (fixes the order), else all names of the index (every split) sorted, by
    value when all are integers. Sources built from different indexes (separate train and test
    roots) agree on the classes only when `classes` is given.
    """
    index = Path(index)
    root = index.parent if root is None else Path(root)
    entries = _json_entries(index) if index.suffix.lower() == ".json" else _csv_entries(index)
    multi = _is_multi_label(entries, label_separator)
    entries = [{**e, "names": _names_of(e["label"], label_separator, multi)} for e in entries]
    unlabelled = [e["path"] for e in entries if not multi and not e["names"][0]]
    if unlabelled:
        raise ValueError(f"{index}: {len(unlabelled)} entries have no label (e.g. {unlabelled[0]})")
    names = _class_order({n for e in entries for n in e["names"]}, classes, where=index)
    entries = datasets.rows_of_split(entries, split, where=index)
    datasets.require_examples(len(entries), index, split)
    labels = _encode_labels(entries, names, multi)
    files = [root / entry["path"] for entry in entries]
    missing = [f for f in files if not f.is_file()]
    if missing:
        raise FileNotFoundError(
            f"{index}: {len(missing)} of {len(files)} listed files are missing under {root}"
            f" (e.g. {', '.join(map(os.fspath, missing[:3]))})"
        )
    origin = index if split is None else f"{index} [{split}]"
    return _labelled_source(
        files,
        labels,
        names,
        sensor=sensor,
        bands=bands,
        file_bands=file_bands,
        key=key,
        origin=origin,
        index=index,
    )


# ---------------------------------------------------------------------------------------------
# Dense: images and masks matched by stem


def _read_mask_file(path: str) -> np.ndarray:
    """A single-band mask (GeoTIFF or PNG; grey stored as equal RGB channels too) as [H, W]."""
    if Path(path).suffix.lower() in RASTER_SUFFIXES:
        array, _ = raster.read_raster(path)
    else:
        with Image.open(path) as image:
            array = np.asarray(image)
    if array.ndim == 3 and (array.shape[-1] == 1 or (array == array[..., :1]).all()):
        array = array[..., 0]
    if array.ndim != 2:
        raise ValueError(f"{path}: a mask has one band; this one has shape {array.shape}")
    return array


@dataclasses.dataclass(frozen=True)
class MaskValues:
    """Reads a mask file as int32[H, W] class indices: the position of each pixel's value in
    `class_values`, `IGNORE_INDEX` (-1) for the values of `ignored`; other values are an error."""

    class_values: tuple[float, ...]
    ignored: tuple[float, ...] = ()
    hint: str = ""

    def __call__(self, files: Sequence[str], example_id: str) -> np.ndarray:
        (path,) = files
        values = _read_mask_file(path)
        mask = np.full(values.shape, IGNORE_INDEX, np.int32)
        known = np.isin(values, self.ignored)
        for index, value in enumerate(self.class_values):
            hit = values == value
            mask[hit] = index
            known |= hit
        if not known.all():
            unexpected = np.unique(values[~known])
            raise ValueError(
                f"{path} ({example_id}): mask values {unexpected[:10].tolist()} are neither class"
                f" values {list(self.class_values)} nor ignored values {list(self.ignored)}"
                f"{self.hint}"
            )
        return mask


def _mask_values(
    masks: Sequence[Path],
    classes: Sequence[str] | None,
    class_values: Sequence[float] | None,
    ignored: Sequence[float],
) -> tuple[list[float], list[str]]:
    """(pixel value of each class, class names): `class_values` and/or `classes`, else the values
    0..K-1 up to the largest value found in `masks`."""
    if class_values is not None:
        names = list(classes) if classes is not None else [str(v) for v in class_values]
        if len(names) != len(class_values):
            raise ValueError(f"{len(names)} classes for {len(class_values)} class_values")
        return list(class_values), names
    if classes is not None:
        return list(range(len(classes))), list(classes)
    found = np.unique(np.concatenate([np.unique(_read_mask_file(m)) for m in masks]))
    found = found[~np.isin(found, ignored)]
    if found.size == 0 or found.min() < 0 or not np.all(found == np.round(found)):
        raise ValueError(
            f"masks such as {masks[0]} hold values {found[:10].tolist()}; pass classes= or"
            " class_values= (and nodata= or ignore_values= for the unlabelled values)"
        )
    count = int(found.max()) + 1
    return list(range(count)), [str(v) for v in range(count)]


def image_mask_folders(
    root: str | os.PathLike,
    *,
    images: str = "images",
    masks: str = "masks",
    split: str | None = None,
    sensor: str | None = None,
    bands: Sequence[str] | None = None,
    file_bands: Sequence[str] | None = None,
    key: str = "image",
    classes: Sequence[str] | None = None,
    nodata: float | None = None,
    ignore_values: Sequence[float] = (),
    class_values: Sequence[float] | None = None,
) -> FolderMasks:
    """Segmentation images and single-band masks in two folders, matched by file stem.

    Layout `root/{images,masks}/<stem>.<ext>` or `root/<split>/{images,masks}/...`. Images:
    GeoTIFF (`sensor` needed) or 8-bit RGB JPEG/PNG; masks: GeoTIFF or PNG. Mask pixel values
    map to classes: `class_values[i]` is class i; without them, class i is value i (K =
    `len(classes)`, or the largest value in the masks + 1, all masks read once). `nodata` and
    `ignore_values` become -1 (ignored); any other value is an error. Item: `{key, key_valid,
    "mask": int32[H, W], "id": stem}`.
    """
    root = Path(root)
    _check_folder(root)
    folder = _split_folder(root, split, _layout_splits(root, (images, masks)))
    files = {
        images: _files_by_stem(folder / images, IMAGE_SUFFIXES),
        masks: _files_by_stem(folder / masks, MASK_SUFFIXES),
    }
    stems = _matched_stems(folder, files)
    datasets.require_examples(len(stems), root, split)
    mask_files = [files[masks][s] for s in stems]
    ignored = tuple(v for v in (nodata, *ignore_values) if v is not None)
    values, names = _mask_values(mask_files, classes, class_values, ignored)
    both = sorted(set(values) & set(ignored))
    if both:
        raise ValueError(f"{folder}: values {both} are both class values and ignored")
    reader = MaskValues(tuple(values), ignored)
    reader([os.fspath(mask_files[0])], stems[0])  # A wrong value mapping fails here, not later.
    sources = _one_file_sources(
        [files[images][s] for s in stems],
        sensor=sensor,
        bands=bands,
        file_bands=file_bands,
        key=key,
    )
    return FolderMasks(
        stems,
        [{key: source} for source in sources],
        [[m] for m in mask_files],
        reader,
        names,
        origin=folder,
    )


def change_folders(
    root: str | os.PathLike,
    *,
    split: str | None = None,
    before: str = "A",
    after: str = "B",
    label: str = "label",
    change_value: float = 255,
    sensor: str = "rgb",
    sensor_before: str | None = None,
    sensor_after: str | None = None,
    bands: Sequence[str] | None = None,
    file_bands: Sequence[str] | None = None,
    keys: Sequence[str] = ("t1", "t2"),
    ignore_value: float | None = None,
) -> FolderMasks:
    """Bi-temporal change detection: images before and after, and a change label, by file stem.

    Layout (LEVIR-CD, DSIFN, OSCD-style) `root/{A,B,label}/<stem>.<ext>` or
    `root/<split>/{A,B,label}/...`; the label may have another extension than the images (A/x.jpg,
    label/x.png). Each date is read as `sensor_before` / `sensor_after` (default `sensor`), with
    `bands` and `file_bands` for both. "mask" is int32[H, W]: 1 where the label equals
    `change_value`, 0 where it is 0, -1 where it equals `ignore_value`; any other value is an
    error. Item: `{keys[0], keys[1] (+ _valid), "mask", "id": stem}`; classes `CHANGE_CLASSES`.
    """
    if len(keys) != 2 or keys[0] == keys[1]:
        raise ValueError(f"change_folders: keys are two different names, not {keys}")
    root = Path(root)
    _check_folder(root)
    folder = _split_folder(root, split, _layout_splits(root, (before, after, label)))
    files = {
        before: _files_by_stem(folder / before, IMAGE_SUFFIXES),
        after: _files_by_stem(folder / after, IMAGE_SUFFIXES),
        label: _files_by_stem(folder / label, MASK_SUFFIXES),
    }
    stems = _matched_stems(folder, files)
    datasets.require_examples(len(stems), root, split)
    reader = MaskValues(
        (0, change_value),
        () if ignore_value is None else (ignore_value,),
        hint=f"; change_value={change_value!r} must be the value the labels use for change",
    )
    label_files = [files[label][s] for s in stems]
    reader([os.fspath(label_files[0])], stems[0])  # A wrong change_value fails here, not later.
    dates = {}
    for key, part, date_sensor in (
        (keys[0], before, sensor_before),
        (keys[1], after, sensor_after),
    ):
        dates[key] = _one_file_sources(
            [files[part][s] for s in stems],
            sensor=date_sensor or sensor,
            bands=bands,
            file_bands=file_bands,
            key=key,
        )
    return FolderMasks(
        stems,
        [{key: sources[i] for key, sources in dates.items()} for i in range(len(stems))],
        [[f] for f in label_files],
        reader,
        CHANGE_CLASSES,
        origin=folder,
    )


datasets.SOURCES.update(
    class_folders=class_folders,
    labelled_files=labelled_files,
    image_mask_folders=image_mask_folders,
    change_folders=change_folders,
)
