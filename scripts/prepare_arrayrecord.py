r"""Converts any eofm source into ArrayRecord shards + manifest.json + stats.json.

  python scripts/prepare_arrayrecord.py --source=eurosat_ms \
      --source_args='{"root": "../shared/data/eurosat_ms"}' --out_dir=/data/eurosat_ms_ar

Sources are those of `eofm.data.datasets.make_source` (eurosat_ms, bigearthnet_s1s2,
bigearthnet_folders, ssl4eo_s12, geotiff_folder, tfds, arrayrecord). Shards are written under a
temporary name and renamed when complete, and manifest.json is written last: an interrupted run
leaves no half-written shard, and running the same command again resumes where it stopped. On a
prepared directory the command checks that it holds the same source and arguments (an error names
any difference) and rebuilds shards that were damaged since.

With --runner, an Apache Beam pipeline writes the same shards, manifest.json and stats.json
(`eofm.data.beam_prepare`); flags the script does not define are Beam's pipeline options, and
--out_dir may then be a gs:// or s3:// URL:

  python scripts/prepare_arrayrecord.py --source=eurosat_ms \
      --source_args='{"root": "../shared/data/eurosat_ms"}' --out_dir=/data/eurosat_ms_ar \
      --runner=DirectRunner --direct_num_workers=0 --direct_running_mode=multi_processing

Without --runner, one local process writes the shards (the default, best for small data).
"""

import json
import logging

from absl import app, flags

from eofm import logs
from eofm.data import arrayrecord, datasets

_SOURCE = flags.DEFINE_string("source", None, "Registered source name.", required=True)
_SOURCE_ARGS = flags.DEFINE_string("source_args", "{}", "JSON object of keyword arguments.")
_OUT_DIR = flags.DEFINE_string("out_dir", None, "Output directory.", required=True)
_NAME = flags.DEFINE_string("name", None, "Shard file prefix (default: the source name).")
_PER_SHARD = flags.DEFINE_integer("examples_per_shard", 1024, "Examples per shard.")
_LICENCE = flags.DEFINE_string("licence", "", "Licence recorded in the manifest.")
_CITATION = flags.DEFINE_string("citation", None, "Citation (default: the dataset's own).")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace whatever out_dir holds.")
_RUNNER = flags.DEFINE_string(
    "runner",
    None,
    "Apache Beam runner (DirectRunner, DataflowRunner, FlinkRunner, SparkRunner, ...); unset:"
    " the local single-process writer.",
)


def _parse_flags(argv: list[str]) -> list[str]:
    """Parses this script's flags; returns [program, *the rest] (Beam's pipeline options)."""
    return flags.FLAGS(argv, known_only=True)


def _prepare_with_beam(kwargs: dict, citation: str, beam_args: list[str]) -> dict:
    if not flags.FLAGS["verbosity"].present:
        logging.getLogger("apache_beam").setLevel(logging.WARNING)
    from apache_beam.options.pipeline_options import PipelineOptions

    from eofm.data import beam_prepare  # Local: apache-beam is the optional extra "beam".

    return beam_prepare.prepare_with_beam(
        _SOURCE.value,
        kwargs,
        _OUT_DIR.value,
        name=_NAME.value or _SOURCE.value,
        examples_per_shard=_PER_SHARD.value,
        licence=_LICENCE.value,
        citation=citation,
        overwrite=_OVERWRITE.value,
        pipeline_options=PipelineOptions([f"--runner={_RUNNER.value}", *beam_args]),
    )


def main(argv):
    beam_args = argv[1:]
    if beam_args and _RUNNER.value is None:
        raise app.UsageError(f"unknown arguments {beam_args}; Beam options need --runner")
    logs.configure_from_flags()
    try:
        kwargs = json.loads(_SOURCE_ARGS.value)
    except json.JSONDecodeError as e:
        raise app.UsageError(f"--source_args is not valid JSON: {e}") from e
    if not isinstance(kwargs, dict):
        raise app.UsageError(f"--source_args must be a JSON object, got {_SOURCE_ARGS.value}")
    try:
        datasets.check_source_args(_SOURCE.value, kwargs)
    except ValueError as e:
        raise app.UsageError(str(e)) from e
    citation = _CITATION.value
    if citation is None:
        citation = datasets.CITATIONS.get(_SOURCE.value, "")
    if _RUNNER.value is not None:
        manifest = _prepare_with_beam(kwargs, citation, beam_args)
    else:
        manifest = arrayrecord.prepare(
            datasets.make_source(_SOURCE.value, **kwargs),
            _OUT_DIR.value,
            name=_NAME.value or _SOURCE.value,
            source_args=kwargs,
            examples_per_shard=_PER_SHARD.value,
            licence=_LICENCE.value,
            citation=citation,
            overwrite=_OVERWRITE.value,
        )
    print(
        f"{manifest['num_examples']} examples in {len(manifest['shards'])} shards"
        f" -> {_OUT_DIR.value}"
    )


if __name__ == "__main__":
    app.run(main, flags_parser=_parse_flags)
