"""Dataset definitions: where the files are, which sensor and band order, labels, licence.

Each function returns a grain random-access source (see `eofm.data.sources`). `make_source(name,
**kwargs)` builds one by name, which is how configs and `scripts/prepare_arrayrecord.py` refer to
them.
"""

from __future__ import annotations

import csv
import difflib
import inspect
import io
import json
import os
import zipfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from eofm import sensors as sensors_lib
from eofm.data import cube, raster, validity
from eofm.data.sources import (
    BandFilesItem,
    BandFilesSource,
    CubeWindowSource,
    GeoTiffSource,
    ModisSource,
    band_nodata,
    find_band_files,
)
from eofm.data.spec import SensorSpec, check_band_count, image_and_mask, valid_key

# ---------------------------------------------------------------------------------------------
# Splits

# Names that mean the same split, compared case-insensitively.
SPLIT_ALIASES = (("train", "training"), ("val", "valid", "validation"), ("test", "testing"))


def split_aliases(split: str) -> set[str]:
    """Lower-cased names meaning `split`: its alias group, or the name alone."""
    name = split.lower()
    return next((set(group) for group in SPLIT_ALIASES if name in group), {name})


def matching_splits(split: str, present: Iterable[str], *, where: str | os.PathLike) -> list[str]:
    """The names among `present` that mean `split` ("val" finds "validation", ...).

    Raises:
        ValueError: naming `where` and the split names present, when none means `split`.
    """
    present = sorted(set(present))
    wanted = split_aliases(split)
    found = [name for name in present if name.lower() in wanted]
    if not found:
        raise ValueError(f"{where}: no split {split!r}; the splits present are {present}")
    return found


def rows_of_split(
    rows: Sequence[Mapping[str, Any]], split: str | None, *, where: str | os.PathLike
) -> list[Mapping[str, Any]]:
    """The rows whose "split" means `split` (all rows for None)."""
    if split is None:
        return list(rows)
    if any("split" not in row for row in rows):
        raise ValueError(f"{where} has no split column, so split={split!r} selects nothing")
    names = matching_splits(split, (row["split"] for row in rows), where=where)
    return [row for row in rows if row["split"] in names]


def require_examples(count: int, root: str | os.PathLike, split: str | None) -> None:
    """Raises a ValueError naming `root` and `split` when a source would have no example."""
    if count == 0:
        in_split = "" if split is None else f" in split {split!r}"
        raise ValueError(f"{root}: no examples{in_split}")


# ---------------------------------------------------------------------------------------------
# EuroSAT-MS

EUROSAT_CLASSES = (
    "AnnualCrop",
    "Forest",
    "HerbaceousVegetation",
    "Highway",
    "Industrial",
    "Pasture",
    "PermanentCrop",
    "Residential",
    "River",
    "SeaLake",
)

# Band order inside the EuroSAT-MS GeoTIFFs, established from the pixels (tests/test_datasets.py):
# the channel after B12 tracks B07/B08 (r >= 0.98), so it is B8A; channel 9 has a median of about 11
# DN, so it is B10 (cirrus). The files therefore do NOT follow ESA order B01..B08, B8A, B09...
EUROSAT_MS_FILE_BANDS = (
    "B01",
    "B02",
    "B03",
    "B04",
    "B05",
    "B06",
    "B07",
    "B08",
    "B09",
    "B10",
    "B11",
    "B12",
    "B8A",
)

EUROSAT_CITATION = (
    "Helber et al., EuroSAT: A Novel Dataset and Deep Learning Benchmark for Land Use"
    " and Land Cover Classification, IEEE JSTARS 2019. Licence: MIT."
)


def eurosat_ms(
    root: str | os.PathLike,
    *,
    split: str | None = None,
    bands: Sequence[str] | None = None,
    key: str = "s2",
) -> GeoTiffSource:
    """EuroSAT-MS: 64x64 Sentinel-2 L1C patches, 13 bands (reflectance x 1e4), 10 classes.

    `root` holds `labels.csv` (path, class_name, class_index, split). Bands are yielded in the order
    requested (default: ESA order, all 13), whatever the order inside the files. `split` accepts
    the aliases of `SPLIT_ALIASES`.
    """
    root = Path(root)
    rows = rows_of_split(_read_csv(root / "labels.csv"), split, where=root / "labels.csv")
    require_examples(len(rows), root, split)
    spec = SensorSpec("sentinel2_l1c", tuple(bands)) if bands else SensorSpec.full("sentinel2_l1c")
    return GeoTiffSource(
        [root / r["path"] for r in rows],
        spec,
        key=key,
        file_bands=EUROSAT_MS_FILE_BANDS,
        labels=[int(r["class_index"]) for r in rows],
        label_names=EUROSAT_CLASSES,
    )


def _read_csv(path: Path) -> list[dict[str, str]]:
    if not path.exists():
        raise FileNotFoundError(f"{path} not found")
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# ---------------------------------------------------------------------------------------------
# BigEarthNet v2 (reBEN), paired Sentinel-1 + Sentinel-2

BIGEARTHNET_19_CLASSES = (
    "Urban fabric",
    "Industrial or commercial units",
    "Arable land",
    "Permanent crops",
    "Pastures",
    "Complex cultivation patterns",
    "Land principally occupied by agriculture, with significant areas of natural vegetation",
    "Agro-forestry areas",
    "Broad-leaved forest",
    "Coniferous forest",
    "Mixed forest",
    "Natural grassland and sparsely vegetated areas",
    "Moors, heathland and sclerophyllous vegetation",
    "Transitional woodland, shrub",
    "Beaches, dunes, sands",
    "Inland wetlands",
    "Coastal wetlands",
    "Inland waters",
    "Marine waters",
)

