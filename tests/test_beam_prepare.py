"""Beam preparation writes what the local writer writes: same records, manifest and statistics."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from eofm.data import arrayrecord, beam_prepare, datasets, stats

ROOT = Path(__file__).resolve().parents[1]

# Two worker processes: the source is rebuilt in each, and the shards' accumulators cross a
# process boundary before they are merged.
TWO_WORKERS = PipelineOptions(
    ["--runner=DirectRunner", "--direct_num_workers=2", "--direct_running_mode=multi_processing"]
)


def _by_id(directory):
    source = arrayrecord.ArrayRecordSource(directory)
    return {str(sample["id"]): sample for sample in (source[i] for i in range(len(source)))}


def _assert_same_records(a, b):
    a, b = _by_id(a), _by_id(b)
    assert a.keys() == b.keys()
    for example_id, sample in a.items():
        assert sample.keys() == b[example_id].keys()
        for key, value in sample.items():
            np.testing.assert_array_equal(value, b[example_id][key], err_msg=f"{example_id}/{key}")


def _assert_same_stats(a, b):
    """Equal up to float summation order: counts, extremes, percentiles and out-of-range pixels
    exactly, means and standard deviations to 1e-12."""
    a, b = stats.read_stats_json(a / "stats.json"), stats.read_stats_json(b / "stats.json")
    assert a.keys() == b.keys()
    for key in a:
        assert {k: v for k, v in a[key].items() if k != "stats"} == {
            k: v for k, v in b[key].items() if k != "stats"
        }
        for band, sa in a[key]["stats"].items():
            sb = b[key]["stats"][band]
            assert sa.keys() == sb.keys()
            for name in ("count", "min", "max", "p1", "p99"):
                assert sa[name] == sb[name], f"{key}/{band}/{name}"
            for name in ("mean", "std"):
                np.testing.assert_allclose(sa[name], sb[name], rtol=1e-12, err_msg=f"{band}/{name}")


def _manifest(directory):
    return json.loads((directory / "manifest.json").read_text())


@pytest.mark.parametrize(
    "source_name, source_args, per_shard",
    [
        ("eurosat_ms", {"root": "eurosat_ms"}, 50),
        ("bigearthnet_s1s2", {"root": "bigearthnet_v2_s1s2"}, 7),
    ],
)
def test_beam_with_two_workers_matches_local_writer(
    shared_data, tmp_path, source_name, source_args, per_shard
):
    args = {k: str(shared_data / v) for k, v in source_args.items()}
    local, beamed = tmp_path / "local", tmp_path / "beam"
    common = dict(name=source_name, examples_per_shard=per_shard, licence="L", citation="C")
    source = datasets.make_source(source_name, **args)
    expected = arrayrecord.prepare(source, local, source_args=args, log_every=0, **common)
    got = beam_prepare.prepare_with_beam(
        source_name, args, str(beamed), pipeline_options=TWO_WORKERS, **common
    )
    # Same shard boundaries and the same record bytes: every field matches, CRC-32s included.
    assert got == expected == _manifest(beamed)
    assert len(got["shards"]) == -(-len(source) // per_shard) > 2
    assert sorted(p.name for p in beamed.iterdir()) == sorted(p.name for p in local.iterdir())
    _assert_same_records(local, beamed)
    _assert_same_stats(local, beamed)


def test_remote_writing_checks_and_repair(tmp_path, monkeypatch):
    """Shards written as for a remote out_dir (a local file, copied, renamed); a prepared
    directory is checked like `prepare` does: other data refused, a damaged shard rebuilt."""
    args = {"split": "validation"}
    local, beamed = tmp_path / "local", tmp_path / "beam"
    arrayrecord.prepare(datasets.BigEarthNetSource(**args), local, name="ben", source_args=args)
    monkeypatch.setattr(beam_prepare, "_is_local", lambda path: False)
    manifest = beam_prepare.prepare_with_beam(
        "bigearthnet_s1s2", args, str(beamed), name="ben", examples_per_shard=1024
    )
    assert manifest == _manifest(local)
    assert sorted(p.name for p in beamed.iterdir()) == [
        "ben-00000-of-00001.array_record",
        "manifest.json",
        "stats.json",
    ]
    _assert_same_records(local, beamed)

    with pytest.raises(FileExistsError, match="split='validation', this run asks split='train'"):
        beam_prepare.prepare_with_beam("bigearthnet_s1s2", {"split": "train"}, str(beamed))
    shard = beamed / "ben-00000-of-00001.array_record"
    shard.write_bytes(shard.read_bytes()[:100])
    assert beam_prepare.prepare_with_beam("bigearthnet_s1s2", args, str(beamed), name="ben")
    assert _manifest(beamed) == _manifest(local)
    _assert_same_records(local, beamed)


def test_shards_of_unknown_origin_are_refused(tmp_path):
    (tmp_path / "x-00000-of-00001.array_record").write_bytes(b"?")
    with pytest.raises(FileExistsError, match="shards of unknown origin"):
        beam_prepare.prepare_with_beam("bigearthnet_s1s2", {"split": "test"}, str(tmp_path))


def test_prepare_script_with_runner(tmp_path):
    script = [sys.executable, str(ROOT / "scripts" / "prepare_arrayrecord.py")]
    out = tmp_path / "ben"
    flags = [
        "--source=bigearthnet_s1s2",
        '--source_args={"split": "validation"}',
        f"--out_dir={out}",
        "--examples_per_shard=5",
    ]
    beam_flags = ["--direct_num_workers=2", "--direct_running_mode=multi_threading"]
    result = subprocess.run(
        [*script, *flags, "--runner=DirectRunner", *beam_flags],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "8 examples in 2 shards" in result.stdout
    assert "CDLA" in _manifest(out)["citation"]
    result = subprocess.run(
        [*script, *flags, *beam_flags], capture_output=True, text=True, check=False
    )
    assert result.returncode != 0 and "Beam options need --runner" in result.stderr
