"""ArrayRecord preparation as an Apache Beam pipeline, for corpora too large for one process.

`prepare_with_beam` writes what `eofm.data.arrayrecord.prepare` writes: the same shards
`<name>-i-of-n` holding the same records, the same manifest (fingerprint and CRC-32s included) and
the same stats.json (means and standard deviations up to float rounding: the shards' sums are
merged in another order). The pipeline:

  shard indices -> Reshuffle -> _WriteShard -+-> journal entries -> ToList ---------> _finish
                                             +-> accumulators -> MergeBandStats --^ (side input)

`_WriteShard` builds the source inside the worker from its registered name and arguments (sources
need not be picklable), writes one shard atomically and emits its journal entry (size, CRC-32,
out-of-range pixels), the shapes of its first example and one `BandStatsAccumulator` per sample
key. `MergeBandStats`, a CombineFn, merges the accumulators; their histograms merge exactly, so
the percentiles do not depend on the order. `_finish` writes stats.json, then manifest.json, whose
presence still means "complete".

Paths go through Beam's `FileSystems`, so `out_dir` may be local, `gs://...` or `s3://...`. A
shard is written under a temporary name of its own attempt (`<shard>.<random>.tmp`) and renamed
when whole. An ArrayRecord writer needs a local file: for a remote `out_dir` the shard is written
to a local temporary folder first, then copied. The workers read the source's own files: on a
cluster they must reach them.

Before the pipeline, the driver applies `prepare`'s checks: a manifest of other data, a journal of
an interrupted preparation of other data, or shards with neither are refused, naming the
difference. On a directory already prepared from the same data the driver checks every shard (size
and CRC-32) and rebuilds the damaged ones itself. The journal holds the header only: running again
after an interruption writes every shard again.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import logging
import os
import shutil
import tempfile
import uuid
import zlib
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import apache_beam as beam
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions

from eofm import files
from eofm.data import arrayrecord as ar
from eofm.data import datasets
from eofm.data import stats as stats_lib
from eofm.data.spec import SensorSpec, specs_to_json

_COPY_BLOCK = 16 << 20

_log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------
# Files through Beam's FileSystems


def _is_local(path: str) -> bool:
    return FileSystems.get_scheme(path) in (None, "file")


def _read_text(path: str) -> str:
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
        return f.read().decode()


def _put_file(local: str | os.PathLike, path: str, tmp: str | None = None) -> None:
    """Copies the local file `local` to `tmp` (default: `path` + ".tmp"), then renames it to
    `path`."""
    tmp = tmp or path + ".tmp"
    with (
        open(local, "rb") as src,
        FileSystems.create(tmp, compression_type=CompressionTypes.UNCOMPRESSED) as dst,
    ):
        shutil.copyfileobj(src, dst, _COPY_BLOCK)
    FileSystems.rename([tmp], [path])


def _put_text(path: str, text: str) -> None:
    """Writes `text` to `path` atomically (a temporary name, then a rename)."""
    if _is_local(path):
        files.write_text_atomic(path, text)
        return
    with tempfile.NamedTemporaryFile("w", suffix=".txt") as f:
        f.write(text)
        f.flush()
        _put_file(f.name, path)


def _matching(pattern: str) -> list[tuple[str, int]]:
    """(path, bytes) of the files matching `pattern`."""
    return [(m.path, m.size_in_bytes) for m in FileSystems.match([pattern])[0].metadata_list]


def _delete(paths: Sequence[str]) -> None:
    if paths:
        FileSystems.delete(list(paths))


def _crc32(path: str) -> str:
    """CRC-32 of a file's bytes as 8 hex digits, as `arrayrecord.file_crc32`, streamed."""
    crc = 0
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
        while block := f.read(_COPY_BLOCK):
            crc = zlib.crc32(block, crc)
    return f"{crc:08x}"