# The 43 CORINE Land Cover level-3 classes of BigEarthNet v1 (Sumbul et al., IGARSS 2019), in the
# order and spelling of the "original_labels" of the label_indices.json that BigEarthNet v1 ships.
BIGEARTHNET_43_CLASSES = (
    "Continuous urban fabric",
    "Discontinuous urban fabric",
    "Industrial or commercial units",
    "Road and rail networks and associated land",
    "Port areas",
    "Airports",
    "Mineral extraction sites",
    "Dump sites",
    "Construction sites",
    "Green urban areas",
    "Sport and leisure facilities",
    "Non-irrigated arable land",
    "Permanently irrigated land",
    "Rice fields",
    "Vineyards",
    "Fruit trees and berry plantations",
    "Olive groves",
    "Pastures",
    "Annual crops associated with permanent crops",
    "Complex cultivation patterns",
    "Land principally occupied by agriculture, with significant areas of natural vegetation",
    "Agro-forestry areas",
    "Broad-leaved forest",
    "Coniferous forest",
    "Mixed forest",
    "Natural grassland",
    "Moors and heathland",
    "Sclerophyllous vegetation",
    "Transitional woodland/shrub",
    "Beaches, dunes, sands",
    "Bare rock",
    "Sparsely vegetated areas",
    "Burnt areas",
    "Inland marshes",
    "Peatbogs",
    "Salt marshes",
    "Salines",
    "Intertidal flats",
    "Water courses",
    "Water bodies",
    "Coastal lagoons",
    "Estuaries",
    "Sea and ocean",
)
BIGEARTHNET_LABEL_SETS = {19: BIGEARTHNET_19_CLASSES, 43: BIGEARTHNET_43_CLASSES}

BIGEARTHNET_CITATION = (
    "Clasen et al., reBEN: Refined BigEarthNet Dataset for Remote Sensing Image Analysis, IGARSS"
    " 2025; Sumbul et al., BigEarthNet-MM, IEEE GRSM 2021. Licence: CDLA-Permissive-1.0. Contains"
    " modified Copernicus Sentinel data."
)

# Arrays of one patch: file stem -> bands, at 10, 20 and 60 m.
BIGEARTHNET_ARRAYS = {
    "s2_10m": ("B02", "B03", "B04", "B08"),
    "s2_20m": ("B05", "B06", "B07", "B8A", "B11", "B12"),
    "s2_60m": ("B01", "B09"),
    "s1": ("VV", "VH"),
}

DEMO_DATA = Path(__file__).parent / "demo" / "bigearthnet_v2_s1s2_24.npz"


def _bigearthnet_labels(patch: Mapping[str, Any], label_set: int) -> list[str] | None:
    """A patch's class names in `label_set`: v1-style "labels_19" / "labels_43", else the v2
    19-class "labels"; None when the metadata has none of that set."""
    key = f"labels_{label_set}"
    if key in patch:
        return patch[key]
    return patch.get("labels") if label_set == 19 else None


