"""ArrayRecord shards: writing any source to disk once, and reading them back with random access.

Layout of a prepared directory:

  manifest.json                     written last: its presence means the directory is complete
  stats.json                        per-band count/mean/std/min/max/p1/p99 (invalid pixels
                                    excluded) and the pixels out of physical range, by file
  <name>-00000-of-00004.array_record
  ...
  preparing.jsonl                   only while a preparation is unfinished: its journal

A record is one sample (`eofm.data.spec`) serialised as an uncompressed `.npz` (numpy's own format,
loaded with `allow_pickle=False`, so a shard cannot execute code). Shards are written under a
temporary name and renamed when complete, so a half-written file never has a final name.

Trust. The manifest records a fingerprint of what was prepared (`source_fingerprint`: the source's
name and arguments, and what it reads: its files with their sizes, or a TFDS name, split and
version) and the size and CRC-32 of every shard. `prepare` on a prepared directory compares the
fingerprints and refuses other data with an error naming the difference; for the same data it checks
every shard and rebuilds only those whose size or checksum changed. A manifest without a fingerprint
(written by an older eofm) is refused: nothing says what it holds.

Cost of that check on every start: one `stat` per source file (building the source already lists
them), and one streamed read of every shard, hashed with zlib's CRC-32 (a few GB/s per core, faster
than most disks) in parallel threads. It costs about one read of the prepared data: some 50 s per
100 GB at 2 GB/s, small beside a training run over that data.

Resuming. The journal `preparing.jsonl` holds the fingerprint and, one line per finished shard, its
size, checksum and out-of-range pixel counts. Running `prepare` again after an interruption keeps
the finished shards that are intact (their records are read back for the statistics), redoes the
others, and refuses to resume a journal of other data. Shards without a journal or manifest are of
unknown origin and are refused too; `overwrite=True` replaces whatever the directory holds.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import io
import json
import logging
import os
import threading
import time
import zipfile
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import grain
import numpy as np
from array_record.python import array_record_module

from eofm import files
from eofm.data import stats as stats_lib
from eofm.data import validity
from eofm.data.spec import SensorSpec, specs_from_json, specs_to_json, valid_key

MANIFEST = "manifest.json"
STATS = "stats.json"
JOURNAL = "preparing.jsonl"
FORMAT = "eofm.arrayrecord/1"

_REPAIR = "run the preparation again: it checks every shard and rebuilds damaged ones"
_READ_ERRORS = (RuntimeError, ValueError, OSError, EOFError, zipfile.BadZipFile)
_HASH_BLOCK = 4 << 20

_log = logging.getLogger(__name__)


def encode_example(sample: Mapping[str, Any]) -> bytes:
    """Serialises a sample dict of arrays / scalars / strings to bytes (npz, no pickle)."""
    buf = io.BytesIO()
    np.savez(buf, **{k: np.asarray(v) for k, v in sample.items()})
    return buf.getvalue()


# np.load parses each array's header with ast.literal_eval, which CPython 3.11 can fail with
# "SystemError: AST constructor recursion depth mismatch" when threads call it at once (CPython
# issue 106905); grain's reader threads decode concurrently. The records are uncompressed npz,
# so decoding under one lock costs a copy per array.
_DECODE_LOCK = threading.Lock()


def decode_example(record: bytes) -> dict[str, Any]:
    """Inverse of `encode_example`; string scalars come back as `str`."""
    with _DECODE_LOCK, np.load(io.BytesIO(record), allow_pickle=False) as z:
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


class ShardReadError(RuntimeError):
    """A shard could not be read; the message names the file."""


def _num_records(path: Path) -> int:
    try:
        reader = array_record_module.ArrayRecordReader(os.fspath(path))
        try:
            return reader.num_records()
        finally:
            reader.close()
    except _READ_ERRORS as e:
        raise ShardReadError(f"{path}: cannot open shard ({e}); {_REPAIR}") from e


class ArrayRecordSource:
    """Random-access source over a directory written by `prepare`.

    Attributes: `specs` (key -> SensorSpec), `label_names`, `manifest`, `stats_path`. Any failure to
    read a record raises `ShardReadError` naming the shard.
    """

    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory)
        self.manifest = read_manifest(directory)
        self.specs = specs_from_json(self.manifest["specs"])
        self.label_names = self.manifest.get("label_names")
        self.stats_path = self.directory / STATS
        shards = self.manifest["shards"]
        self._paths = [self.directory / s["file"] for s in shards]
        for path in self._paths:
            if not path.exists():
                raise FileNotFoundError(f"{path}: shard listed in {MANIFEST} is missing")
        with concurrent.futures.ThreadPoolExecutor() as pool:
            counts = list(pool.map(_num_records, self._paths))
        for path, shard, count in zip(self._paths, shards, counts):
            if count != shard["num_examples"]:
                raise ShardReadError(
                    f"{path}: holds {count} records, {MANIFEST} says {shard['num_examples']};"
                    f" {_REPAIR}"
                )
        self._ends = np.cumsum(counts)
        # "file[0:n]" tells grain the record count, so it does not open every shard again.
        self._source = grain.sources.ArrayRecordDataSource(
            [f"{p}[0:{n}]" for p, n in zip(self._paths, counts)]
        )

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < len(self):
            raise IndexError(f"{self.directory}: index {index} outside [0, {len(self)})")
        try:
            return decode_example(self._source[index])
        except _READ_ERRORS as e:
            shard = int(np.searchsorted(self._ends, index, side="right"))
            position = index - (int(self._ends[shard - 1]) if shard else 0)
            raise ShardReadError(
                f"{self._paths[shard]}: cannot read record {position} (example {index}): {e};"
                f" {_REPAIR}"
            ) from e

    def reads_from(self) -> dict[str, list[str]]:
        return {"files": [os.fspath(p) for p in self._paths]}

    def __repr__(self) -> str:
        return f"ArrayRecordSource({self.directory}, {len(self)} examples, {self.specs})"


# ---------------------------------------------------------------------------------------------
# Fingerprints of sources and checksums of shards


def file_crc32(path: str | os.PathLike) -> str:
    """CRC-32 of a file's bytes as 8 hex digits, streamed through one 4 MiB buffer."""
    crc, buffer = 0, bytearray(_HASH_BLOCK)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buffer):
            crc = zlib.crc32(view[:n], crc)
    return f"{crc:08x}"