def _shard_problem(path: str, entry: Mapping[str, Any]) -> str | None:
    """Why the shard at `path` is not the one `entry` describes, or None when it is."""
    found = _matching(path)
    if not found:
        return "missing"
    size = found[0][1]
    if size != entry["bytes"]:
        return f"{size} bytes, expected {entry['bytes']}"
    if _crc32(path) != entry["crc32"]:
        return f"CRC-32 differs from the recorded {entry['crc32']}"
    return None


# ---------------------------------------------------------------------------------------------
# The pipeline's steps


@dataclasses.dataclass(frozen=True)
class ShardPlan:
    """What every worker needs to write its shards: the source's name and arguments, where to
    write, and how the examples are cut into shards."""

    source_name: str
    source_args: Mapping[str, Any]
    out_dir: str
    shard_names: tuple[str, ...]
    examples_per_shard: int
    num_examples: int

    def path(self, index: int) -> str:
        return FileSystems.join(self.out_dir, self.shard_names[index])

    def build_source(self) -> Any:
        source = datasets.make_source(self.source_name, **self.source_args)
        if len(source) != self.num_examples:
            raise RuntimeError(
                f"{self.source_name} {dict(self.source_args)} holds {len(source)} examples on this"
                f" worker, {self.num_examples} when the pipeline was planned: the data changed"
            )
        return source


def write_shard(source: Any, plan: ShardPlan, index: int) -> dict[str, Any]:
    """Writes shard `index` of `plan` from `source`, atomically.

    Returns:
      {"index", "entry": the journal entry (file, num_examples, bytes, crc32, out_of_range),
       "features": shape and dtype of every field of the shard's first example,
       "band_stats": {sample key: BandStatsAccumulator over the shard's examples}}.
    """
    lo, hi = ar._shard_bounds(index, plan.examples_per_shard, plan.num_examples)
    statistics = ar._Statistics(source.specs, hi - lo, log_every=0)
    path = plan.path(index)
    # A temporary name of this attempt alone: a runner may run a retried or speculative attempt
    # of the same shard at the same time.
    tmp = f"{path}.{uuid.uuid4().hex}.tmp"
    if _is_local(path):
        entry = ar._shard_from_source(source, Path(path), lo, hi, statistics.add, Path(tmp))
    else:
        with tempfile.TemporaryDirectory() as folder:
            local = Path(folder) / plan.shard_names[index]
            entry = ar._shard_from_source(source, local, lo, hi, statistics.add)
            _put_file(local, path, tmp)
    return {
        "index": index,
        "entry": entry,
        "features": statistics.features,
        "band_stats": statistics.accumulators,
    }


class _WriteShard(beam.DoFn):
    """Shard index -> `write_shard`'s result, with the source built once per worker; counts the
    examples and bytes written (Beam metrics "eofm/examples_written", "eofm/bytes_written": the
    progress a runner's UI shows)."""

    def __init__(self, plan: ShardPlan):
        self._plan = plan
        self._source = None
        self._examples = beam.metrics.Metrics.counter("eofm", "examples_written")
        self._bytes = beam.metrics.Metrics.counter("eofm", "bytes_written")

    def setup(self):
        self._source = self._plan.build_source()

    def process(self, index: int) -> Iterator[dict[str, Any]]:
        shard = write_shard(self._source, self._plan, index)
        self._examples.inc(shard["entry"]["num_examples"])
        self._bytes.inc(shard["entry"]["bytes"])
        yield shard


class MergeBandStats(beam.CombineFn):
    """Merges {sample key: BandStatsAccumulator} of shards; the output is {key: {band: {stat}}}
    (`BandStatsAccumulator.result` of every key)."""

    def __init__(self, bands: Mapping[str, Sequence[str]]):
        self._bands = {key: tuple(names) for key, names in bands.items()}

    def create_accumulator(self) -> dict[str, stats_lib.BandStatsAccumulator]:
        return {key: stats_lib.BandStatsAccumulator(names) for key, names in self._bands.items()}

    def add_input(self, accumulators, shard_stats):
        for key, accumulator in accumulators.items():
            accumulator.merge(shard_stats[key])
        return accumulators

    def merge_accumulators(self, accumulators):
        merged, *others = accumulators
        for other in others:
            self.add_input(merged, other)
        return merged

    def extract_output(self, accumulators) -> dict[str, dict[str, dict[str, float]]]:
        return {key: accumulator.result() for key, accumulator in accumulators.items()}