class BigEarthNetSource:
    """BigEarthNet S1+S2 pairs with 19- or 43-class multi-labels.

    Reads either the folder layout `metadata.json` + `patches/<patch_id>/{s1,s2_10m,s2_20m,s2_60m}.npy`
    (native resolutions, channels first) or the same content packed in one `.npz` (the vendored demo
    set, `DEMO_DATA`). Sentinel-2 L2A bands (12, ESA order) are resampled to the 10 m grid (120x120)
    with `resampling`; Sentinel-1 VV, VH are in dB. "label" is a float32 multi-hot vector over
    `BIGEARTHNET_19_CLASSES` (`label_set=19`) or `BIGEARTHNET_43_CLASSES` (43). A patch's class
    names come from "labels_19" / "labels_43" (BigEarthNet v1 metadata), else from "labels" (v2,
    19 classes). `split` accepts the aliases of `SPLIT_ALIASES` (v1 says "val", v2 "validation").
    The products carry processing baseline N9999 (reprocessed without the +1000 offset), so no
    offset is removed.
    """

    def __init__(
        self,
        root: str | os.PathLike = DEMO_DATA,
        *,
        split: str | None = None,
        keys: Sequence[str] = ("s2", "s1"),
        resampling: str = "bilinear",
        label_set: int = 19,
    ):
        raster.resampling_method(resampling)
        if label_set not in BIGEARTHNET_LABEL_SETS:
            raise ValueError(f"BigEarthNet label_set is 19 or 43, not {label_set!r}")
        unknown = set(keys) - {"s2", "s1"}
        if unknown:
            raise ValueError(
                f"unknown BigEarthNet keys {sorted(unknown)}; expected 's2' and/or 's1'"
            )
        self.root = Path(root)
        self.resampling = resampling
        self._packed = self.root.suffix == ".npz"
        metadata = json.loads(self._read_bytes("metadata.json"))
        where = self.root if self._packed else self.root / "metadata.json"
        self.patches = rows_of_split(metadata["patches"], split, where=where)
        require_examples(len(self.patches), self.root, split)
        unlabelled = [
            p["patch_id"] for p in self.patches if _bigearthnet_labels(p, label_set) is None
        ]
        if unlabelled:
            raise ValueError(
                f"{where}: label_set={label_set} needs 'labels_{label_set}' in the metadata of"
                f" each patch; {len(unlabelled)} patches (e.g. {unlabelled[0]}) have only"
                " 19-class labels"
            )
        self.label_set = label_set
        all_specs = {"s2": SensorSpec.full("sentinel2_l2a"), "s1": SensorSpec.full("sentinel1_grd")}
        self.specs = {k: all_specs[k] for k in keys}
        self.label_names = {"label": list(BIGEARTHNET_LABEL_SETS[label_set])}
        self._arrays = self._load_packed() if self._packed else None

    def _read_bytes(self, name: str) -> bytes:
        if self._packed:
            with zipfile.ZipFile(self.root) as z:
                return np.load(io.BytesIO(z.read(name + ".npy"))).tobytes()
        return (self.root / name).read_bytes()

    def _load_packed(self) -> dict[str, np.ndarray]:
        with np.load(self.root) as z:
            return {k: z[k] for k in z.files}

    def _array(self, patch_id: str, stem: str) -> np.ndarray:
        if self._packed:
            return self._arrays[f"{patch_id}/{stem}"]
        return np.load(self._array_file(patch_id, stem))

    def _array_file(self, patch_id: str, stem: str) -> Path:
        return self.root / "patches" / patch_id / f"{stem}.npy"

    def _origin(self, patch_id: str, stem: str) -> str:
        """Where an array comes from, for messages: its .npy file, or its entry in the archive."""
        if self._packed:
            return f"{self.root}[{patch_id}/{stem}]"
        return os.fspath(self._array_file(patch_id, stem))

    def _stems(self) -> list[str]:
        """The arrays of a patch that the requested keys read."""
        return [stem for stem in BIGEARTHNET_ARRAYS if stem.split("_")[0] in self.specs]

    def reads_from(self) -> dict[str, list[str]]:
        ids = [patch["patch_id"] for patch in self.patches]
        if self._packed:
            files = [self.root]
        else:
            arrays = [self._array_file(pid, stem) for pid in ids for stem in self._stems()]
            files = [self.root / "metadata.json", *arrays]
        return {"files": [os.fspath(f) for f in files], "patches": ids}

    def __len__(self) -> int:
        return len(self.patches)

    def __getitem__(self, index: int) -> dict[str, Any]:
        patch = self.patches[index]
        pid = patch["patch_id"]
        sample: dict[str, Any] = {"id": pid}
        if "s2" in self.specs:
            sample["s2"], sample[valid_key("s2")] = self._s2(pid)
        if "s1" in self.specs:
            sample["s1"], sample[valid_key("s1")] = self._s1(pid)
        names = _bigearthnet_labels(patch, self.label_set)
        classes = BIGEARTHNET_LABEL_SETS[self.label_set]
        unknown = [name for name in names if name not in classes]
        if unknown:
            raise ValueError(
                f"{pid}: labels {unknown} are not BigEarthNet {self.label_set}-class names"
            )
        sample["label"] = np.asarray([name in names for name in classes], np.float32)
        return sample

    def _s1(self, pid: str) -> tuple[np.ndarray, np.ndarray]:
        s1 = np.moveaxis(self._array(pid, "s1"), 0, -1)
        spec, origin = self.specs["s1"], self._origin(pid, "s1")
        check_band_count(s1, spec, where=origin)
        image, valid = image_and_mask(s1, None, where=origin)
        validity.mask_out_of_range(image, valid, spec, key="s1", where=origin)
        return image, valid

    def _s2(self, pid: str) -> tuple[np.ndarray, np.ndarray]:
        bands, origins = {}, {}
        for stem in ("s2_10m", "s2_20m", "s2_60m"):
            arr = np.moveaxis(self._array(pid, stem), 0, -1)
            names = BIGEARTHNET_ARRAYS[stem]
            if arr.shape[-1] != len(names):
                raise ValueError(f"{pid}/{stem}: has {arr.shape[-1]} bands, expected {names}")
            valid = arr != 0  # Sentinel-2 L2A nodata.
            up = raster.resample_array(arr, (120, 120), resampling=self.resampling, nodata=0)
            up_valid = (
                raster.resample_array(valid.astype(np.float32), (120, 120), resampling="nearest")
                > 0
            )
            for c, name in enumerate(names):
                bands[name] = (up[..., c], up_valid[..., c])
                origins[name] = self._origin(pid, stem)
        spec = self.specs["s2"]
        image = np.stack([bands[b][0] for b in spec.bands], -1)
        valid = np.stack([bands[b][1] for b in spec.bands], -1)
        image[~valid] = 0.0
        where = [origins[b] for b in spec.bands]
        validity.mask_out_of_range(image, valid, spec, key="s2", where=where)
        return image, valid

    def __repr__(self) -> str:
        return (
            f"BigEarthNetSource({len(self)} patches from {self.root}, {self.specs},"
            f" {self.label_set} classes)"
        )


def pack_bigearthnet(folder: str | os.PathLike, out: str | os.PathLike) -> None:
    """Packs the folder layout into one compressed `.npz` readable by `BigEarthNetSource`."""
    folder = Path(folder)
    metadata = (folder / "metadata.json").read_bytes()
    arrays = {"metadata.json": np.frombuffer(metadata, np.uint8)}
    for patch in json.loads(metadata)["patches"]:
        for stem in BIGEARTHNET_ARRAYS:
            arrays[f"{patch['patch_id']}/{stem}"] = np.load(
                folder / "patches" / patch["patch_id"] / f"{stem}.npy"
            )
    tmp = Path(str(out) + ".tmp.npz")
    np.savez_compressed(tmp, **arrays)
    os.replace(tmp, out)


# ---------------------------------------------------------------------------------------------
# SSL4EO-S12 and BigEarthNet's original per-band folders

SSL4EO_MODALITIES = {"s1": "sentinel1_grd", "s2c": "sentinel2_l1c", "s2a": "sentinel2_l2a"}
SSL4EO_CITATION = (
    "Wang et al., SSL4EO-S12: A Large-Scale Multi-Modal, Multi-Temporal Dataset for"
    " Self-Supervised Learning in Earth Observation, IEEE GRSM 2023. Licence: CC-BY-4.0."
)


