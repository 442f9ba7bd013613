"""Dataset definitions: where the files are, which sensor and band order, labels, licence.

Each function returns a grain random-access source (see `eofm.data.sources`). `make_source(name,
**kwargs)` builds one by name, which is how configs and `scripts/prepare_arrayrecord.py` refer to
them.
"""

from __future__ import annotations

import csv
import io
import json
import os
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from eofm import sensors as sensors_lib
from eofm.data import raster
from eofm.data.sources import BandFilesItem, BandFilesSource, GeoTiffSource, find_band_files
from eofm.data.spec import SensorSpec, check_band_count, image_and_mask, valid_key

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
    requested (default: ESA order, all 13), whatever the order inside the files.
    """
    root = Path(root)
    rows = _read_csv(root / "labels.csv")
    if split is not None:
        rows = [r for r in rows if r["split"] == split]
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


class BigEarthNetSource:
    """BigEarthNet v2 S1+S2 pairs with 19-class multi-labels.

    Reads either the folder layout `metadata.json` + `patches/<patch_id>/{s1,s2_10m,s2_20m,s2_60m}.npy`
    (native resolutions, channels first) or the same content packed in one `.npz` (the vendored demo
    set, `DEMO_DATA`). Sentinel-2 L2A bands (12, ESA order) are resampled to the 10 m grid (120x120)
    with `resampling`; Sentinel-1 VV, VH are in dB. "label" is a float32 multi-hot vector over
    `BIGEARTHNET_19_CLASSES`. The products carry processing baseline N9999 (reprocessed without the
    +1000 offset), so no offset is removed.
    """

    def __init__(
        self,
        root: str | os.PathLike = DEMO_DATA,
        *,
        split: str | None = None,
        keys: Sequence[str] = ("s2", "s1"),
        resampling: str = "bilinear",
    ):
        raster.resampling_method(resampling)
        unknown = set(keys) - {"s2", "s1"}
        if unknown:
            raise ValueError(
                f"unknown BigEarthNet keys {sorted(unknown)}; expected 's2' and/or 's1'"
            )
        self.root = Path(root)
        self.resampling = resampling
        self._packed = self.root.suffix == ".npz"
        metadata = json.loads(self._read_bytes("metadata.json"))
        patches = metadata["patches"]
        if split is not None:
            patches = [p for p in patches if p["split"] == split]
        self.patches = patches
        all_specs = {"s2": SensorSpec.full("sentinel2_l2a"), "s1": SensorSpec.full("sentinel1_grd")}
        self.specs = {k: all_specs[k] for k in keys}
        self.label_names = {"label": list(BIGEARTHNET_19_CLASSES)}
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
        return np.load(self.root / "patches" / patch_id / f"{stem}.npy")

    def __len__(self) -> int:
        return len(self.patches)

    def __getitem__(self, index: int) -> dict[str, Any]:
        patch = self.patches[index]
        pid = patch["patch_id"]
        sample: dict[str, Any] = {"id": pid}
        if "s2" in self.specs:
            sample["s2"], sample[valid_key("s2")] = self._s2(pid)
        if "s1" in self.specs:
            s1 = np.moveaxis(self._array(pid, "s1"), 0, -1)
            check_band_count(s1, self.specs["s1"], where=f"{pid}/s1")
            sample["s1"], sample[valid_key("s1")] = image_and_mask(s1, None, where=f"{pid}/s1")
        unknown = [name for name in patch["labels"] if name not in BIGEARTHNET_19_CLASSES]
        if unknown:
            raise ValueError(f"{pid}: labels {unknown} are not BigEarthNet 19-class names")
        sample["label"] = np.asarray(
            [name in patch["labels"] for name in BIGEARTHNET_19_CLASSES], np.float32
        )
        return sample

    def _s2(self, pid: str) -> tuple[np.ndarray, np.ndarray]:
        bands = {}
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
        order = self.specs["s2"].bands
        image = np.stack([bands[b][0] for b in order], -1)
        valid = np.stack([bands[b][1] for b in order], -1)
        image[~valid] = 0.0
        return image, valid

    def __repr__(self) -> str:
        return f"BigEarthNetSource({len(self)} patches from {self.root}, {self.specs})"


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

SOURCES: dict[str, Callable[..., Any]] = {
    "eurosat_ms": eurosat_ms,
    "bigearthnet_s1s2": BigEarthNetSource,
    "bigearthnet_folders": bigearthnet_folders,
    "ssl4eo_s12": ssl4eo_s12,
    "geotiff_folder": geotiff_folder,
}


CITATIONS = {
    "eurosat_ms": EUROSAT_CITATION,
    "bigearthnet_s1s2": BIGEARTHNET_CITATION,
    "bigearthnet_folders": BIGEARTHNET_CITATION,
    "ssl4eo_s12": SSL4EO_CITATION,
}


def make_source(name: str, **kwargs) -> Any:
    """Builds a registered source by name ("arrayrecord" and "tfds" included)."""
    if name == "tfds":
        from eofm.data import tfds_source  # Local: tensorflow-datasets is an optional extra.

        return tfds_source.TfdsSource(**kwargs)
    if name == "arrayrecord":
        from eofm.data import arrayrecord

        return arrayrecord.ArrayRecordSource(**kwargs)
    if name not in SOURCES:
        raise ValueError(
            f"unknown source {name!r}; expected one of {sorted([*SOURCES, 'arrayrecord', 'tfds'])}"
        )
    return SOURCES[name](**kwargs)
