"""Input-pipeline throughput from GeoTIFF and from ArrayRecord, printed as a table.

  python scripts/bench_data.py [--num_workers=2] [--batches=30]

Datasets: EuroSAT-MS (216 GeoTIFFs, 13 x 64 x 64, from ../shared/data) and the vendored BigEarthNet
S1+S2 pairs (12 + 2 bands at 120 x 120, from .npz with S2 resampling to 10 m). Each is timed read
from its original files and from ArrayRecord shards prepared first, through the same pipeline:
normalise (z-score) -> random crop/flip/rot90 -> batch. The first batch (worker start-up) is not
timed.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

from absl import app, flags

from eofm.data import arrayrecord, augment, datasets, normalize, pipeline, stats

_WORKERS = flags.DEFINE_integer("num_workers", 2, "grain worker processes.")
_BATCHES = flags.DEFINE_integer("batches", 30, "Timed batches per row.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 32, "Batch size.")
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


def main(argv):
    del argv
    shared = Path(_SHARED.value)
    cases = [
        ("EuroSAT-MS", "GeoTIFF", lambda: datasets.eurosat_ms(shared / "eurosat_ms"), 64),
        ("BigEarthNet S1+S2", "npz + resample", datasets.BigEarthNetSource, 112),
    ]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, origin, make, size in cases:
            source = make()
            directory = os.path.join(tmp, name.split()[0])
            start = time.perf_counter()
            arrayrecord.prepare(source, directory, examples_per_shard=64, log_every=0)
            prepare_s = time.perf_counter() - start
            prepared = arrayrecord.ArrayRecordSource(directory)
            band_stats = stats.read_stats_json(prepared.stats_path)
            rows.append((name, origin, _samples_per_second(source, band_stats, size)))
            rows.append((name, "ArrayRecord", _samples_per_second(prepared, band_stats, size)))
            print(
                f"prepared {name}: {len(source)} examples in {prepare_s:.1f} s"
                f" ({len(source) / prepare_s:.0f} examples/s, one pass incl. statistics)"
            )
    print(
        f"\nworkers={_WORKERS.value}  batch={_BATCH_SIZE.value}  timed batches={_BATCHES.value}"
        f"  cpus={os.cpu_count()}"
    )
    print(f"| {'dataset':18s} | {'read from':15s} | {'samples/s':>9s} |")
    print(f"|{'-' * 20}|{'-' * 17}|{'-' * 11}|")
    for name, origin, rate in rows:
        print(f"| {name:18s} | {origin:15s} | {rate:9.0f} |")


if __name__ == "__main__":
    app.run(main)
