"""Checkpoints: train state + grain iterator state + run metadata, with orbax.

Layout: WORKDIR/checkpoints/<step>/{state, data, meta}. Saves are asynchronous (training continues
while arrays are written) and atomic (orbax finalises a step directory only when complete). The
manager keeps the last `keep` checkpoints plus every `keep_period`-th step. A save that fails (e.g.
a full disk) is a `CheckpointSaveError` at the next `check_for_errors`, `save` or `wait`; the
checkpoints already written stay.

Each save records a checksum of every array of the train state in the metadata ("checksums",
keyed by the "/"-joined leaf path). The checksums are computed on device from the arrays' bits, so
they are the same whatever the sharding or the number of devices, and every restore verifies them.

Restoring walks back from the newest step: a checkpoint that fails to load (truncated or deleted
files) or whose arrays do not match their checksums is moved aside to
WORKDIR/checkpoints_unreadable/ with a warning, and the previous one is used. A read-only
`Checkpointer` (for consumers such as an evaluation) writes nothing: it skips such a checkpoint with
a warning and leaves it in place.
A checkpoint of another model (name, variant or parameter shapes) is an error, not a fallback.
Arrays are restored directly onto the shardings of the abstract state given, so a run saved on 8
devices restores on 2 or on another mesh layout.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import grain
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from eofm.train import optim

T = TypeVar("T")


class CheckpointMismatchError(ValueError):
    """The checkpoint was written by another model or variant."""


class CheckpointCorruptError(ValueError):
    """Arrays of a checkpoint differ from the checksums recorded when it was saved."""


class CheckpointSaveError(OSError):
    """Writing a checkpoint failed; the message names the step, the directory and the cause."""


class Checkpointer:
    """Saves and restores (state, data iterator, metadata) under `directory`.

    With `read_only` nothing is created, moved or written: restoring skips a bad checkpoint with a
    warning instead of setting it aside, and `save` is an error.
    """

    def __init__(
        self,
        directory: str | Path,
        *,
        keep: int = 3,
        keep_period: int | None = None,
        read_only: bool = False,
    ):
        self.directory = Path(directory).absolute()
        self.read_only = read_only
        self._skipped: set[int] = set()  # bad steps a read-only checkpointer leaves in place
        self._saving_step: int | None = None
        if read_only:
            options = ocp.CheckpointManagerOptions(
                read_only=True, create=False, save_interval_steps=0
            )
        else:
            options = ocp.CheckpointManagerOptions(
                max_to_keep=keep, keep_period=keep_period, enable_async_checkpointing=True
            )
        self._manager = ocp.CheckpointManager(self.directory, options=options)

    @property
    def steps(self) -> list[int]:
        """Steps of the checkpoints on disk, oldest first (without those found unreadable)."""
        return sorted(set(self._manager.all_steps()) - self._skipped)

    def save(
        self,
        step: int,
        state: Any,
        iterator: grain.DatasetIterator,
        meta: dict[str, Any],
        *,
        force: bool = False,
    ) -> bool:
        """Starts an asynchronous save; returns whether one was started.

        Raises CheckpointSaveError if the previous save failed or this one cannot start.
        """
        if self.read_only:
            raise PermissionError(f"checkpoints in {self.directory} are opened read-only")
        self.wait()
        meta = {**meta, "checksums": checksums(state)}
        try:
            started = self._manager.save(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardSave(state),
                    data=grain.checkpoint.CheckpointSave(_IteratorSnapshot(iterator)),
                    meta=ocp.args.JsonSave(meta),
                ),
                force=force,
            )
        except OSError as e:
            raise self._save_error(step, e) from e
        if started:
            self._saving_step = step
        return started

    def check_for_errors(self) -> None:
        """Raises CheckpointSaveError if the last asynchronous save failed; returns at once while
        it is still being written (cheap enough to call every step)."""
        if self._saving_step is not None and not self._manager.is_saving_in_progress():
            self.wait()

    def wait(self) -> None:
        """Waits for the asynchronous save; raises CheckpointSaveError if it failed."""
        try:
            self._manager.wait_until_finished()
        except Exception as e:  # whatever stopped the write, the save failed
            raise self._save_error(self._saving_step, e) from e
        finally:
            self._saving_step = None

    def close(self) -> None:
        try:
            self.wait()
        finally:
            self._manager.close()

    def restore_latest(
        self,
        abstract_state: Any,
        iterator: grain.DatasetIterator | None,
        meta: dict[str, Any],
        *,
        check: Callable[[dict[str, Any], Path], None] | None = None,
    ) -> tuple[int, Any] | None:
        """Restores the newest readable checkpoint into `iterator` and returns (step, state).

        With `iterator` None only the train state is restored (evaluation, visualisation).
        Returns None when there is no checkpoint. `meta` is this run's metadata: its "model",
        "variant" and "param_shapes" must match the checkpoint's. `check(saved metadata, step
        directory)`, when given, runs before the arrays are read; its errors stop the restore.
        """
        for step in reversed(self.steps):
            where = self.directory / str(step)
            try:
                saved_meta = self._restore(step, meta=ocp.args.JsonRestore())["meta"]
            except Exception as e:  # noqa: BLE001 - any unreadable file means a bad checkpoint
                self._set_aside(step, e)
                continue
            check_same_model(saved_meta, meta, where)
            if check is not None:
                check(saved_meta, where)
            items = {"state": ocp.args.StandardRestore(abstract_state)}
            if iterator is not None:
                items["data"] = grain.checkpoint.CheckpointRestore(iterator)
            try:
                state = self._restore(step, **items)["state"]
                verify_checksums(state, saved_meta, where)
            except Exception as e:  # noqa: BLE001
                self._set_aside(step, e)
                continue
            return step, state
        return None

    def latest_params(self) -> tuple[int, dict[str, Any]]:
        """The model variables (trained and frozen) of the newest readable checkpoint as
        {"/"-joined path: array}, read without a target structure onto this process's first
        device, whatever the topology that saved them (to initialise another run from it, e.g. a
        later training stage, or to load an encoder)."""
        # Saved shardings may name devices this process does not have (another topology), or
        # devices of other processes (a multi-process run): every array goes to this device.
        here = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])

        def on_this_device(leaf: Any) -> Any:
            if isinstance(leaf, ocp.metadata.ArrayMetadata):
                return jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=here)
            return leaf

        def load(step: int) -> Any:
            saved = ocp.StandardCheckpointHandler().metadata(self.directory / str(step) / "state")
            restored = self._restore(
                step,
                state=ocp.args.StandardRestore(jax.tree.map(on_this_device, saved.tree)),
                meta=ocp.args.JsonRestore(),
            )
            verify_checksums(restored["state"], restored["meta"], self.directory / str(step))
            return restored["state"]

        step, saved = self._newest_readable(load)
        leaves = [
            leaf
            for part in ("params", "frozen")
            for leaf in jax.tree_util.tree_flatten_with_path(saved.get(part, {}))[0]
        ]
        return step, {optim.param_path(path): np.asarray(x) for path, x in leaves}

    def latest_meta(self) -> tuple[int, dict[str, Any]]:
        """(step, metadata) of the newest checkpoint whose metadata is readable."""
        return self._newest_readable(self.meta)

    def meta(self, step: int) -> dict[str, Any]:
        """The metadata of checkpoint `step`."""
        return self._restore(step, meta=ocp.args.JsonRestore())["meta"]

    def _restore(self, step: int, **items: Any) -> dict[str, Any]:
        return self._manager.restore(step, args=ocp.args.Composite(**items))

    def _newest_readable(self, load: Callable[[int], T]) -> tuple[int, T]:
        """(step, load(step)) of the newest checkpoint that loads; the others on the way are set
        aside (read-only: skipped). FileNotFoundError if none loads."""
        for step in reversed(self.steps):
            try:
                return step, load(step)
            except Exception as e:  # noqa: BLE001 - any unreadable file means a bad checkpoint
                self._set_aside(step, e)
        raise FileNotFoundError(f"no readable checkpoint in {self.directory}")

    def _set_aside(self, step: int, error: Exception) -> None:
        """Moves a bad checkpoint out of the manager's way (read-only: skips it); nothing is
        deleted."""
        where = self.directory / str(step)
        reason = f"{type(error).__name__}: {str(error)[:300]}"
        if self.read_only:
            logging.warning(
                "checkpoint %s is unreadable (%s); skipped (read-only, left in place), using the"
                " previous one",
                where,
                reason,
            )
            self._skipped.add(step)
            return
        target = self.directory.parent / "checkpoints_unreadable" / str(step)
        logging.warning(
            "checkpoint %s is unreadable (%s); moved to %s, using the previous one",
            where,
            reason,
            target,
        )
        if jax.process_index() == 0:
            target.parent.mkdir(parents=True, exist_ok=True)
            if target.exists():
                shutil.rmtree(target)
            shutil.move(where, target)
        self._manager.reload()

    def _save_error(self, step: int | None, error: Exception) -> CheckpointSaveError:
        return CheckpointSaveError(
            f"saving the checkpoint of step {step} to {self.directory} failed:"
            f" {_root_cause(error)}; the run stops here, earlier checkpoints are kept"
            f" ({self.steps or 'none'})"
        )


def _root_cause(error: BaseException) -> str:
    """The innermost OSError behind `error` (e.g. "[Errno 28] No space left on device"), else
    `error` itself, as text."""
    cause: BaseException | None = error
    while cause is not None:
        if isinstance(cause, OSError):
            return f"{type(cause).__name__}: {cause}"
        cause = cause.__cause__ or cause.__context__
    return f"{type(error).__name__}: {error}"


class _IteratorSnapshot:
    """A grain iterator's state taken now: orbax writes it later, from a background thread, when
    the live iterator has already moved on."""

    def __init__(self, iterator: grain.DatasetIterator):
        self._state = json.dumps(iterator.get_state(), indent=4).encode()

    def get_state(self) -> bytes:
        return self._state


# ---- checksums ---------------------------------------------------------------------------------


def _words(x: jax.Array) -> jax.Array:
    """The bits of `x` as uint32 words: one per 32-bit element, two per 64-bit one (a new last
    axis), narrower elements zero-extended."""
    if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
        x = jax.random.key_data(x)
    if x.dtype == jnp.bool_:
        return x.astype(jnp.uint32)
    if x.dtype.itemsize < 4:
        return jax.lax.bitcast_convert_type(x, jnp.dtype(f"uint{8 * x.dtype.itemsize}")).astype(
            jnp.uint32
        )
    return jax.lax.bitcast_convert_type(x, jnp.uint32)


def _mix(h: jax.Array) -> jax.Array:
    """A bijective scrambling of uint32 words (the MurmurHash3 finaliser)."""
    h = (h ^ (h >> 16)) * np.uint32(0x85EBCA6B)
    h = (h ^ (h >> 13)) * np.uint32(0xC2B2AE35)
    return h ^ (h >> 16)


def _digest(x: jax.Array) -> jax.Array:
    """uint32[2]: wrapping sums over `x`'s words of their hashes salted with the position, and of
    the words times an odd weight that grows with the position.

    Wrapping integer sums give the same bits in any reduction order, so the digest does not depend
    on how `x` is sharded. Any one changed word changes both sums (the hash is a bijection, the
    weights are odd); a larger change goes unnoticed with a chance of about 2**-64.
    """
    words = _words(x)
    position = jnp.zeros(words.shape, jnp.uint32)
    stride = 1
    for axis in reversed(range(words.ndim)):  # row-major element index, modulo 2**32
        iota = jax.lax.broadcasted_iota(jnp.uint32, words.shape, axis)
        position = position + iota * np.uint32(stride % 2**32)
        stride *= words.shape[axis]
    hashed = _mix(words ^ _mix(position))
    weighted = words * (position * np.uint32(2) + np.uint32(1))
    both = jnp.stack([hashed, weighted])  # one reduction for the two sums: compiles faster
    return jnp.sum(both, axis=tuple(range(1, both.ndim)), dtype=jnp.uint32)


@jax.jit
def _digests(arrays: list[jax.Array]) -> list[jax.Array]:
    return [_digest(x) for x in arrays]


def checksums(tree: Any) -> dict[str, str]:
    """{"/"-joined leaf path: 16 hex digits} of every array in `tree`, computed on device; the
    same for any sharding and any number of devices."""
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    # One program per set of devices (a restored tree may mix them), one at a time: programs with
    # collectives in flight together can deadlock on CPU devices.
    by_devices: dict[Any, list[int]] = {}
    for i, (_, x) in enumerate(leaves):
        devices = x.sharding.device_set if isinstance(x, jax.Array) else None
        by_devices.setdefault(frozenset(devices or ()), []).append(i)
    digests = {}
    for indices in by_devices.values():
        values = jax.device_get(_digests([leaves[i][1] for i in indices]))
        digests.update(zip(indices, values))
    return {
        optim.param_path(path): f"{int(digests[i][0]):08x}{int(digests[i][1]):08x}"
        for i, (path, _) in enumerate(leaves)
    }


def verify_checksums(state: Any, meta: dict[str, Any], where: Path) -> None:
    """Raises CheckpointCorruptError naming the arrays of `state` that differ from the checksums
    in `meta` (a checkpoint saved without checksums is not checked)."""
    expected = meta.get("checksums")
    if expected is None:
        return
    actual = checksums(state)
    bad = sorted(
        path for path in expected.keys() | actual.keys() if expected.get(path) != actual.get(path)
    )
    if bad:
        raise CheckpointCorruptError(
            f"checkpoint {where}: arrays {bad[:5]}{' and more' if len(bad) > 5 else ''} differ"
            " from the checksums recorded when it was saved"
        )


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