def _finish(
    shards: list[dict[str, Any]],
    band_stats: Mapping[str, Any],
    out_dir: str,
    manifest: Mapping[str, Any],
    sensors: Mapping[str, str],
) -> None:
    """Removes what failed attempts left, writes stats.json, then manifest.json (`manifest` with
    the shards and features filled in), then removes the journal."""
    _delete([p for p, _ in _matching(FileSystems.join(out_dir, "*.tmp"))])
    shards = sorted(shards, key=lambda s: s["index"])
    entries, out_of_range = ar._split_out_of_range([s["entry"] for s in shards])
    if out_of_range.counts:
        _log.warning("%s: %s", out_dir, out_of_range.summary())
    with tempfile.TemporaryDirectory() as tmp:
        local = os.path.join(tmp, ar.STATS)
        stats_lib.write_stats_json(
            local, band_stats, sensors=sensors, out_of_range=out_of_range.counts
        )
        _put_text(FileSystems.join(out_dir, ar.STATS), Path(local).read_text())
    manifest = {**manifest, "shards": entries, "features": shards[0]["features"]}
    _put_text(FileSystems.join(out_dir, ar.MANIFEST), json.dumps(manifest, indent=2))
    _delete([FileSystems.join(out_dir, ar.JOURNAL)])


# ---------------------------------------------------------------------------------------------
# The driver


def _remove_preparation(out_dir: str) -> None:
    """Removes what a preparation writes (for overwrite=True)."""
    named = [FileSystems.join(out_dir, n) for n in (ar.MANIFEST, ar.JOURNAL, ar.STATS)]
    _delete([p for p in named if FileSystems.exists(p)])
    _delete([p for p, _ in _matching(FileSystems.join(out_dir, "*.array_record"))])


def _start_journal(out_dir: str, fingerprint: Mapping[str, Any], layout: Mapping[str, Any]) -> None:
    """Refuses an interrupted preparation of other data, or shards of unknown origin; otherwise
    writes the journal's header (as `prepare` does), dropping the entries of an older run."""
    journal = FileSystems.join(out_dir, ar.JOURNAL)
    if FileSystems.exists(journal):
        header = json.loads(_read_text(journal).splitlines()[0])
        differences = ar._fingerprint_differences(header["fingerprint"], fingerprint)
        differences += ar._value_differences(header["layout"], layout)
        if differences:
            raise ar._mismatch(out_dir, "an interrupted preparation of other data", differences)
    elif _matching(FileSystems.join(out_dir, "*.array_record")):
        raise ar._mismatch(
            out_dir,
            "shards of unknown origin",
            [f"there is neither {ar.MANIFEST} nor {ar.JOURNAL}"],
        )
    header = {"format": ar.FORMAT, "fingerprint": fingerprint, "layout": layout}
    _put_text(journal, json.dumps(header) + "\n")


def _repair(source: Any, plan: ShardPlan, manifest: dict[str, Any]) -> dict[str, Any]:
    """Rebuilds, in this process, the shards of a prepared `plan.out_dir` whose size or checksum
    changed; the statistics stay those of the first run."""
    entries = manifest["shards"]
    with concurrent.futures.ThreadPoolExecutor() as pool:
        problems = list(
            pool.map(lambda i: _shard_problem(plan.path(i), entries[i]), range(len(entries)))
        )
    damaged = [i for i, problem in enumerate(problems) if problem]
    for i in damaged:
        _log.warning("%s: %s; rebuilding this shard from the source", plan.path(i), problems[i])
        rebuilt = write_shard(source, plan, i)["entry"]
        entries[i].update(bytes=rebuilt["bytes"], crc32=rebuilt["crc32"])
    if damaged:
        _put_text(FileSystems.join(plan.out_dir, ar.MANIFEST), json.dumps(manifest, indent=2))
    else:
        _log.info("%s is already prepared; nothing to do", plan.out_dir)
    return manifest