def _files_summary(paths: Sequence[str]) -> dict[str, Any]:
    """{"count", "bytes", "dir" (their common folder), "sha256" of every absolute path and size}."""
    absolute = [os.path.abspath(p) for p in paths]
    digest, total = hashlib.sha256(), 0
    for path in absolute:
        size = os.stat(path).st_size
        total += size
        digest.update(f"{path}\0{size}\n".encode())
    common = os.path.commonpath([os.path.dirname(p) for p in absolute]) if absolute else ""
    return {"count": len(paths), "bytes": total, "dir": common, "sha256": digest.hexdigest()}


def _list_summary(values: Sequence[Any]) -> dict[str, Any]:
    digest = hashlib.sha256(json.dumps(_plain(values)).encode())
    return {"count": len(values), "sha256": digest.hexdigest()}


def _plain(value: Any) -> Any:
    """`value` as JSON data: mappings (ConfigDicts too) -> dicts, sequences -> lists, paths ->
    strings, other objects -> their repr."""
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if hasattr(value, "items"):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return repr(value)


def source_fingerprint(
    source: Any, name: str, source_args: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """What identifies the data `source` yields, as JSON data.

    {"source": name, "args": source_args, "reads": the source's `reads_from()` with its "files"
    summarised by count, total size and a digest of paths and sizes, and other lists by count and
    digest}. "args" is None when not given and "reads" for a source without `reads_from`: unknown
    parts are not compared (`_fingerprint_differences`), so such sources are told apart only by
    name, specs and size.
    """
    reads = getattr(source, "reads_from", None)
    summary = None
    if reads is not None:
        summary = {}
        for key, value in reads().items():
            if key == "files":
                summary[key] = _files_summary(value)
            elif isinstance(value, (list, tuple)):
                summary[key] = _list_summary(value)
            else:
                summary[key] = _plain(value)
    return {
        "source": name,
        "args": None if source_args is None else _plain(source_args),
        "reads": summary,
    }


def _shown(mapping: Mapping[str, Any], key: str) -> str:
    return f"{key}={mapping[key]!r}" if key in mapping else f"{key} not given"


def _read_difference(key: str, old: Any, new: Any) -> str:
    if key == "files" and isinstance(old, dict) and isinstance(new, dict):
        same_totals = (old["count"], old["bytes"]) == (new["count"], new["bytes"])
        return (
            f"it was read from {old['count']} files ({old['bytes']} bytes) under {old['dir']},"
            f" this run reads {new['count']} files ({new['bytes']} bytes) under {new['dir']}"
            + (" with other names or sizes" if same_totals else "")
        )
    if isinstance(old, dict) and isinstance(new, dict) and "sha256" in old:
        return f"it holds {old['count']} {key}, this run reads {new['count']} other {key}"
    return f"{key} {old!r}, this run reads {new!r}"


def _arg_differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    return [
        f"{_shown(old, k)}, this run asks {_shown(new, k)}"
        for k in sorted(old.keys() | new.keys())
        if (k in old) != (k in new) or old.get(k) != new.get(k)
    ]


def _read_differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    return [
        _read_difference(key, old.get(key), new.get(key))
        for key in sorted(old.keys() | new.keys())
        if old.get(key) != new.get(key)
    ]


def _fingerprint_differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """Human-readable differences between two `source_fingerprint`s; "args" and "reads" are
    compared only when both are known."""
    out = []
    if old.get("source") != new["source"]:
        out.append(f"source {old.get('source')!r}, this run asks {new['source']!r}")
    if old.get("args") is not None and new["args"] is not None:
        out += _arg_differences(old["args"], new["args"])
    if old.get("reads") is not None and new["reads"] is not None:
        out += _read_differences(old["reads"], new["reads"])
    return out


def _file_check(path: Path) -> dict[str, Any]:
    return {"bytes": path.stat().st_size, "crc32": file_crc32(path)}


def _shard_problem(path: Path, entry: Mapping[str, Any]) -> str | None:
    """Why the shard at `path` is not the one `entry` describes, or None when it is."""
    if not path.exists():
        return "missing"
    size = path.stat().st_size
    if size != entry["bytes"]:
        return f"{size} bytes, expected {entry['bytes']}"
    if file_crc32(path) != entry["crc32"]:
        return f"CRC-32 differs from the recorded {entry['crc32']}"
    return None


def _shard_problems(directory: Path, entries: Sequence[Mapping[str, Any]]) -> list[str | None]:
    """`_shard_problem` of every entry, checked in parallel (hashing releases the GIL)."""
    with concurrent.futures.ThreadPoolExecutor() as pool:
        return list(pool.map(lambda e: _shard_problem(directory / e["file"], e), entries))


# ---------------------------------------------------------------------------------------------
# Writing


def _shard_names(name: str, num_shards: int) -> list[str]:
    return [f"{name}-{i:05d}-of-{num_shards:05d}.array_record" for i in range(num_shards)]


def _shard_bounds(index: int, examples_per_shard: int, num: int) -> tuple[int, int]:
    """[lo, hi) of the examples of shard `index` when `num` examples are cut every
    `examples_per_shard`."""
    return index * examples_per_shard, min(num, (index + 1) * examples_per_shard)


def _shard_ranges(entries: Sequence[Mapping[str, Any]]) -> list[tuple[int, int]]:
    ends = np.cumsum([e["num_examples"] for e in entries]).tolist()
    return [(end - e["num_examples"], end) for end, e in zip(ends, entries)]


def _write_shard(path: Path, records: Sequence[bytes], tmp: Path | None = None) -> None:
    """Writes `records` to `tmp` (default: `path` + ".tmp"), then renames it to `path`."""
    tmp = tmp or path.with_name(path.name + ".tmp")
    writer = array_record_module.ArrayRecordWriter(os.fspath(tmp), "group_size:1")
    for record in records:
        writer.write(record)
    writer.close()
    os.replace(tmp, path)


def _shard_from_source(
    source: Any,
    path: Path,
    lo: int,
    hi: int,
    on_sample: Callable[[dict], None],
    tmp: Path | None = None,
) -> dict[str, Any]:
    """Writes examples [lo, hi) of `source` to `path` through the temporary file `tmp` (default:
    `path` + ".tmp"); returns its journal entry (file, num_examples, bytes, crc32, out_of_range:
    {key: {file: {band: pixels}}})."""
    report = validity.OutOfRangeReport()
    records = []
    for i in range(lo, hi):
        sample = report.collect(source.__getitem__, i)
        on_sample(sample)
        records.append(encode_example(sample))
    _write_shard(path, records, tmp)
    entry = {"file": path.name, "num_examples": hi - lo, **_file_check(path)}
    return {**entry, "out_of_range": report.counts}


def _shard_samples(path: Path) -> Iterator[dict[str, Any]]:
    reader = grain.sources.ArrayRecordDataSource([os.fspath(path)])
    for i in range(len(reader)):
        try:
            yield decode_example(reader[i])
        except _READ_ERRORS as e:
            raise ShardReadError(f"{path}: cannot read record {i}: {e}; {_REPAIR}") from e


def _feature_info(sample: Mapping[str, Any]) -> dict[str, dict]:
    return {
        k: {"shape": list(np.shape(v)), "dtype": np.asarray(v).dtype.str} for k, v in sample.items()
    }


def _remove_preparation(directory: Path) -> None:
    """Removes what `prepare` writes (for overwrite=True)."""
    for path in (directory / MANIFEST, directory / JOURNAL, directory / STATS):
        path.unlink(missing_ok=True)
    for shard in directory.glob("*.array_record"):
        shard.unlink()


def _write_journal(
    directory: Path, header: Mapping[str, Any], entries: Sequence[Mapping[str, Any]] = ()
) -> None:
    lines = [json.dumps(header), *(json.dumps(e) for e in entries)]
    files.write_text_atomic(directory / JOURNAL, "\n".join(lines) + "\n")


def _append_journal(directory: Path, entry: Mapping[str, Any]) -> None:
    with open(directory / JOURNAL, "a") as f:
        f.write(json.dumps(entry) + "\n")
        f.flush()
        os.fsync(f.fileno())


def _read_journal(directory: Path) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """(header, {shard file: entry}); a last line cut short by a crash is ignored."""
    header, *lines = (directory / JOURNAL).read_text().splitlines()
    entries = {}
    for line in lines:
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            break
        entries[entry["file"]] = entry
    return json.loads(header), entries


def _value_differences(recorded: Mapping[str, Any], wanted: Mapping[str, Any]) -> list[str]:
    return [
        f"{k} {recorded.get(k)!r}, this run asks {v!r}"
        for k, v in wanted.items()
        if recorded.get(k) != v
    ]


def _mismatch(directory: Path, what: str, differences: Sequence[str]) -> FileExistsError:
    return FileExistsError(
        f"{directory} holds {what}: {'; '.join(differences)}. Use another directory, or delete"
        " this one (overwrite=True, or --overwrite, replaces it)"
    )


def _resumable_shards(
    directory: Path, fingerprint: Mapping[str, Any], layout: Mapping[str, Any]
) -> dict[str, dict[str, Any]]:
    """Journal entries of the shards an interrupted preparation of the same data finished; starts
    a journal when there is none, and drops a last line cut short from one that is resumed."""
    if not (directory / JOURNAL).exists():
        if any(directory.glob("*.array_record")):
            raise _mismatch(
                directory,
                "shards of unknown origin",
                [f"there is neither {MANIFEST} nor {JOURNAL}"],
            )
        _write_journal(directory, {"format": FORMAT, "fingerprint": fingerprint, "layout": layout})
        return {}
    header, entries = _read_journal(directory)
    differences = _fingerprint_differences(header["fingerprint"], fingerprint)
    differences += _value_differences(header["layout"], layout)
    if differences:
        raise _mismatch(directory, "an interrupted preparation of other data", differences)
    _write_journal(directory, header, list(entries.values()))
    return entries


def _check_prepared(
    directory: Path, manifest: Mapping[str, Any], fingerprint: Mapping[str, Any], layout: dict
) -> None:
    """Raises FileExistsError unless `manifest` describes the data of `fingerprint` and `layout`
    ({"num_examples", "specs"})."""
    if "fingerprint" not in manifest:
        raise FileExistsError(
            f"{directory} was prepared by an older eofm and has no fingerprint of its source, so"
            " nothing tells whether it holds this run's data: delete it (or pass overwrite=True,"
            " or --overwrite) and prepare again"
        )
    differences = _fingerprint_differences(manifest["fingerprint"], fingerprint)
    differences += _value_differences(manifest, layout)
    if differences:
        raise _mismatch(directory, "a different prepared dataset", differences)


def _repair(source: Any, directory: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """Rebuilds the shards of a prepared `directory` whose size or checksum changed."""
    problems = _shard_problems(directory, manifest["shards"])
    ranges = _shard_ranges(manifest["shards"])
    damaged = [i for i, problem in enumerate(problems) if problem]
    for i in damaged:
        entry, (lo, hi) = manifest["shards"][i], ranges[i]
        _log.warning(
            "%s: %s; rebuilding this shard from the source", directory / entry["file"], problems[i]
        )
        # The statistics and their out-of-range report stay those of the first run.
        rebuilt = _shard_from_source(source, directory / entry["file"], lo, hi, lambda _: None)
        entry.update(bytes=rebuilt["bytes"], crc32=rebuilt["crc32"])
    if damaged:
        files.write_text_atomic(directory / MANIFEST, json.dumps(manifest, indent=2))
    else:
        _log.info("%s is already prepared; nothing to do", directory)
    return manifest


class _Statistics:
    """Per-band statistics, the feature layout and a progress line over one pass of the examples."""

    def __init__(self, specs: Mapping[str, SensorSpec], num: int, log_every: int):
        self.accumulators = {k: stats_lib.BandStatsAccumulator(s.bands) for k, s in specs.items()}
        self.features: dict[str, dict] | None = None
        self.num, self.log_every = num, log_every
        self.start, self.done = time.time(), 0

    def add(self, sample: Mapping[str, Any]) -> None:
        self.features = self.features or _feature_info(sample)
        for key, acc in self.accumulators.items():
            acc.update(sample[key], sample.get(valid_key(key)))
        self.done += 1
        if self.log_every and self.done % self.log_every == 0:
            rate = self.done / (time.time() - self.start)
            eta = (self.num - self.done) / rate
            _log.info("%d/%d examples, %.1f/s, ETA %.0fs", self.done, self.num, rate, eta)

    def result(self) -> dict[str, dict[str, dict[str, float]]]:
        return {k: acc.result() for k, acc in self.accumulators.items()}


def _split_out_of_range(
    entries: Sequence[Mapping[str, Any]],
) -> tuple[list[dict[str, Any]], validity.OutOfRangeReport]:
    """(manifest entries, out-of-range report of all shards) from journal entries in shard order."""
    shards, out_of_range = [], validity.OutOfRangeReport()
    for entry in entries:
        for key, counts in entry["out_of_range"].items():
            out_of_range.add(key, counts)
        shards.append({k: v for k, v in entry.items() if k != "out_of_range"})
    return shards, out_of_range


def _write_shards(
    source: Any,
    directory: Path,
    name: str,
    examples_per_shard: int,
    finished: Mapping[str, Mapping[str, Any]],
    statistics: _Statistics,
) -> tuple[list[dict[str, Any]], validity.OutOfRangeReport]:
    """Writes `source` as shards `<name>-i-of-n`, keeping the intact `finished` ones and adding
    every example to `statistics`; returns the shards' manifest entries and the out-of-range
    report."""
    num = len(source)
    names = _shard_names(name, -(-num // examples_per_shard))
    entries = []
    for index, shard_name in enumerate(names):
        lo, hi = _shard_bounds(index, examples_per_shard, num)
        path = directory / shard_name
        entry = finished.get(shard_name)
        problem = "not finished" if entry is None else _shard_problem(path, entry)
        if problem is None:
            for sample in _shard_samples(path):
                statistics.add(sample)
        else:
            if entry is not None:
                _log.warning("%s: %s; writing it again", path, problem)
            entry = _shard_from_source(source, path, lo, hi, statistics.add)
            _append_journal(directory, entry)
        entries.append(entry)
    return _split_out_of_range(entries)


def _manifest(
    source: Any,
    *,
    name: str,
    description: str,
    fingerprint: Mapping[str, Any],
    shards: Sequence[Mapping[str, Any]],
    features: Mapping[str, dict] | None,
    licence: str,
    citation: str,
) -> dict[str, Any]:
    """The manifest of a complete preparation of `source` into `shards` (their manifest entries)."""
    return {
        "format": FORMAT,
        "name": name,
        "description": description,
        "num_examples": len(source),
        "fingerprint": fingerprint,
        "shards": list(shards),
        "specs": specs_to_json(source.specs),
        "features": features,
        "label_names": getattr(source, "label_names", None),
        "licence": licence,
        "citation": citation,
        "source": repr(source),
        "stats": STATS,
    }


def prepare(
    source: Any,
    directory: str | os.PathLike,
    *,
    name: str = "data",
    source_args: Mapping[str, Any] | None = None,
    examples_per_shard: int = 1024,
    licence: str = "",
    citation: str = "",
    description: str = "",
    overwrite: bool = False,
    log_every: int = 100,
) -> dict[str, Any]:
    """Writes `source` (with `specs` attribute) into ArrayRecord shards plus manifest and stats.

    One streaming pass over the examples: each is encoded, written and added to the per-band
    statistics. On a directory that is already prepared, checks that it holds the same data and
    rebuilds damaged shards; after an interruption, resumes (see the module docstring).

    Args:
      source: random-access source with `specs` and, ideally, `reads_from()`.
      name: the source's name (e.g. its `eofm.data.datasets.make_source` name), also the prefix of
        the shard files.
      source_args: the arguments the source was built with, for the fingerprint; None when unknown.
      overwrite: replace whatever the directory holds.
    Returns:
      The manifest dict.
    Raises:
      FileExistsError: the directory holds other data, or data of unknown origin, naming the
        difference.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    specs: Mapping[str, SensorSpec] = source.specs
    num = len(source)
    if num == 0:
        raise ValueError(f"{source!r} is empty")
    fingerprint = source_fingerprint(source, name, source_args)
    if overwrite:
        _remove_preparation(directory)
    manifest_path = directory / MANIFEST
    if manifest_path.exists():
        manifest = json.loads(manifest_path.read_text())
        _check_prepared(
            directory, manifest, fingerprint, {"num_examples": num, "specs": specs_to_json(specs)}
        )
        return _repair(source, directory, manifest)
    for stale in directory.glob("*.tmp"):
        stale.unlink()
    layout = {"num_examples": num, "examples_per_shard": examples_per_shard}
    finished = _resumable_shards(directory, fingerprint, layout)

    statistics = _Statistics(specs, num, log_every)
    shards, out_of_range = _write_shards(
        source, directory, name, examples_per_shard, finished, statistics
    )
    if out_of_range.counts:
        _log.warning("%s: %s", directory, out_of_range.summary())
    stats_lib.write_stats_json(
        directory / STATS,
        statistics.result(),
        sensors={k: s.sensor for k, s in specs.items()},
        out_of_range=out_of_range.counts,
    )
    manifest = _manifest(
        source,
        name=name,
        description=description,
        fingerprint=fingerprint,
        shards=shards,
        features=statistics.features,
        licence=licence,
        citation=citation,
    )
    files.write_text_atomic(manifest_path, json.dumps(manifest, indent=2))
    (directory / JOURNAL).unlink()
    return manifest