def ssl4eo_s12(
    root: str | os.PathLike,
    *,
    modalities: Sequence[str] = ("s1", "s2c"),
    resampling: str = "bilinear",
) -> BandFilesSource:
    """SSL4EO-S12: per location, four seasonal acquisitions per modality, one GeoTIFF per band.

    Layout `root/<modality>/<location>/<acquisition>/<band>.tif` (+ metadata.json). One example per
    (location, season): the i-th acquisition of each modality, in date order. Sample keys are the
    modality folder names ("s1", "s2c", "s2a"). Sentinel-2 DNs of processing baseline >= 04.00 have
    their +1000 offset removed (baseline read from each acquisition's metadata.json).
    """
    root = Path(root)
    unknown = set(modalities) - set(SSL4EO_MODALITIES)
    if unknown:
        raise ValueError(
            f"unknown SSL4EO-S12 modalities {sorted(unknown)};"
            f" expected some of {sorted(SSL4EO_MODALITIES)}"
        )
    specs = {m: SensorSpec.full(SSL4EO_MODALITIES[m]) for m in modalities}
    locations = sorted(p.name for p in (root / modalities[0]).iterdir() if p.is_dir())
    items = []
    for loc in locations:
        acquisitions = {
            m: sorted(p for p in (root / m / loc).iterdir() if p.is_dir()) for m in modalities
        }
        for season in range(min(len(a) for a in acquisitions.values())):
            files, offsets = {}, {}
            for m in modalities:
                folder = acquisitions[m][season]
                files[m] = find_band_files(folder, specs[m])
                if m != "s1":
                    offsets[m] = sensors_lib.s2_offset_dn(_s2_baseline(folder))
            items.append(BandFilesItem(f"{loc}/{season}", files, offsets))
    return BandFilesSource(items, specs, resampling=resampling)


def _s2_baseline(folder: Path) -> float | None:
    meta = folder / "metadata.json"
    if not meta.exists():
        return None
    value = json.loads(meta.read_text()).get("PROCESSING_BASELINE")
    return None if value is None else sensors_lib.parse_s2_processing_baseline(value)


def bigearthnet_folders(
    root: str | os.PathLike, *, modality: str = "s2", resampling: str = "bilinear"
) -> BandFilesSource:
    """BigEarthNet's original layout: `BigEarthNet-S2/<tile>/<patch>/<patch>_B01.tif` (S2 L2A at
    native 10/20/60 m, resampled to 10 m) or `BigEarthNet-S1/<...>/<patch>_VV.tif`."""
    sensor = {"s2": "sentinel2_l2a", "s1": "sentinel1_grd"}[modality]
    folder = Path(root) / {"s2": "BigEarthNet-S2", "s1": "BigEarthNet-S1"}[modality]
    spec = SensorSpec.full(sensor)
    patches = sorted(p for p in folder.glob("*/*") if p.is_dir())
    if not patches:
        raise FileNotFoundError(f"{folder}: no patch folders")
    items = [
        BandFilesItem(p.name, {modality: find_band_files(p, spec, "*_{band}.tif")}) for p in patches
    ]
    return BandFilesSource(items, {modality: spec}, resampling=resampling)


def geotiff_folder(
    root: str | os.PathLike,
    *,
    sensor: str,
    bands: Sequence[str] | None = None,
    file_bands: Sequence[str] | None = None,
    pattern: str = "**/*.tif",
    key: str = "image",
    labels_from_folders: bool = False,
) -> GeoTiffSource:
    """Every multi-band raster under `root` matching `pattern`.

    With `labels_from_folders`, the parent folder name is the class (classes sorted by name).
    """
    files = sorted(Path(root).glob(pattern))
    if not files:
        raise FileNotFoundError(f"{root}: no file matches {pattern!r}")
    spec = SensorSpec(
        sensor, tuple(bands or file_bands or sensors_lib.get_sensor(sensor).band_names)
    )
    labels = names = None
    if labels_from_folders:
        names = sorted({f.parent.name for f in files})
        labels = [names.index(f.parent.name) for f in files]
    return GeoTiffSource(
        files, spec, key=key, file_bands=file_bands, labels=labels, label_names=names
    )


# ---------------------------------------------------------------------------------------------
# Dense reference masks: Sen1Floods11 water, Landsat bi-temporal change

IGNORE_INDEX = -1


class MaskedRasterSource:
    """Co-registered multi-band rasters plus a dense reference mask, one example each.

    Item: `{key: f32[H, W, C], key_valid: bool[H, W, C]` for each image key, `"mask": int32[H, W],
    "id": str}`. The image keys of example `i` are read by one-file `GeoTiffSource`s, so their
    sensor may differ between examples: `spec_of(i)` gives that example's specs, `specs` those of
    example 0. `mask` holds indices into `label_names["mask"]`, or `ignore_index` where there is no
    reference. The mask is kept as the reference gives it: a labelled pixel whose image bands are
    all invalid stays labelled, so losses and metrics must combine `mask != ignore_index` with the
    `<key>_valid` masks.

    Args:
      ids: one id per example.
      images: per example, image key -> `GeoTiffSource` over exactly one file.
      mask_files: per example, the files `read_mask` turns into the mask.
      read_mask: `(files, id) -> int32[H, W]`; a module-level function, so the source pickles.
    """

    ignore_index = IGNORE_INDEX

    def __init__(
        self,
        ids: Sequence[str],
        images: Sequence[Mapping[str, GeoTiffSource]],
        mask_files: Sequence[Sequence[str]],
        read_mask: Callable[[Sequence[str], str], np.ndarray],
        label_names: Sequence[str],
    ):
        if not len(ids) == len(images) == len(mask_files):
            raise ValueError(f"{len(ids)} ids, {len(images)} images and {len(mask_files)} masks")
        if not ids:
            raise ValueError("no examples")
        self.ids = list(ids)
        self.images = [dict(example) for example in images]
        self.mask_files = [tuple(os.fspath(f) for f in files) for files in mask_files]
        self.read_mask = read_mask
        self.label_names = {"mask": list(label_names)}

    def spec_of(self, index: int) -> dict[str, SensorSpec]:
        """Image key -> SensorSpec of example `index`."""
        return {key: source.specs[key] for key, source in self.images[index].items()}

    @property
    def specs(self) -> dict[str, SensorSpec]:
        return self.spec_of(0)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> dict[str, Any]:
        example_id = self.ids[index]
        sample: dict[str, Any] = {"id": example_id}
        for key, source in self.images[index].items():
            part = source[0]
            sample[key], sample[valid_key(key)] = part[key], part[valid_key(key)]
        mask = self.read_mask(self.mask_files[index], example_id)
        shapes = {key: sample[key].shape[:2] for key in self.images[index]}
        if any(hw != mask.shape for hw in shapes.values()):
            raise ValueError(
                f"{example_id}: reference mask is {mask.shape} but images are {shapes}"
                f" (mask files {', '.join(self.mask_files[index])})"
            )
        sample["mask"] = mask
        return sample

    def reads_from(self) -> dict[str, list[str]]:
        files = []
        for images, masks in zip(self.images, self.mask_files):
            files += [f for source in images.values() for f in source.reads_from()["files"]]
            files += masks
        return {"files": files}

    def __repr__(self) -> str:
        return f"MaskedRasterSource({len(self)} examples, {self.specs}, {self.label_names})"


