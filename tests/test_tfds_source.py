"""Tests of `eofm.data.tfds_source` on a real ArrayRecord TFDS dataset built from EuroSAT-MS tifs.

The dataset is prepared on the fly, without TensorFlow or network access, by a small builder whose
features mimic tfds `eurosat/all`.
"""

from __future__ import annotations

import csv
import json
import pickle
import shutil
import sys
from pathlib import Path

import grain
import numpy as np
import pytest
import rasterio
import tensorflow_datasets as tfds

from eofm.data import spec as spec_lib
from eofm.data.tfds_source import TfdsSource

EUROSAT_DIR = Path(__file__).resolve().parents[1].parent / "shared/data/eurosat_ms"
CLASSES = [
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
]
PER_CLASS = 2
NAME = "eurosat_ms_sample"
S2 = spec_lib.SensorSpec.full("sentinel2_l1c")
IMAGES = {"s2": ("sentinel2", S2)}
LABELS = {"label": "label", "filename": "filename"}


def read_tif(path: Path) -> np.ndarray:
    """[H, W, C] float32 pixels of a GeoTIFF, bands in stored order."""
    with rasterio.open(path) as f:
        return np.moveaxis(f.read(), 0, -1).astype(np.float32)


def sample_rows() -> list[dict[str, str]]:
    """The first `PER_CLASS` rows of each class of labels.csv."""
    with open(EUROSAT_DIR / "labels.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    return [
        row
        for name in CLASSES
        if (of_class := [r for r in rows if r["class_name"] == name])
        for row in of_class[:PER_CLASS]
    ]


class EurosatMsSample(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """A few EuroSAT-MS tiles with the features of tfds `eurosat/all`.

    Not registered, so reading goes through tfds's files-only builder, as it does for users.
    """

    VERSION = tfds.core.Version("1.0.0")

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            features=tfds.features.FeaturesDict(
                {
                    "sentinel2": tfds.features.Tensor(shape=(64, 64, 13), dtype=np.float32),
                    "label": tfds.features.ClassLabel(names=CLASSES),
                    "filename": tfds.features.Text(),
                }
            ),
            supervised_keys=("sentinel2", "label"),
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # Reads local files only.
        return {"train": self._generate_examples(sample_rows())}

    def _generate_examples(self, rows):
        for row in rows:
            yield (
                row["path"],
                {
                    "sentinel2": read_tif(EUROSAT_DIR / row["path"]),
                    "label": row["class_name"],
                    "filename": row["path"],
                },
            )


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> str:
    """A TFDS data_dir holding `eurosat_ms_sample` prepared as ArrayRecord."""
    if not (EUROSAT_DIR / "labels.csv").exists():
        pytest.skip(f"EuroSAT-MS sample not found at {EUROSAT_DIR}")
    data_dir = tmp_path_factory.mktemp("tfds")
    EurosatMsSample(data_dir=data_dir).download_and_prepare(file_format="array_record")
    return str(data_dir)


@pytest.fixture(scope="module")
def source(data_dir) -> TfdsSource:
    return TfdsSource(NAME, "train", data_dir=data_dir, images=IMAGES, labels=LABELS)


def test_length(source):
    assert len(source) == len(CLASSES) * PER_CLASS


def test_items_match_geotiff_pixels(source):
    rows = {row["path"]: row for row in sample_rows()}
    seen = set()
    for i in range(len(source)):
        item = source[i]
        path = item["filename"].item().decode()
        np.testing.assert_array_equal(item["s2"], read_tif(EUROSAT_DIR / path))
        assert item["s2_valid"].all()
        assert item["label"] == int(rows[path]["class_index"])
        seen.add(path)
    assert seen == set(rows)
    assert "tensorflow" not in sys.modules


def test_shapes_and_dtypes(source):
    item = source[0]
    assert set(item) == {"s2", "s2_valid", "label", "filename"}
    assert item["s2"].shape == item["s2_valid"].shape == (64, 64, 13)
    assert item["s2"].dtype == np.float32
    assert item["s2_valid"].dtype == bool
    assert item["label"].shape == () and item["label"].dtype == np.int64


def test_metadata(source):
    assert source.label_names == {"label": CLASSES}
    assert source.specs == {"s2": S2}
    assert NAME in repr(source) and "sentinel2_l1c" in repr(source)


def test_nodata_is_masked_and_zeroed(data_dir):
    plain = TfdsSource(NAME, "train", data_dir=data_dir, images=IMAGES)
    value = plain[0]["s2"][0, 0, 0]
    masked = TfdsSource(NAME, "train", data_dir=data_dir, images=IMAGES, nodata=float(value))[0]
    hit = plain[0]["s2"] == value
    np.testing.assert_array_equal(masked["s2_valid"], ~hit)
    assert (masked["s2"][hit] == 0).all()


def test_split_slices(data_dir):
    head = TfdsSource(NAME, "train[:5]", data_dir=data_dir, images=IMAGES)
    assert len(head) == 5


def test_pickles_and_feeds_grain(source):
    restored = pickle.loads(pickle.dumps(source))
    np.testing.assert_array_equal(restored[3]["s2"], source[3]["s2"])
    batch = next(iter(grain.MapDataset.source(source).batch(4)))
    assert batch["s2"].shape == (4, 64, 64, 13)
    assert batch["label"].shape == (4,)


def test_wrong_band_count_names_feature(data_dir):
    l2a = spec_lib.SensorSpec.full("sentinel2_l2a")
    with pytest.raises(ValueError, match=f"{NAME}.*'sentinel2'.*13 bands.*expects 12"):
        TfdsSource(NAME, "train", data_dir=data_dir, images={"s2": ("sentinel2", l2a)})


def test_unknown_feature_lists_available(data_dir):
    with pytest.raises(KeyError, match="'image'.*filename, label, sentinel2"):
        TfdsSource(NAME, "train", data_dir=data_dir, images={"s2": ("image", S2)})
    with pytest.raises(KeyError, match="'labels'.*filename, label, sentinel2"):
        TfdsSource(NAME, "train", data_dir=data_dir, images=IMAGES, labels={"y": "labels"})


def test_not_prepared(tmp_path):
    with pytest.raises(FileNotFoundError) as error:
        TfdsSource(NAME, "test", data_dir=str(tmp_path), images=IMAGES)
    message = str(error.value)
    for part in (
        NAME,
        "'test'",
        str(tmp_path),
        "--file_format=array_record",
        "download_and_prepare(file_format='array_record')",
    ):
        assert part in message


def test_not_array_record(data_dir, tmp_path):
    # Metadata of the same dataset as `tfds build` writes it in the default tfrecord format.
    shutil.copytree(Path(data_dir) / NAME, tmp_path / NAME)
    info_path = tmp_path / NAME / "1.0.0" / "dataset_info.json"
    info = json.loads(info_path.read_text())
    info["fileFormat"] = "tfrecord"
    info_path.write_text(json.dumps(info))
    with pytest.raises(ValueError, match=f"{NAME}.*stored as tfrecord.*--file_format=array_record"):
        TfdsSource(NAME, "train", data_dir=str(tmp_path), images=IMAGES)
