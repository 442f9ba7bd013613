"""ArrayRecord shards: writing any source to disk once, and reading them back with random access.

Layout of a prepared directory:

  manifest.json                     written last: its presence means the directory is complete
  stats.json                        per-band count/mean/std/min/max/p1/p99 (nodata excluded)
  <name>-00000-of-00004.array_record
  ...

A record is one sample (`eofm.data.spec`) serialised as an uncompressed `.npz` (numpy's own format,
loaded with `allow_pickle=False`, so a shard cannot execute code). Shards are written under a
temporary name and renamed when complete; re-running `prepare` keeps complete shards, rewrites
missing or damaged ones, and never leaves a half-written file under a final name.
"""

from __future__ import annotations

import io
import json
import logging
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import grain
import numpy as np
from array_record.python import array_record_module

from eofm import files
from eofm.data import stats as stats_lib
from eofm.data.spec import SensorSpec, specs_from_json, specs_to_json, valid_key

MANIFEST = "manifest.json"
STATS = "stats.json"
FORMAT = "eofm.arrayrecord/1"


def encode_example(sample: Mapping[str, Any]) -> bytes:
    """Serialises a sample dict of arrays / scalars / strings to bytes (npz, no pickle)."""
    buf = io.BytesIO()
    np.savez(buf, **{k: np.asarray(v) for k, v in sample.items()})
    return buf.getvalue()


def decode_example(record: bytes) -> dict[str, Any]:
    """Inverse of `encode_example`; string scalars come back as `str`."""
    with np.load(io.BytesIO(record), allow_pickle=False) as z:
        out = {k: z[k] for k in z.files}
    return {k: str(v) if v.dtype.kind == "U" and v.ndim == 0 else v for k, v in out.items()}


def read_manifest(directory: str | os.PathLike) -> dict[str, Any]:
    path = Path(directory) / MANIFEST
    if not path.exists():
        raise FileNotFoundError(
            f"{directory}: no {MANIFEST}; the directory was not prepared or its preparation did not"
            " finish (run scripts/prepare_arrayrecord.py again: it resumes)"
        )
    manifest = json.loads(path.read_text())
    if manifest.get("format") != FORMAT:
        raise ValueError(f"{path}: format {manifest.get('format')!r}, expected {FORMAT!r}")
    return manifest


class ArrayRecordSource:
    """Random-access source over a directory written by `prepare`.

    Attributes: `specs` (key -> SensorSpec), `label_names`, `manifest`, `stats_path`.
    """

    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory)
        self.manifest = read_manifest(directory)
        self.specs = specs_from_json(self.manifest["specs"])
        self.label_names = self.manifest.get("label_names")
        self.stats_path = self.directory / STATS
        paths = [self.directory / s["file"] for s in self.manifest["shards"]]
        for path in paths:
            if not path.exists():
                raise FileNotFoundError(f"{path}: shard listed in {MANIFEST} is missing")
        self._source = grain.sources.ArrayRecordDataSource([os.fspath(p) for p in paths])
        if len(self._source) != self.manifest["num_examples"]:
            raise ValueError(
                f"{directory}: shards hold {len(self._source)} records, {MANIFEST}"
                f" says {self.manifest['num_examples']}; re-run the preparation"
            )

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return decode_example(self._source[index])

    def __repr__(self) -> str:
        return f"ArrayRecordSource({self.directory}, {len(self)} examples, {self.specs})"


def _shard_names(name: str, num_shards: int) -> list[str]:
    return [f"{name}-{i:05d}-of-{num_shards:05d}.array_record" for i in range(num_shards)]


def _complete_shard(path: Path, expected: int) -> bool:
    if not path.exists():
        return False
    try:
        reader = array_record_module.ArrayRecordReader(os.fspath(path))
        ok = reader.num_records() == expected
        reader.close()
    except (RuntimeError, ValueError, OSError):
        ok = False
    return ok