def _read_png(path: str) -> np.ndarray:
    """A single-band PNG (or other Pillow-readable image) as [H, W] in its own dtype."""
    with Image.open(path) as image:
        array = np.asarray(image)
    if array.ndim != 2:
        raise ValueError(f"{path}: expected a single-band image, got shape {array.shape}")
    return array


def _one_file(folder: Path, pattern: str) -> Path:
    matches = sorted(folder.glob(pattern))
    if len(matches) != 1:
        raise FileNotFoundError(
            f"{folder}: expected one file matching {pattern!r}, found {matches}"
        )
    return matches[0]


SEN1FLOODS11_CITATION = (
    "Bonafilia et al., Sen1Floods11: a georeferenced dataset to train and test deep learning flood"
    " algorithms for Sentinel-1, CVPR Workshops 2020. Licence: not stated upstream (unverified)."
    " Contains modified Copernicus Sentinel data."
)
SEN1FLOODS11_CLASSES = ("no_water", "water")

# Band order inside the S2Hand GeoTIFFs, established from the pixels (tests/test_datasets_eval.py):
# ESA order. Channel 8 tracks B08 (r = 0.98), channel 10 has a median of 11 DN (B10, cirrus) and
# channel 12 tracks channel 11 (B12 vs B11, r = 0.96); the files' band descriptions agree.
SEN1FLOODS11_S2_FILE_BANDS = sensors_lib.get_sensor("sentinel2_l1c").band_names


def _chip_files(root: Path, suffix: str) -> dict[str, Path]:
    """Chip id -> file, for every `<chip>_<suffix>.tif` under `root` (any depth)."""
    out: dict[str, Path] = {}
    for path in sorted(root.rglob(f"*_{suffix}.tif")):
        chip = path.name.removesuffix(f"_{suffix}.tif")
        if chip in out:
            raise ValueError(f"chip {chip}: two {suffix} files, {out[chip]} and {path}")
        out[chip] = path
    return out


def _read_sen1floods11_label(files: Sequence[str], chip: str) -> np.ndarray:
    (path,) = files
    array, _ = raster.read_raster(path, expected_bands=1)
    mask = array[..., 0].astype(np.int32)
    unexpected = np.setdiff1d(mask, (IGNORE_INDEX, 0, 1))
    if unexpected.size:
        raise ValueError(
            f"{path} (chip {chip}): label values {unexpected.tolist()} are not -1 (nodata),"
            " 0 (no water) or 1 (water)"
        )
    return mask


def sen1floods11(
    root: str | os.PathLike,
    *,
    s1_key: str = "s1",
    s2_key: str = "s2",
    bands: Sequence[str] | None = None,
) -> MaskedRasterSource:
    """Sen1Floods11 hand-labelled chips: Sentinel-1 + Sentinel-2 L1C + water mask, 512x512, 10 m.

    Every chip with all of `<chip>_S1Hand.tif` (VV, VH sigma0 in dB, float32, NaN = nodata),
    `<chip>_S2Hand.tif` (13 bands, L1C TOA reflectance x 1e4, int16, ESA order) and
    `<chip>_LabelHand.tif` (-1 nodata, 0 no water, 1 water) anywhere under `root` is one example
    with id `<chip>`. `bands` picks Sentinel-2 bands (default all 13, ESA order). "mask" is
    int32[H, W] with `ignore_index` = -1 where the label is nodata.
    """
    root = Path(root)
    s1, s2, labels = (_chip_files(root, s) for s in ("S1Hand", "S2Hand", "LabelHand"))
    chips = sorted(s1.keys() & s2.keys() & labels.keys())
    if not chips:
        raise FileNotFoundError(
            f"{root}: no chip has all of <chip>_S1Hand.tif, <chip>_S2Hand.tif, <chip>_LabelHand.tif"
        )
    s1_spec = SensorSpec.full("sentinel1_grd")
    s2_spec = (
        SensorSpec("sentinel2_l1c", tuple(bands)) if bands else SensorSpec.full("sentinel2_l1c")
    )
    images = [
        {
            s1_key: GeoTiffSource([s1[c]], s1_spec, key=s1_key),
            s2_key: GeoTiffSource(
                [s2[c]], s2_spec, key=s2_key, file_bands=SEN1FLOODS11_S2_FILE_BANDS
            ),
        }
        for c in chips
    ]
    return MaskedRasterSource(
        chips,
        images,
        [[labels[c]] for c in chips],
        _read_sen1floods11_label,
        SEN1FLOODS11_CLASSES,
    )


LANDSAT_CD_CITATION = (
    "Wu, Du and Zhang, Slow feature analysis for change detection in multispectral imagery, IEEE"
    " TGRS 2014; Du et al., Unsupervised deep slow feature analysis for change detection in"
    " multi-temporal remote sensing images, IEEE TGRS 2019. Landsat imagery: USGS, public domain;"
    " reference maps: no explicit licence."
)
LANDSAT_CD_CLASSES = ("unchanged", "changed")
LANDSAT_CD_SENSORS = {"Taizhou": "landsat7_etm", "Nanjing": "landsat5_tm"}
LANDSAT_CD_BANDS = ("B1", "B2", "B3", "B4", "B5", "B7")


