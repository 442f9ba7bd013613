r"""Converts any eofm source into ArrayRecord shards + manifest.json + stats.json.

  python scripts/prepare_arrayrecord.py --source=eurosat_ms \
      --source_args='{"root": "../shared/data/eurosat_ms"}' --out_dir=/data/eurosat_ms_ar

Sources are those of `eofm.data.datasets.make_source` (eurosat_ms, bigearthnet_s1s2,
bigearthnet_folders, ssl4eo_s12, geotiff_folder, tfds, arrayrecord). Shards are written under a
temporary name and renamed when complete, and manifest.json is written last: an interrupted run
leaves no half-written shard, and running the same command again resumes where it stopped. On a
prepared directory the command checks that it holds the same source and arguments (an error names
any difference) and rebuilds shards that were damaged since.
"""

import json

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


def main(argv):
    del argv
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
    source = datasets.make_source(_SOURCE.value, **kwargs)
    citation = _CITATION.value
    if citation is None:
        citation = datasets.CITATIONS.get(_SOURCE.value, "")
    manifest = arrayrecord.prepare(
        source,
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
    app.run(main)
