"""ArrayRecord preparation: round trip, statistics against numpy, atomic and resumable writing."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from run_checks import CountingSource

from eofm.data import arrayrecord, datasets, stats

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def ben():
    return datasets.BigEarthNetSource()


def _assert_same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_round_trip_and_manifest(ben, tmp_path):
    manifest = arrayrecord.prepare(
        ben,
        tmp_path,
        name="ben",
        examples_per_shard=10,
        licence="CDLA-Permissive-1.0",
        citation=datasets.BIGEARTHNET_CITATION,
    )
    assert [s["num_examples"] for s in manifest["shards"]] == [10, 10, 4]
    source = arrayrecord.ArrayRecordSource(tmp_path)
    assert len(source) == 24 and source.specs == ben.specs
    assert source.label_names == ben.label_names
    for i in (0, 9, 10, 23):
        _assert_same(source[i], ben[i])
    on_disk = json.loads((tmp_path / "manifest.json").read_text())
    assert on_disk["licence"] == "CDLA-Permissive-1.0" and "reBEN" in on_disk["citation"]
    assert on_disk["features"]["s2"] == {"shape": [120, 120, 12], "dtype": "<f4"}
    assert on_disk["specs"]["s1"] == {"sensor": "sentinel1_grd", "bands": ["VV", "VH"]}


def test_stats_match_numpy(shared_data, tmp_path):
    source = datasets.eurosat_ms(shared_data / "eurosat_ms", split="train")
    arrayrecord.prepare(source, tmp_path, examples_per_shard=100)
    got = stats.read_stats_json(tmp_path / "stats.json")["s2"]
    assert got["sensor"] == "sentinel2_l1c" and got["bands"] == list(source.specs["s2"].bands)
    pixels = np.stack([source[i]["s2"] for i in range(len(source))]).reshape(-1, 13)
    pixels = pixels.astype(np.float64)
    for c, band in enumerate(source.specs["s2"].bands):
        s = got["stats"][band]
        x = pixels[:, c]
        assert s["count"] == x.size
        np.testing.assert_allclose(s["mean"], x.mean(), rtol=1e-10)
        np.testing.assert_allclose(s["std"], x.std(), rtol=1e-9)
        assert (s["min"], s["max"]) == (x.min(), x.max())
        # Integer DNs: the streaming percentiles are exact.
        assert s["p1"] == np.percentile(x, 1) and s["p99"] == np.percentile(x, 99)


def test_stats_exclude_nodata(ben, tmp_path):
    arrayrecord.prepare(ben, tmp_path)
    got = stats.read_stats_json(tmp_path / "stats.json")["s2"]["stats"]["B05"]
    values = np.concatenate(
        [ben[i]["s2"][..., 4][ben[i]["s2_valid"][..., 4]] for i in range(len(ben))]
    )
    assert got["count"] == values.size
    np.testing.assert_allclose(got["mean"], values.astype(np.float64).mean(), rtol=1e-9)


def _assert_same_stats(a, b):
    """Equal up to float summation order (arrays read back from disk have another memory layout)."""
    assert a.keys() == b.keys()
    for key in a:
        assert a[key]["bands"] == b[key]["bands"]
        for band, sa in a[key]["stats"].items():
            for name, value in sa.items():
                np.testing.assert_allclose(
                    value, b[key]["stats"][band][name], rtol=1e-12, err_msg=f"{key}/{band}/{name}"
                )


def test_interrupted_preparation_leaves_no_partial_files_and_resumes(ben, tmp_path):
    crashing = CountingSource(ben, fail_at=15)
    with pytest.raises(RuntimeError, match="simulated crash"):
        arrayrecord.prepare(crashing, tmp_path, examples_per_shard=10)
    # The first shard is complete under its final name, listed in the journal; no manifest.
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "data-00000-of-00003.array_record",
        "preparing.jsonl",
    ]
    with pytest.raises(FileNotFoundError, match="did not finish"):
        arrayrecord.ArrayRecordSource(tmp_path)
    # A writer killed mid-shard leaves a temporary file and a truncated shard: both are redone.
    (tmp_path / "data-00001-of-00003.array_record.tmp").write_bytes(b"partial")
    resumed = CountingSource(ben)
    arrayrecord.prepare(resumed, tmp_path, examples_per_shard=10)
    assert resumed.reads == 14  # The complete first shard was reused, not recomputed.
    assert not list(tmp_path.glob("*.tmp"))
    clean = tmp_path.parent / "clean"
    arrayrecord.prepare(ben, clean, examples_per_shard=10)
    _assert_same_stats(
        stats.read_stats_json(tmp_path / "stats.json"), stats.read_stats_json(clean / "stats.json")
    )
    source = arrayrecord.ArrayRecordSource(tmp_path)
    _assert_same(source[12], ben[12])

    assert not (tmp_path / "preparing.jsonl").exists()

    # A damaged shard (truncated on disk) is detected and rewritten on the next run.
    shard = tmp_path / "data-00002-of-00003.array_record"
    shard.write_bytes(shard.read_bytes()[:100])
    again = CountingSource(ben)
    arrayrecord.prepare(again, tmp_path, examples_per_shard=10)
    assert again.reads == 4
    _assert_same(arrayrecord.ArrayRecordSource(tmp_path)[23], ben[23])


def test_prepared_directory_is_not_silently_replaced(ben, tmp_path):
    arrayrecord.prepare(ben, tmp_path)
    again = CountingSource(ben)
    arrayrecord.prepare(again, tmp_path)
    assert again.reads == 0  # Already complete: nothing to do.
    train = datasets.BigEarthNetSource(split="train")
    with pytest.raises(FileExistsError, match="different prepared dataset"):
        arrayrecord.prepare(train, tmp_path)
    arrayrecord.prepare(train, tmp_path, overwrite=True)
    assert len(arrayrecord.ArrayRecordSource(tmp_path)) == 8


def test_prepare_script(tmp_path):
    out = tmp_path / "ben"
    cmd = [
        sys.executable,
        str(ROOT / "scripts" / "prepare_arrayrecord.py"),
        "--source=bigearthnet_s1s2",
        '--source_args={"split": "validation"}',
        f"--out_dir={out}",
        "--examples_per_shard=5",
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert "8 examples in 2 shards" in result.stdout
    manifest = json.loads((out / "manifest.json").read_text())
    assert "CDLA" in manifest["citation"]
    bad = subprocess.run(
        [*cmd[:2], "--source=bigearthnet", f"--out_dir={out}"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert bad.returncode != 0 and "unknown source 'bigearthnet'" in bad.stderr
