"""Trustworthy data preparation: impossible pixel values, stale or damaged prepared data, and
misspelt source arguments."""

import json
import logging
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import rasterio
from run_checks import CountingSource

from eofm import sensors
from eofm.data import arrayrecord, datasets, stats, validity
from eofm.data.sources import GeoTiffSource
from eofm.data.spec import SensorSpec

FLOAT32_FILL = -3.4e38


# ---------------------------------------------------------------------------------------------
# Values outside a band's physical range


def test_every_unit_has_a_valid_range():
    assert set(sensors.VALID_RANGES) == set(sensors.UNITS)
    for low, high in sensors.VALID_RANGES.values():
        assert low < high
    assert sensors.get_sensor("sentinel1_grd").band("VV").valid_range == sensors.VALID_RANGES["dB"]
    # Real products sit well inside: Sentinel-2 DN of saturated pixels, dark water in dB.
    s2_low, s2_high = sensors.get_sensor("sentinel2_l1c").band("B02").valid_range
    assert s2_low < 0 and s2_high >= 65_535
    db_low, db_high = sensors.VALID_RANGES["dB"]
    assert db_low < -50 and db_high > 40


@pytest.fixture
def float_fill_files(shared_data, tmp_path):
    """Two real EuroSAT-MS patches rewritten as float32 GeoTIFFs without a nodata tag; the second
    has a 16x16 block of the float32 fill value -3.4e38 in every band."""
    originals = sorted((shared_data / "eurosat_ms" / "train" / "Forest").glob("*.tif"))[:2]
    written = []
    for i, original in enumerate(originals):
        with rasterio.open(original) as f:
            profile, data = f.profile, f.read().astype(np.float32)
        if i == 1:
            data[:, :16, :16] = FLOAT32_FILL
        profile.update(dtype="float32", nodata=None)
        path = tmp_path / "tifs" / f"patch{i}.tif"
        path.parent.mkdir(exist_ok=True)
        with rasterio.open(path, "w", **profile) as f:
            f.write(data)
        written.append(path)
    return written


def _eurosat_files(files):
    return GeoTiffSource(
        files, SensorSpec.full("sentinel2_l1c"), key="s2", file_bands=datasets.EUROSAT_MS_FILE_BANDS
    )


def test_float_fill_is_masked_when_read(float_fill_files):
    source = _eurosat_files(float_fill_files)
    with pytest.warns(validity.OutOfRangeWarning, match=str(float_fill_files[1])) as caught:
        sample = source[1]
    assert not sample["s2_valid"][:16, :16].any() and sample["s2_valid"][16:].all()
    assert np.all(sample["s2"][:16, :16] == 0)
    (warning,) = [w.message for w in caught if isinstance(w.message, validity.OutOfRangeWarning)]
    assert warning.key == "s2"
    assert warning.counts == {str(float_fill_files[1]): {b: 256 for b in source.specs["s2"].bands}}
    assert str(pickle.loads(pickle.dumps(warning))) == str(warning)  # Crosses to grain workers.


def test_float_fill_is_excluded_from_stats_and_reported(float_fill_files, tmp_path, caplog):
    source = _eurosat_files(float_fill_files)
    with caplog.at_level(logging.WARNING):
        arrayrecord.prepare(source, tmp_path / "prepared", log_every=0)

    outside_block = np.ones((64, 64), bool)
    outside_block[:16, :16] = False
    with pytest.warns(validity.OutOfRangeWarning):
        second = source[1]["s2"][outside_block]
    expected = np.concatenate([source[0]["s2"].reshape(-1, 13), second]).astype(np.float64)
    doc = json.loads((tmp_path / "prepared" / "stats.json").read_text())["sensors"]["s2"]
    for c, band in enumerate(source.specs["s2"].bands):
        got = doc["stats"][band]
        assert got["count"] == 2 * 64 * 64 - 256
        np.testing.assert_allclose(got["mean"], expected[:, c].mean(), rtol=1e-9)
        assert got["min"] == expected[:, c].min()
    bad = str(float_fill_files[1])
    assert doc["out_of_range"]["pixels"] == {b: 256 for b in source.specs["s2"].bands}
    assert doc["out_of_range"]["files"] == {bad: {b: 256 for b in source.specs["s2"].bands}}
    summary = [r.getMessage() for r in caplog.records if "physical range" in r.getMessage()]
    assert len(summary) == 1 and bad in summary[0] and "256" in summary[0]

    # Training reads the shards: the block is invalid there too, and zero.
    sample = arrayrecord.ArrayRecordSource(tmp_path / "prepared")[1]
    assert not sample["s2_valid"][:16, :16].any() and np.all(sample["s2"][:16, :16] == 0)