def _write_shard(path: Path, records: Sequence[bytes]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    writer = array_record_module.ArrayRecordWriter(os.fspath(tmp), "group_size:1")
    for record in records:
        writer.write(record)
    writer.close()
    os.replace(tmp, path)


def _feature_info(sample: Mapping[str, Any]) -> dict[str, dict]:
    return {
        k: {"shape": list(np.shape(v)), "dtype": np.asarray(v).dtype.str} for k, v in sample.items()
    }


def prepare(
    source: Any,
    directory: str | os.PathLike,
    *,
    name: str = "data",
    examples_per_shard: int = 1024,
    licence: str = "",
    citation: str = "",
    description: str = "",
    overwrite: bool = False,
    log_every: int = 100,
) -> dict[str, Any]:
    """Writes `source` (with `specs` attribute) into ArrayRecord shards plus manifest and stats.

    One streaming pass over the examples: each is encoded, written and added to the per-band
    statistics. Complete shards from an earlier interrupted run are kept (their records are read
    back for the statistics instead of being recomputed from the raw files).

    Returns:
      The manifest dict.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    specs: Mapping[str, SensorSpec] = source.specs
    num = len(source)
    if num == 0:
        raise ValueError(f"{source!r} is empty")
    num_shards = -(-num // examples_per_shard)
    names = _shard_names(name, num_shards)
    manifest_path = directory / MANIFEST
    if manifest_path.exists():
        old = json.loads(manifest_path.read_text())
        same = (
            old.get("num_examples") == num
            and [s["file"] for s in old.get("shards", [])] == names
            and old.get("specs") == specs_to_json(specs)
        )
        if same and not overwrite:
            logging.info("%s is already prepared; nothing to do", directory)
            return old
        if not overwrite:
            raise FileExistsError(
                f"{directory} holds a different prepared dataset ({old.get('name')},"
                f" {old.get('num_examples')} examples); pass overwrite=True"
            )
        manifest_path.unlink()  # From here on the directory counts as incomplete.
    for stale in directory.glob("*.tmp"):
        stale.unlink()
    if overwrite:
        for shard in directory.glob("*.array_record"):
            shard.unlink()

    accumulators = {k: stats_lib.BandStatsAccumulator(s.bands) for k, s in specs.items()}
    features = None
    start, done = time.time(), 0
    for shard_index, shard_name in enumerate(names):
        lo, hi = shard_index * examples_per_shard, min(num, (shard_index + 1) * examples_per_shard)
        path = directory / shard_name
        reuse = _complete_shard(path, hi - lo)
        reader = grain.sources.ArrayRecordDataSource([os.fspath(path)]) if reuse else None
        records = []
        for i in range(lo, hi):
            if reuse:
                record = reader[i - lo]
                sample = decode_example(record)
            else:
                sample = source[i]
                record = encode_example(sample)
                records.append(record)
            features = features or _feature_info(sample)
            for key, acc in accumulators.items():
                acc.update(sample[key], sample.get(valid_key(key)))
            done += 1
            if log_every and done % log_every == 0:
                rate = done / (time.time() - start)
                logging.info(
                    "%d/%d examples, %.1f/s, ETA %.0fs", done, num, rate, (num - done) / rate
                )
        if not reuse:
            _write_shard(path, records)

    band_stats = {k: acc.result() for k, acc in accumulators.items()}
    stats_lib.write_stats_json(
        directory / STATS, band_stats, sensors={k: s.sensor for k, s in specs.items()}
    )
    manifest = {
        "format": FORMAT,
        "name": name,
        "description": description,
        "num_examples": num,
        "shards": [
            {
                "file": n,
                "num_examples": min(num, (i + 1) * examples_per_shard) - i * examples_per_shard,
            }
            for i, n in enumerate(names)
        ],
        "specs": specs_to_json(specs),
        "features": features,
        "label_names": getattr(source, "label_names", None),
        "licence": licence,
        "citation": citation,
        "source": repr(source),
        "stats": STATS,
    }
    files.write_text_atomic(manifest_path, json.dumps(manifest, indent=2))
    return manifest