def _read_change_reference(files: Sequence[str], site: str) -> np.ndarray:
    """int32[H, W]: 1 where `files[0]` (changed) is 255, 0 where `files[1]` (unchanged) is, else -1."""
    changed, unchanged = (_read_png(f) == 255 for f in files)
    if changed.shape != unchanged.shape:
        raise ValueError(
            f"{site}: {files[0]} is {changed.shape} but {files[1]} is {unchanged.shape}"
        )
    both = changed & unchanged
    if both.any():
        raise ValueError(
            f"{site}: {int(both.sum())} pixels are labelled both changed ({files[0]}) and"
            f" unchanged ({files[1]})"
        )
    mask = np.full(changed.shape, IGNORE_INDEX, np.int32)
    mask[unchanged] = 0
    mask[changed] = 1
    return mask


def landsat_change(
    root: str | os.PathLike,
    *,
    sites: Sequence[str] = ("Taizhou", "Nanjing"),
    key1: str = "t1",
    key2: str = "t2",
) -> MaskedRasterSource:
    """Taizhou / Nanjing bi-temporal Landsat change pairs, 30 m, 8-bit DN, bands B1-B5 and B7.

    Taizhou: Landsat-7 ETM+ 2000 vs 2003, 400x400; Nanjing: Landsat-5 TM 2000 vs 2002, 800x800.
    Layout `root/<site>/{t1_*.tif, t2_*.tif, change.png, unchanged.png}`; in the PNGs 255 marks a
    reference pixel. One example per site (id = site). "mask" is int32[H, W]: 1 changed,
    0 unchanged, `ignore_index` = -1 unlabelled. The sensor differs by site: use `spec_of(i)`.
    """
    root = Path(root)
    unknown = [s for s in sites if s not in LANDSAT_CD_SENSORS]
    if unknown:
        raise ValueError(
            f"unknown Landsat change sites {unknown}; expected {list(LANDSAT_CD_SENSORS)}"
        )
    images, masks = [], []
    for site in sites:
        folder = root / site
        spec = SensorSpec(LANDSAT_CD_SENSORS[site], LANDSAT_CD_BANDS)
        images.append(
            {
                key: GeoTiffSource([_one_file(folder, f"{stem}_*.tif")], spec, key=key)
                for key, stem in ((key1, "t1"), (key2, "t2"))
            }
        )
        masks.append([_one_file(folder, "change.png"), _one_file(folder, "unchanged.png")])
    return MaskedRasterSource(sites, images, masks, _read_change_reference, LANDSAT_CD_CLASSES)


# ---------------------------------------------------------------------------------------------
# EuroSAT RGB


_PILLOW_MODES = {1: "L", 3: "RGB"}


class ImageFileSource:
    """One 8-bit image file read with Pillow per example (JPEG, PNG): `{key: f32[H, W, C] in DN,
    key_valid, "id": path, "label"}`. The file's mode must match the spec ("RGB" for 3 bands)."""

    def __init__(
        self,
        files: Sequence[str | os.PathLike],
        spec: SensorSpec,
        *,
        key: str = "image",
        labels: Sequence[Any] | None = None,
        label_names: Sequence[str] | None = None,
    ):
        if labels is not None and len(labels) != len(files):
            raise ValueError(f"{len(labels)} labels for {len(files)} files")
        self.files = [os.fspath(f) for f in files]
        self.specs = {key: spec}
        self.key = key
        self.mode = _PILLOW_MODES.get(len(spec.bands))
        if self.mode is None:
            raise ValueError(f"{spec}: 8-bit images here have 1 or 3 bands, not {len(spec.bands)}")
        self.labels = None if labels is None else list(labels)
        self.label_names = None if label_names is None else {"label": list(label_names)}

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> dict[str, Any]:
        path = self.files[index]
        with Image.open(path) as image:
            if image.mode != self.mode:
                raise ValueError(f"{path}: image mode {image.mode}, expected {self.mode}")
            array = np.asarray(image).reshape(image.height, image.width, -1)
        spec = self.specs[self.key]
        nodata = band_nodata(spec, [None] * len(spec.bands))
        image, valid = image_and_mask(array, nodata, where=path)
        sample = {self.key: image, valid_key(self.key): valid, "id": path}
        if self.labels is not None:
            sample["label"] = np.asarray(self.labels[index])
        return sample

    def reads_from(self) -> dict[str, list[str]]:
        return {"files": list(self.files)}

    def __repr__(self) -> str:
        return f"ImageFileSource({len(self)} files, {self.specs[self.key]})"


def eurosat_rgb(
    root: str | os.PathLike, *, split: str | None = None, key: str = "rgb"
) -> ImageFileSource:
    """EuroSAT RGB: 64x64 JPEGs (red, green, blue DN 0..255 from Sentinel-2 B04, B03, B02).

    `root` holds `labels.csv` with columns path (or rgb_path, which wins: the EuroSAT-MS folder
    lists each patch's JPEG there), class_name, class_index and optionally split (`split` accepts
    the aliases of `SPLIT_ALIASES`). Labels index `EUROSAT_CLASSES`, the same as `eurosat_ms`.
    """
    root = Path(root)
    rows = rows_of_split(_read_csv(root / "labels.csv"), split, where=root / "labels.csv")
    require_examples(len(rows), root, split)
    wrong = [r for r in rows if EUROSAT_CLASSES[int(r["class_index"])] != r["class_name"]]
    if wrong:
        raise ValueError(
            f"{root / 'labels.csv'}: class_index disagrees with EUROSAT_CLASSES for {wrong[:3]}"
        )
    column = "rgb_path" if rows and "rgb_path" in rows[0] else "path"
    return ImageFileSource(
        [root / r[column] for r in rows],
        SensorSpec.full("rgb"),
        key=key,
        labels=[int(r["class_index"]) for r in rows],
        label_names=EUROSAT_CLASSES,
    )


# ---------------------------------------------------------------------------------------------
# UKIS cloud and cloud-shadow masks: Landsat-5, Landsat-7, Sentinel-2 in TOA reflectance