def test_out_of_range_report_survives_an_interrupted_preparation(float_fill_files, tmp_path):
    source = _eurosat_files(float_fill_files[::-1])  # The damaged file lands in the first shard.
    with pytest.raises(RuntimeError, match="simulated crash"):
        arrayrecord.prepare(CountingSource(source, fail_at=1), tmp_path, examples_per_shard=1)
    with open(tmp_path / "preparing.jsonl", "a") as journal:
        journal.write('{"file": "data-0')  # A line cut short by a crash.
    resumed = CountingSource(source)
    arrayrecord.prepare(resumed, tmp_path, examples_per_shard=1, log_every=0)
    assert resumed.reads == 1  # The first shard was reused, its report with it.
    doc = json.loads((tmp_path / "stats.json").read_text())["sensors"]["s2"]
    assert list(doc["out_of_range"]["files"]) == [str(float_fill_files[1])]


# ---------------------------------------------------------------------------------------------
# Stale prepared data


@pytest.fixture(scope="module")
def ben_train():
    return datasets.make_source("bigearthnet_s1s2", split="train")


def test_manifest_records_source_fingerprint_and_shard_checksums(ben_train, tmp_path):
    manifest = arrayrecord.prepare(
        ben_train, tmp_path, name="ben", source_args={"split": "train"}, examples_per_shard=5
    )
    fingerprint = manifest["fingerprint"]
    assert fingerprint["source"] == "ben" and fingerprint["args"] == {"split": "train"}
    files = fingerprint["reads"]["files"]
    assert files["count"] == 1 and files["bytes"] == os.path.getsize(datasets.DEMO_DATA)
    for shard in manifest["shards"]:
        path = tmp_path / shard["file"]
        assert shard["bytes"] == path.stat().st_size
        assert shard["crc32"] == arrayrecord.file_crc32(path)
    assert json.loads((tmp_path / "manifest.json").read_text()) == manifest


def test_another_split_of_the_same_size_is_refused(ben_train, tmp_path):
    test = datasets.make_source("bigearthnet_s1s2", split="test")
    assert len(test) == len(ben_train)
    arrayrecord.prepare(ben_train, tmp_path, name="ben", source_args={"split": "train"})
    with pytest.raises(FileExistsError, match=r"split='train'.*this run asks split='test'"):
        arrayrecord.prepare(test, tmp_path, name="ben", source_args={"split": "test"})
    # Without arguments the patches read still tell the two apart.
    with pytest.raises(FileExistsError, match="patches"):
        arrayrecord.prepare(test, tmp_path, name="ben")


def test_prepared_source_passes_the_source_arguments(pretrain_config, tmp_path):
    from eofm.train import pretrain

    config = pretrain_config("mae", "tiny")
    config.data.prepared_dir = str(tmp_path / "data")
    config.data.source_args = {"split": "train"}
    assert len(pretrain.prepared_source(config, tmp_path)) == 8
    manifest = arrayrecord.read_manifest(tmp_path / "data")
    assert manifest["fingerprint"]["args"] == {"split": "train"}
    config.data.source_args = {"split": "validation"}
    with pytest.raises(FileExistsError, match=f"{tmp_path / 'data'}.*split='validation'"):
        pretrain.prepared_source(config, tmp_path)