def _build(
    pipeline: beam.Pipeline,
    plan: ShardPlan,
    manifest: Mapping[str, Any],
    specs: Mapping[str, SensorSpec],
) -> None:
    """Adds the preparation's steps to `pipeline`; `manifest` lacks only shards and features."""
    shards = (
        pipeline
        | "ShardIndices" >> beam.Create(range(len(plan.shard_names)))
        | "Distribute" >> beam.Reshuffle()
        | "WriteShards" >> beam.ParDo(_WriteShard(plan))
    )
    band_stats = (
        shards
        | "Accumulators" >> beam.Map(lambda shard: shard["band_stats"])
        | "MergeBandStats"
        >> beam.CombineGlobally(MergeBandStats({k: s.bands for k, s in specs.items()}))
    )
    _ = (
        shards
        | "Entries" >> beam.Map(lambda shard: {k: v for k, v in shard.items() if k != "band_stats"})
        | "AllEntries" >> beam.combiners.ToList()
        | "WriteStatsAndManifest"
        >> beam.Map(
            _finish,
            beam.pvalue.AsSingleton(band_stats),
            out_dir=plan.out_dir,
            manifest=manifest,
            sensors={k: s.sensor for k, s in specs.items()},
        )
    )


def prepare_with_beam(
    source_name: str,
    source_args: Mapping[str, Any],
    out_dir: str,
    *,
    name: str | None = None,
    examples_per_shard: int = 1024,
    licence: str = "",
    citation: str = "",
    description: str = "",
    overwrite: bool = False,
    pipeline_options: PipelineOptions | None = None,
) -> dict[str, Any]:
    """Writes source `source_name` into ArrayRecord shards plus manifest and stats with Beam.

    Args:
      source_name, source_args: a source of `eofm.data.datasets.make_source`, built once here (for
        its size, specs and fingerprint) and once in every worker.
      out_dir: local path or any URL Beam's FileSystems write to (gs://, s3://, ...).
      name: prefix of the shard files and, as in `arrayrecord.prepare`, the source's name in the
        fingerprint (default: `source_name`).
      overwrite: replace whatever `out_dir` holds.
      pipeline_options: the runner and its options (default: DirectRunner, one worker).
    Returns:
      The manifest dict, as `arrayrecord.prepare` returns it.
    Raises:
      FileExistsError: `out_dir` holds other data, or data of unknown origin, naming the
        difference.
    """
    options = pipeline_options or PipelineOptions([])
    FileSystems.set_options(options)
    source_args = dict(source_args)
    source = datasets.make_source(source_name, **source_args)
    num = len(source)
    if num == 0:
        raise ValueError(f"{source!r} is empty")
    name = name or source_name
    plan = ShardPlan(
        source_name,
        source_args,
        out_dir,
        tuple(ar._shard_names(name, -(-num // examples_per_shard))),
        examples_per_shard,
        num,
    )
    fingerprint = ar.source_fingerprint(source, name, source_args)
    if not FileSystems.exists(out_dir):
        FileSystems.mkdirs(out_dir)
    if overwrite:
        _remove_preparation(out_dir)
    manifest_path = FileSystems.join(out_dir, ar.MANIFEST)
    if FileSystems.exists(manifest_path):
        manifest = json.loads(_read_text(manifest_path))
        layout = {"num_examples": num, "specs": specs_to_json(source.specs)}
        ar._check_prepared(out_dir, manifest, fingerprint, layout)
        return _repair(source, plan, manifest)
    _delete([p for p, _ in _matching(FileSystems.join(out_dir, "*.tmp"))])
    _start_journal(
        out_dir, fingerprint, {"num_examples": num, "examples_per_shard": examples_per_shard}
    )

    manifest = ar._manifest(
        source,
        name=name,
        description=description,
        fingerprint=fingerprint,
        shards=[],
        features=None,
        licence=licence,
        citation=citation,
    )
    with beam.Pipeline(options=options) as pipeline:
        _build(pipeline, plan, manifest, source.specs)
    return json.loads(_read_text(manifest_path))