CLOUD_SHADOW_CITATION = (
    "Wieland, Li and Martinis, Multi-sensor cloud and cloud shadow segmentation with a"
    " convolutional neural network, Remote Sensing of Environment 230, 2019; scenes of the tests"
    " of github.com/dlr-eoc/ukis-csmask. Licence: Apache-2.0 (repository); Landsat imagery USGS,"
    " public domain; contains modified Copernicus Sentinel data."
)
CLOUD_SHADOW_CLASSES = ("clear", "cloud", "cloud_shadow")
# Reference value -> class index: 0 cloud shadow, 1, 2, 3 clear sub-classes, 4 cloud.
CLOUD_SHADOW_RECLASS = (2, 0, 0, 0, 1)
# Scene (file stem) -> what its 6 channels are: [blue, green, red, NIR, SWIR 1.6, SWIR 2.2]. The
# NIR of Sentinel-2 is B08 (ukis-csmask's "nir", the STAC common name), not B8A.
CLOUD_SHADOW_SCENES = {
    "landsat5": SensorSpec("landsat5_tm_toa", ("B1", "B2", "B3", "B4", "B5", "B7")),
    "landsat7": SensorSpec("landsat7_etm_toa", ("B1", "B2", "B3", "B4", "B5", "B7")),
    "sentinel2": SensorSpec("sentinel2_l1c", ("B02", "B03", "B04", "B08", "B11", "B12")),
}
CLOUD_SHADOW_TILES = ("train", "test")
# Registry reflectance unit -> factor from reflectance as a fraction (what the files store).
_FRACTION_TO_UNIT = {"reflectance": 1.0, "reflectance_1e4": 1e4}