def test_manifest_without_fingerprint_is_refused(ben_train, tmp_path):
    arrayrecord.prepare(ben_train, tmp_path)
    path = tmp_path / "manifest.json"
    old = json.loads(path.read_text())
    del old["fingerprint"]
    path.write_text(json.dumps(old))
    with pytest.raises(FileExistsError, match="no fingerprint.*delete"):
        arrayrecord.prepare(ben_train, tmp_path)
    assert arrayrecord.ArrayRecordSource(tmp_path)[0]["id"]  # Still readable, and kept.


def test_interrupted_preparation_of_another_source_is_not_resumed(ben_train, tmp_path):
    with pytest.raises(RuntimeError, match="simulated crash"):
        arrayrecord.prepare(CountingSource(ben_train, fail_at=6), tmp_path, examples_per_shard=5)
    test = datasets.make_source("bigearthnet_s1s2", split="test")
    with pytest.raises(FileExistsError, match="interrupted preparation.*patches"):
        arrayrecord.prepare(test, tmp_path, examples_per_shard=5)


def _zero_middle(path: Path) -> None:
    data = bytearray(path.read_bytes())
    third = len(data) // 3
    data[third : 2 * third] = bytes(third)
    path.write_bytes(bytes(data))


def test_damaged_shard_is_named_on_read_and_rebuilt_alone(ben_train, tmp_path, caplog):
    arrayrecord.prepare(ben_train, tmp_path, examples_per_shard=3, log_every=0)
    shards = sorted(tmp_path.glob("*.array_record"))
    damaged = shards[1]
    _zero_middle(damaged)
    with pytest.raises(RuntimeError, match=f"{damaged}.*record"):
        arrayrecord.ArrayRecordSource(tmp_path)[4]

    untouched = {p: p.stat().st_mtime_ns for p in shards if p != damaged}
    stats_before = (tmp_path / "stats.json").read_text()
    again = CountingSource(ben_train)
    with caplog.at_level(logging.WARNING):
        manifest = arrayrecord.prepare(again, tmp_path, examples_per_shard=3, log_every=0)
    assert again.reads == 3  # Only the damaged shard was read from the source again.
    assert any(str(damaged) in r.getMessage() for r in caplog.records)
    assert {p: p.stat().st_mtime_ns for p in untouched} == untouched
    assert (tmp_path / "stats.json").read_text() == stats_before
    assert manifest["shards"][1]["crc32"] == arrayrecord.file_crc32(damaged)
    np.testing.assert_array_equal(
        arrayrecord.ArrayRecordSource(tmp_path)[4]["s2"], ben_train[4]["s2"]
    )


def test_truncated_shard_is_named_on_open(ben_train, tmp_path):
    arrayrecord.prepare(ben_train, tmp_path, examples_per_shard=3)
    shard = sorted(tmp_path.glob("*.array_record"))[2]
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    with pytest.raises(RuntimeError, match=str(shard)):
        arrayrecord.ArrayRecordSource(tmp_path)


# ---------------------------------------------------------------------------------------------
# Source arguments


def test_misspelt_source_argument_names_the_key_and_the_allowed_ones():
    with pytest.raises(ValueError, match=r"'splt'.*eurosat_ms.*'root'.*'split'"):
        datasets.check_source_args("eurosat_ms", {"root": "x", "splt": "train"})
    with pytest.raises(ValueError, match=r"'splt'.*'split'"):
        datasets.make_source("bigearthnet_s1s2", splt="train")


def test_unknown_source_name_lists_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown source 'eurosat'.*'eurosat_ms'.*'tfds'"):
        datasets.check_source_args("eurosat", {})


