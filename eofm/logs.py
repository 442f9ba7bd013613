"""Console logging of the entry points: quiet by default, absl's --verbosity shows everything.

By default a run shows its progress lines, eofm's own messages (mesh, resume, warm start, data
preparation) and every warning; the INFO messages of the libraries underneath (orbax and grain log
through absl's logger, jax through its own) are hidden. `--verbosity=0` (`-v 0`) shows every INFO
message again and `-v 1` adds DEBUG.

    logs.configure_from_flags()   # in main(), after absl has parsed the flags
"""

from __future__ import annotations

import logging

from absl import flags
from absl.logging import converter

# Loggers of the libraries whose INFO messages a default run hides.
LIBRARY_LOGGERS = ("absl", "jax", "orbax", "grain")


def configure(verbosity: int | None = None) -> None:
    """Sets the log levels of eofm (the root logger) and of the libraries it runs on.

    Args:
      verbosity: None: eofm at INFO, the libraries at WARNING. Otherwise an absl verbosity for
        every logger: -1 WARNING, 0 INFO, 1 DEBUG.
    """
    if verbosity is None:
        logging.getLogger().setLevel(logging.INFO)
        library_level = logging.WARNING
    else:
        logging.getLogger().setLevel(converter.absl_to_standard(verbosity))
        library_level = logging.NOTSET  # inherit the root's level
    for name in LIBRARY_LOGGERS:
        logging.getLogger(name).setLevel(library_level)


def configure_from_flags() -> None:
    """`configure` with absl's --verbosity when the command line gives it, else quiet."""
    verbosity = flags.FLAGS["verbosity"]
    configure(verbosity.value if verbosity.present else None)