class CloudShadowSource:
    """UKIS cloud / cloud-shadow scenes (Wieland et al. 2019), each cut into a train and a test
    tile of full-width rows with a gap between them.

    Files `root/<scene>_img.tif` (512 x 512 x 6 float32, top-of-atmosphere reflectance as a
    fraction, bands blue, green, red, NIR, SWIR 1.6, SWIR 2.2; not georeferenced) and
    `root/<scene>_msk.png` (uint8: 0 cloud shadow, 1-3 clear, 4 cloud) for the scenes of
    `CLOUD_SHADOW_SCENES`. Each scene's bands are named by its sensor: Landsat-5 TM and Landsat-7
    ETM+ B1-B5, B7 in the registry sensors `landsat5_tm_toa` / `landsat7_etm_toa` (unit
    "reflectance", as stored), Sentinel-2 L1C B02, B03, B04, B08, B11, B12 in the registry's unit
    for L1C, reflectance x 10_000 (the files' values times 1e4).

    Examples `<scene>:train` (rows 0 to H - test_rows - gap) and `<scene>:test` (the last
    `test_rows` rows): `{key: f32[h, W, 6], key_valid, "mask": int32[h, W] indexing
    `CLOUD_SHADOW_CLASSES` (every pixel labelled), "id"}`. The sensor differs by scene: use
    `spec_of(i)`.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        *,
        scenes: Sequence[str] = ("sentinel2",),
        test_rows: int = 128,
        gap: int = 64,
        key: str = "image",
    ):
        unknown = [s for s in scenes if s not in CLOUD_SHADOW_SCENES]
        if unknown or not scenes:
            raise ValueError(
                f"cloud_shadow: scenes {list(scenes)}; expected some of {list(CLOUD_SHADOW_SCENES)}"
            )
        if test_rows < 1 or gap < 0:
            raise ValueError(
                f"cloud_shadow: test_rows {test_rows} must be positive and gap {gap} not negative"
            )
        self.root = Path(root)
        self.items = [(scene, tile) for scene in scenes for tile in CLOUD_SHADOW_TILES]
        self.ids = [f"{scene}:{tile}" for scene, tile in self.items]
        self.test_rows, self.gap, self.key = test_rows, gap, key
        self.label_names = {"mask": list(CLOUD_SHADOW_CLASSES)}

    def spec_of(self, index: int) -> dict[str, SensorSpec]:
        """Image key -> SensorSpec of example `index`."""
        return {self.key: CLOUD_SHADOW_SCENES[self.items[index][0]]}

    @property
    def specs(self) -> dict[str, SensorSpec]:
        return self.spec_of(0)

    def files(self, scene: str) -> tuple[Path, Path]:
        """(image, reference mask) of `scene`."""
        return self.root / f"{scene}_img.tif", self.root / f"{scene}_msk.png"

    def rows(self, tile: str, height: int) -> slice:
        """The rows of `tile` ("train" or "test") in a scene of `height` rows."""
        train_end = height - self.test_rows - self.gap
        if train_end < 1:
            raise ValueError(
                f"cloud_shadow: a scene of {height} rows leaves no training rows for test_rows"
                f" {self.test_rows} and gap {self.gap}"
            )
        return slice(0, train_end) if tile == "train" else slice(height - self.test_rows, height)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, Any]:
        scene, tile = self.items[index]
        spec = CLOUD_SHADOW_SCENES[scene]
        image_file, mask_file = self.files(scene)
        array, file_nodata = raster.read_raster(image_file, expected_bands=len(spec.bands))
        mask = _read_cloud_shadow_mask(mask_file)
        if mask.shape != array.shape[:2]:
            raise ValueError(f"{mask_file} is {mask.shape} but {image_file} is {array.shape[:2]}")
        rows = self.rows(tile, array.shape[0])
        to_unit = np.array([_FRACTION_TO_UNIT[b.unit] for b in spec.sensor_info.bands], np.float32)
        nodata = band_nodata(spec, [file_nodata] * len(spec.bands))
        image, valid = image_and_mask(array[rows] * to_unit, nodata, where=os.fspath(image_file))
        validity.mask_out_of_range(image, valid, spec, key=self.key, where=os.fspath(image_file))
        return {
            self.key: image,
            valid_key(self.key): valid,
            "mask": mask[rows],
            "id": self.ids[index],
        }

    def reads_from(self) -> dict[str, Any]:
        scenes = dict.fromkeys(scene for scene, _ in self.items)
        files = [os.fspath(f) for scene in scenes for f in self.files(scene)]
        return {"files": files, "test_rows": self.test_rows, "gap": self.gap}

    def __repr__(self) -> str:
        return f"CloudShadowSource({self.ids} from {self.root})"


def _read_cloud_shadow_mask(path: Path) -> np.ndarray:
    """int32[H, W] class indices of `CLOUD_SHADOW_CLASSES` from a UKIS reference PNG."""
    values = _read_png(os.fspath(path))
    unexpected = np.setdiff1d(values, np.arange(len(CLOUD_SHADOW_RECLASS)))
    if unexpected.size:
        raise ValueError(
            f"{path}: reference values {unexpected.tolist()} are not 0 (cloud shadow), 1-3"
            " (clear) or 4 (cloud)"
        )
    return np.asarray(CLOUD_SHADOW_RECLASS, np.int32)[values]


# ---------------------------------------------------------------------------------------------
# MODIS band stacks (SatVision-TOA inputs)

MODIS_CITATION = (
    "NASA MODIS Level-1B (MOD021KM) and land surface reflectance (MOD09GA) products, LAADS DAAC /"
    " LP DAAC; no restrictions on use. Band selection and scaling: Spradlin et al., SatVision-TOA,"
    " 2024."
)

# ---------------------------------------------------------------------------------------------
# Scenes and cubes larger than memory (GeoTIFF/COG, VRT mosaics, Zarr, NetCDF)


def xarray_cube(
    path: str | os.PathLike,
    *,
    sensor: str,
    bands: Sequence[str] | None = None,
    file_bands: Sequence[str] | None = None,
    window: int = 256,
    num_windows: int = 1024,
    seed: int = 0,
    min_valid_fraction: float = 0.5,
    key: str = "image",
) -> CubeWindowSource:
    """`num_windows` random `window` x `window` windows of one scene, mosaic or cube.

    `path`, `sensor`, `bands` and `file_bands` open it lazily (`eofm.data.cube.open_cube`); item
    i is the window at a position drawn from (`seed`, i), redrawn while less than
    `min_valid_fraction` of its values are valid (`CubeWindowSource`).
    """
    scene = cube.open_cube(path, sensor=sensor, bands=bands, file_bands=file_bands)
    return CubeWindowSource(
        scene,
        window=window,
        num_windows=num_windows,
        seed=seed,
        min_valid_fraction=min_valid_fraction,
        key=key,
    )


# ---------------------------------------------------------------------------------------------

SOURCES: dict[str, Callable[..., Any]] = {
    "eurosat_ms": eurosat_ms,
    "bigearthnet_s1s2": BigEarthNetSource,
    "bigearthnet_folders": bigearthnet_folders,
    "ssl4eo_s12": ssl4eo_s12,
    "geotiff_folder": geotiff_folder,
    "sen1floods11": sen1floods11,
    "landsat_change": landsat_change,
    "eurosat_rgb": eurosat_rgb,
    "modis": ModisSource,
    "cloud_shadow": CloudShadowSource,
    "xarray_cube": xarray_cube,
}


CITATIONS = {
    "eurosat_ms": EUROSAT_CITATION,
    "bigearthnet_s1s2": BIGEARTHNET_CITATION,
    "bigearthnet_folders": BIGEARTHNET_CITATION,
    "ssl4eo_s12": SSL4EO_CITATION,
    "sen1floods11": SEN1FLOODS11_CITATION,
    "landsat_change": LANDSAT_CD_CITATION,
    "eurosat_rgb": EUROSAT_CITATION,
    "modis": MODIS_CITATION,
    "cloud_shadow": CLOUD_SHADOW_CITATION,
}


def _factory(name: str) -> Callable[..., Any]:
    """The function or class that builds source `name`."""
    if name == "tfds":
        from eofm.data import tfds_source  # Local: tensorflow-datasets is an optional extra.

        return tfds_source.TfdsSource
    if name == "arrayrecord":
        from eofm.data import arrayrecord

        return arrayrecord.ArrayRecordSource
    if name not in SOURCES:
        raise ValueError(
            f"unknown source {name!r}; expected one of {sorted([*SOURCES, 'arrayrecord', 'tfds'])}"
        )
    return SOURCES[name]


def check_source_args(name: str, args: Mapping[str, Any]) -> None:
    """Checks the keyword arguments of source `name` against its signature; reads no data.

    Raises:
        ValueError: naming an unknown source (and the known ones), unknown arguments (and the
            accepted ones) or missing required arguments.
    """
    params = inspect.signature(_factory(name)).parameters.values()
    named = [p for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    accepted = [p.name for p in named]
    takes_any = any(p.kind == p.VAR_KEYWORD for p in params)
    unknown = [k for k in args if k not in accepted]
    if unknown and not takes_any:
        guesses = [
            f"{close[0]!r} instead of {key!r}"
            for key in unknown
            if (close := difflib.get_close_matches(key, accepted, n=1))
        ]
        hint = f" (did you mean {', '.join(guesses)}?)" if guesses else ""
        raise ValueError(
            f"source {name!r}: unknown argument(s) {', '.join(map(repr, unknown))}{hint};"
            f" {name} accepts {', '.join(map(repr, accepted))}"
        )
    missing = [p.name for p in named if p.default is p.empty and p.name not in args]
    if missing:
        raise ValueError(
            f"source {name!r} needs argument(s) {', '.join(map(repr, missing))};"
            f" it accepts {', '.join(map(repr, accepted))}"
        )


def make_source(name: str, /, **kwargs) -> Any:
    """Builds a registered source by name ("arrayrecord" and "tfds" included); the arguments are
    checked first (`check_source_args`). `name` is positional-only, so that the "name" argument of
    "tfds" passes through."""
    check_source_args(name, kwargs)
    return _factory(name)(**kwargs)


# The folder-layout sources (class folders, path/label indexes, image/mask and change folders)
# build on the classes above and add themselves to SOURCES.
from eofm.data import folders  # noqa: E402, F401
