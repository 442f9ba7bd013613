"""Checkpoints: train state + grain iterator state + run metadata, with orbax.

Layout: WORKDIR/checkpoints/<step>/{state, data, meta}. Saves are asynchronous (training continues
while arrays are written) and atomic (orbax finalises a step directory only when complete). The
manager keeps the last `keep` checkpoints plus every `keep_period`-th step.

Restoring walks back from the newest step: a checkpoint that fails to load (truncated or deleted
files) is moved aside to WORKDIR/checkpoints_unreadable/ with a warning, and the previous one is
used. A checkpoint of another model (name, variant or parameter shapes) is an error, not a fallback.
Arrays are restored directly onto the shardings of the abstract state given, so a run saved on 8
devices restores on 2 or on another mesh layout.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp


class CheckpointMismatchError(ValueError):
    """The checkpoint was written by another model or variant."""


class Checkpointer:
    """Saves and restores (state, data iterator, metadata) under `directory`."""

    def __init__(self, directory: str | Path, *, keep: int = 3, keep_period: int | None = None):
        self.directory = Path(directory).absolute()
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, keep_period=keep_period, enable_async_checkpointing=True, create=True
        )
        self._manager = ocp.CheckpointManager(self.directory, options=options)

    @property
    def steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def save(
        self,
        step: int,
        state: Any,
        iterator: grain.DatasetIterator,
        meta: dict[str, Any],
        *,
        force: bool = False,
    ) -> bool:
        """Starts an asynchronous save; returns whether one was started."""
        return self._manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state),
                data=grain.checkpoint.CheckpointSave(_IteratorSnapshot(iterator)),
                meta=ocp.args.JsonSave(meta),
            ),
            force=force,
        )

    def wait(self) -> None:
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()

    def restore_latest(
        self, abstract_state: Any, iterator: grain.DatasetIterator | None, meta: dict[str, Any]
    ) -> tuple[int, Any] | None:
        """Restores the newest readable checkpoint into `iterator` and returns (step, state).

        With `iterator` None only the train state is restored (evaluation, visualisation).
        Returns None when there is no checkpoint. `meta` is this run's metadata: its "model",
        "variant" and "param_shapes" must match the checkpoint's.
        """
        for step in reversed(self.steps):
            try:
                saved_meta = self._manager.restore(
                    step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())
                )["meta"]
            except Exception as e:  # noqa: BLE001 - any unreadable file means a bad checkpoint
                self._set_aside(step, e)
                continue
            check_same_model(saved_meta, meta, self.directory / str(step))
            items = {"state": ocp.args.StandardRestore(abstract_state)}
            if iterator is not None:
                items["data"] = grain.checkpoint.CheckpointRestore(iterator)
            try:
                restored = self._manager.restore(step, args=ocp.args.Composite(**items))
            except Exception as e:  # noqa: BLE001
                self._set_aside(step, e)
                continue
            return step, restored["state"]
        return None

    def latest_params(self) -> tuple[int, dict[str, Any]]:
        """The model variables (trained and frozen) of the newest checkpoint as {"/"-joined path:
        array}, read without a target structure onto this process's first device, whatever the
        topology that saved them (to initialise another run from it, e.g. a later training stage,
        or to load an encoder)."""
        step = self._manager.latest_step()
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory} to initialise from")
        # Saved shardings may name devices this process does not have (another topology).
        here = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        saved = self._manager.restore(
            step, args=ocp.args.Composite(state=ocp.args.StandardRestore(fallback_sharding=here))
        )["state"]
        leaves = [
            leaf
            for part in ("params", "frozen")
            for leaf in jax.tree_util.tree_flatten_with_path(saved.get(part, {}))[0]
        ]
        return step, {
            "/".join(str(getattr(k, "key", k)) for k in path): np.asarray(x) for path, x in leaves
        }

    def latest_meta(self) -> tuple[int, dict[str, Any]]:
        """(step, metadata) of the newest checkpoint."""
        step = self._manager.latest_step()
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        meta = self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        return step, meta["meta"]

    def _set_aside(self, step: int, error: Exception) -> None:
        """Moves an unreadable checkpoint out of the manager's way; nothing is deleted."""
        target = self.directory.parent / "checkpoints_unreadable" / str(step)
        logging.warning(
            "checkpoint %s is unreadable (%s: %s); moved to %s, using the previous one",
            self.directory / str(step),
            type(error).__name__,
            str(error)[:300],
            target,
        )
        if jax.process_index() == 0:
            target.parent.mkdir(parents=True, exist_ok=True)
            if target.exists():
                shutil.rmtree(target)
            shutil.move(self.directory / str(step), target)
        self._manager.reload()


class _IteratorSnapshot:
    """A grain iterator's state taken now: orbax writes it later, from a background thread, when
    the live iterator has already moved on."""

    def __init__(self, iterator: grain.DatasetIterator):
        self._state = json.dumps(iterator.get_state(), indent=4).encode()

    def get_state(self) -> bytes:
        return self._state


def check_same_model(saved: dict[str, Any], current: dict[str, Any], where: Path) -> None:
    """Raises CheckpointMismatchError naming what differs between two runs' metadata."""
    if saved.get("format", 1) != current.get("format", 1):
        raise CheckpointMismatchError(
            f"checkpoint {where} has layout version {saved.get('format', 1)}, this eofm writes"
            f" version {current.get('format', 1)}: use another --workdir"
        )
    for key in ("model", "variant"):
        if saved.get(key) != current.get(key):
            raise CheckpointMismatchError(
                f"checkpoint {where} is of {key} {saved.get(key)!r}, this run is"
                f" {current.get(key)!r}: use another --workdir or the matching config"
            )
    saved_shapes, shapes = saved.get("param_shapes", {}), current.get("param_shapes", {})
    if saved_shapes != shapes:
        missing = sorted(set(shapes) - set(saved_shapes))[:5]
        unexpected = sorted(set(saved_shapes) - set(shapes))[:5]
        differ = sorted(k for k in set(shapes) & set(saved_shapes) if saved_shapes[k] != shapes[k])[
            :5
        ]
        raise CheckpointMismatchError(
            f"checkpoint {where} has other parameters than this model: missing {missing},"
            f" unexpected {unexpected}, shapes differ for {differ}"
        )
