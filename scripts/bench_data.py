"""Preparation and input-pipeline throughput from GeoTIFF and from ArrayRecord, as two tables.

  python scripts/bench_data.py [--num_workers=2] [--batches=30] [--examples_per_shard=16]

Datasets: EuroSAT-MS (216 GeoTIFFs, 13 x 64 x 64, from ../shared/data), the vendored BigEarthNet
S1+S2 pairs (12 + 2 bands at 120 x 120, from .npz with S2 resampling to 10 m) and, for preparation
only, 4096 random 64 x 64 windows of the Sen1Floods11 Sentinel-2 chip (13 bands, 512 x 512): a
corpus large enough for Beam's start-up of its workers (seconds) to matter less.

Preparation: each is written to ArrayRecord shards (with stats.json) by the local writer and by
the Beam DirectRunner with 1, 2 and all local workers (`--beam_running_mode`); examples/s and MB/s
of shards written, from the call to its return (Beam's start-up of its workers included).

Reading: each is timed read from its original files and from the shards of the local writer,
through the same pipeline: normalise (z-score) -> random crop/flip/rot90 -> batch. The first batch
(worker start-up) is not timed.
"""

from __future__ import annotations

import functools
import logging
import os
import tempfile
import time
from pathlib import Path

from absl import app, flags
from apache_beam.options.pipeline_options import PipelineOptions

from eofm.data import arrayrecord, augment, beam_prepare, datasets, normalize, pipeline, stats

_WORKERS = flags.DEFINE_integer("num_workers", 2, "grain worker processes.")
_BATCHES = flags.DEFINE_integer("batches", 30, "Timed batches per row.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 32, "Batch size.")
_PER_SHARD = flags.DEFINE_integer("examples_per_shard", 16, "Examples per prepared shard.")
_BEAM_MODE = flags.DEFINE_enum(
    "beam_running_mode",
    "multi_processing",
    ["multi_processing", "multi_threading"],
    "How the DirectRunner runs its workers.",
)
_SHARED = flags.DEFINE_string(
    "shared_data",
    str(Path(__file__).resolve().parents[2] / "shared" / "data"),
    "Folder of the real data samples.",
)


def _samples_per_second(source, band_stats, size: int) -> float:
    keys = list(source.specs)
    transforms = [
        normalize.Normalize(source.specs, "zscore", band_stats),
        augment.RandomCropFlipRotate(keys, size=size, scale=(0.5, 1.0)),
    ]
    ds = pipeline.make_dataset(
        source,
        batch_size=_BATCH_SIZE.value,
        seed=0,
        transforms=transforms,
        process_index=0,
        process_count=1,
    )
    it = pipeline.make_iterator(ds, num_workers=_WORKERS.value)
    next(it)
    start = time.perf_counter()
    for _ in range(_BATCHES.value):
        next(it)
    return _BATCHES.value * _BATCH_SIZE.value / (time.perf_counter() - start)


def _timed_prepare(write, directory: str) -> tuple[float, dict]:
    """(seconds, manifest) of `write(directory)`."""
    start = time.perf_counter()
    manifest = write(directory)
    return time.perf_counter() - start, manifest


def _preparation_rows(label: str, source_name: str, args: dict, tmp: str) -> list[tuple]:
    """(dataset, writer, workers, seconds, manifest) of the local writer and of Beam's
    DirectRunner with 1, 2 and all local workers; the local writer's row comes first."""
    common = dict(name=source_name, examples_per_shard=_PER_SHARD.value)
    local = functools.partial(
        arrayrecord.prepare,
        datasets.make_source(source_name, **args),
        source_args=args,
        log_every=0,
        **common,
    )
    rows = [
        (label, "local", "1", *_timed_prepare(local, os.path.join(tmp, f"{source_name}-local")))
    ]
    for workers in (1, 2, 0):
        options = PipelineOptions(
            [
                "--runner=DirectRunner",
                f"--direct_num_workers={workers}",
                f"--direct_running_mode={_BEAM_MODE.value}",
            ]
        )
        write = functools.partial(
            beam_prepare.prepare_with_beam, source_name, args, pipeline_options=options, **common
        )
        directory = os.path.join(tmp, f"{source_name}-beam{workers}")
        count = str(workers) if workers else f"all={os.cpu_count()}"
        rows.append((label, "Beam DirectRunner", count, *_timed_prepare(write, directory)))
    return rows


def _print_preparation(rows: list[tuple]) -> None:
    print(
        f"\npreparation: examples_per_shard={_PER_SHARD.value}  Beam"
        f" running mode={_BEAM_MODE.value}  cpus={os.cpu_count()}"
    )
    print(
        f"| {'dataset':18s} | {'writer':17s} | {'workers':>7s} | {'shards':>6s} | {'s':>5s}"
        f" | {'examples/s':>10s} | {'MB/s':>5s} |"
    )
    print(f"|{'-' * 20}|{'-' * 19}|{'-' * 9}|{'-' * 8}|{'-' * 7}|{'-' * 12}|{'-' * 7}|")
    for name, writer, workers, seconds, manifest in rows:
        megabytes = sum(s["bytes"] for s in manifest["shards"]) / 1e6
        print(
            f"| {name:18s} | {writer:17s} | {workers:>7s} | {len(manifest['shards']):6d}"
            f" | {seconds:5.1f} | {manifest['num_examples'] / seconds:10.1f}"
            f" | {megabytes / seconds:5.1f} |"
        )


def main(argv):
    del argv
    logging.getLogger("apache_beam").setLevel(logging.WARNING)
    shared = Path(_SHARED.value)
    scene = shared / "sen1floods11_sample" / "S2" / "Spain_7370579_S2Hand.tif"
    windows = dict(path=str(scene), sensor="sentinel2_l1c", window=64, num_windows=4096)
    cases = [
        ("EuroSAT-MS", "GeoTIFF", "eurosat_ms", {"root": str(shared / "eurosat_ms")}, 64),
        ("BigEarthNet S1+S2", "npz + resample", "bigearthnet_s1s2", {}, 112),
        ("S2 scene windows", None, "xarray_cube", windows, None),
    ]
    rows, preparation = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for name, origin, source_name, args, size in cases:
            preparation += _preparation_rows(name, source_name, args, tmp)
            if origin is None:
                continue
            source = datasets.make_source(source_name, **args)
            directory = os.path.join(tmp, f"{source_name}-local")
            prepared = arrayrecord.ArrayRecordSource(directory)
            band_stats = stats.read_stats_json(prepared.stats_path)
            rows.append((name, origin, _samples_per_second(source, band_stats, size)))
            rows.append((name, "ArrayRecord", _samples_per_second(prepared, band_stats, size)))
    _print_preparation(preparation)
    print(
        f"\nreading: workers={_WORKERS.value}  batch={_BATCH_SIZE.value}"
        f"  timed batches={_BATCHES.value}  cpus={os.cpu_count()}"
    )
    print(f"| {'dataset':18s} | {'read from':15s} | {'samples/s':>9s} |")
    print(f"|{'-' * 20}|{'-' * 17}|{'-' * 11}|")
    for name, origin, rate in rows:
        print(f"| {name:18s} | {origin:15s} | {rate:9.0f} |")


if __name__ == "__main__":
    app.run(main)