def test_missing_required_source_argument_is_named():
    with pytest.raises(ValueError, match=r"eurosat_ms.*needs.*'root'"):
        datasets.check_source_args("eurosat_ms", {"split": "train"})
    datasets.check_source_args("arrayrecord", {"directory": "/nonexistent"})  # Reads nothing.
    datasets.check_source_args("bigearthnet_s1s2", {})


def test_stats_json_out_of_range_round_trip(tmp_path):
    result = stats.compute_band_stats([np.arange(8, dtype=np.float32).reshape(4, 2)], ["VV", "VH"])
    stats.write_stats_json(
        tmp_path / "stats.json",
        {"s1": result},
        sensors={"s1": "sentinel1_grd"},
        out_of_range={"s1": {"a.tif": {"VV": 3}}},
    )
    entry = stats.read_stats_json(tmp_path / "stats.json")["s1"]
    assert entry["out_of_range"] == {"pixels": {"VV": 3, "VH": 0}, "files": {"a.tif": {"VV": 3}}}


def test_shards_of_unknown_origin_are_refused(ben_train, tmp_path):
    arrayrecord.prepare(ben_train, tmp_path, examples_per_shard=5)
    (tmp_path / "manifest.json").unlink()  # As an interrupted run of an older eofm leaves it.
    with pytest.raises(FileExistsError, match="unknown origin.*overwrite"):
        arrayrecord.prepare(ben_train, tmp_path, examples_per_shard=5)
    arrayrecord.prepare(ben_train, tmp_path, examples_per_shard=5, overwrite=True)
    assert len(arrayrecord.ArrayRecordSource(tmp_path)) == 8


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
    """A TFDS data_dir with `tiny_s1` (splits train and test, two 4x4 VV/VH examples each, the
    first with a float32 fill value) prepared as ArrayRecord."""
    import tensorflow_datasets as tfds

    class TinyS1(tfds.core.GeneratorBasedBuilder, skip_registration=True):
        VERSION = tfds.core.Version("1.2.0")

        def _info(self):
            image = tfds.features.Tensor(shape=(4, 4, 2), dtype=np.float32)
            return tfds.core.DatasetInfo(
                builder=self, features=tfds.features.FeaturesDict({"image": image})
            )

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples(), "test": self._generate_examples()}

        def _generate_examples(self):
            for i in range(2):
                image = np.full((4, 4, 2), -12.5, np.float32)
                image[0, 0, 1] = FLOAT32_FILL if i == 0 else -20.0
                yield i, {"image": image}

    TinyS1.name = "tiny_s1"
    data_dir = tmp_path_factory.mktemp("tfds")
    TinyS1(data_dir=data_dir).download_and_prepare(file_format="array_record")
    return str(data_dir)


def test_tfds_source_says_what_it_reads_and_masks_fill_values(tfds_dir, tmp_path):
    def source(split):
        images = {"s1": ("image", SensorSpec.full("sentinel1_grd"))}
        args = {"name": "tiny_s1", "split": split, "data_dir": tfds_dir, "images": images}
        return datasets.make_source("tfds", **args, labels={}), args

    train, train_args = source("train")
    assert train.reads_from() == {"tfds": {"name": "tiny_s1", "split": "train", "version": "1.2.0"}}
    with pytest.warns(validity.OutOfRangeWarning, match="'tiny_s1' split 'train'.*example 0"):
        sample = train[0]
    assert not sample["s1_valid"][0, 0, 1] and sample["s1"][0, 0, 1] == 0
    arrayrecord.prepare(train, tmp_path, name="tfds", source_args=train_args, log_every=0)
    test, test_args = source("test")
    with pytest.raises(FileExistsError, match="split='train', this run asks split='test'"):
        arrayrecord.prepare(test, tmp_path, name="tfds", source_args=test_args)
    with pytest.raises(FileExistsError, match="'split': 'train'.*'split': 'test'"):
        arrayrecord.prepare(test, tmp_path, name="tfds")
