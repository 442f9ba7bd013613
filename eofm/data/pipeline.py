"""The input pipeline: source -> shard by process -> shuffle -> repeat -> transforms -> batch.

Built from grain `MapDataset`s, so every step is a pure function of (seed, index): the same seed gives
the same batches, and the iterator state (`it.get_state()`, a small dict) restores a run exactly at
the batch where it stopped. Each JAX process reads its own slice `[process_index::process_count]` of
the examples, so a multi-host run sees every example once per epoch.

    ds = make_dataset(source, batch_size=32, seed=0, transforms=[Normalize(...), RandomCropFlipRotate(...)])
    it = make_iterator(ds, num_workers=2)
    batch = next(it)          # {"s2": f32[32, H, W, C], "s2_valid": bool[...], "label": ...}
    state = it.get_state()    # save with the checkpoint; it.set_state(state) resumes
    it.close()                # stops the worker processes and frees their shared memory

With `to_device` a background thread applies it to each batch (e.g. puts it on the accelerators)
and keeps `device_prefetch` batches ready while the caller works on the previous one; the state is
still that after the last batch the caller took.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import grain
import numpy as np
from absl import flags


def make_dataset(
    source: Any,
    *,
    batch_size: int,
    seed: int,
    shuffle: bool = True,
    num_epochs: int | None = None,
    transforms: Sequence[grain.transforms.Map | grain.transforms.RandomMap] = (),
    process_index: int | None = None,
    process_count: int | None = None,
    drop_remainder: bool = True,
) -> grain.MapDataset:
    """A batched `MapDataset` for this process.

    Args:
      source: a random-access source (`__len__`, `__getitem__`).
      batch_size: per-process batch size.
      seed: drives shuffling (a new permutation per epoch) and random transforms.
      num_epochs: None repeats forever.
      transforms: applied in order; `RandomMap`s get a per-example generator derived from `seed`.
      process_index, process_count: the slice of the data this process reads; default from JAX.
    """
    if process_index is None or process_count is None:
        import jax  # Local: data preparation scripts do not need JAX initialised.

        process_index, process_count = jax.process_index(), jax.process_count()
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} outside [0, {process_count})")
    if len(source) < process_count:
        raise ValueError(f"{len(source)} examples cannot be split across {process_count} processes")
    ds = grain.MapDataset.source(source)[process_index::process_count]
    if shuffle:
        ds = ds.shuffle(seed=seed)
    ds = ds.repeat(num_epochs)
    for i, transform in enumerate(transforms):
        if isinstance(transform, grain.transforms.RandomMap):
            ds = ds.random_map(transform, seed=seed + 1 + i)
        else:
            ds = ds.map(transform)
    return ds.batch(batch_size, drop_remainder=drop_remainder)


# Threads that read and transform examples in each process that decodes (every worker, or this
# process without workers). ArrayRecord reads and numpy release the GIL, so two threads overlap
# even in one worker: MAE tiny's pipeline with one worker on 2 CPUs, 2.2 -> 3.8 batches/s.
_READ_THREADS = 2

# `num_workers` that sizes the worker processes to the machine (`auto_num_workers`).
AUTO_WORKERS = -1


def auto_num_workers(processes_on_host: int = 1) -> int:
    """Worker processes for `num_workers = AUTO_WORKERS`: one per CPU this process may use, less
    one kept for the process itself (step dispatch, device transfers, checkpoints), at most 16
    (each holds `prefetch` batches of shared memory).

    The CPUs are those of `os.sched_getaffinity`; when they are all of the machine's CPUs (no
    launcher pinned this process to its own), the `processes_on_host` training processes of this
    host share them. 1 CPU -> 0 (decode in-process), 2 -> 1, 8 -> 7, 8 shared by 2 -> 3.
    """
    cpus = len(os.sched_getaffinity(0))
    if cpus >= (os.cpu_count() or cpus):
        cpus //= max(1, processes_on_host)
    return min(16, max(0, cpus - 1))


def make_iterator(
    ds: grain.MapDataset,
    *,
    num_workers: int = 0,
    prefetch: int = 2,
    to_device: Callable[[Any], Any] | None = None,
    device_prefetch: int = 2,
) -> grain.DatasetIterator:
    """An iterator with checkpointable state; `num_workers > 0` decodes in worker processes.

    With workers, batches arrive through shared memory and are copied out of it (see
    `_in_own_memory`). Close the iterator when done (`it.close()`): that stops the workers and
    frees the batches they prepared ahead. An iterator still referenced while the interpreter
    shuts down is closed by grain's finaliser, which fails then and leaks that shared memory.

    `to_device(batch)` (e.g. host arrays -> global `jax.Array`s) runs in a background thread that
    keeps up to `device_prefetch` results waiting in a queue, plus one more it holds until there is
    room (0: no thread, each batch converted by `next`). The thread records the iterator state
    with each batch, so `get_state` is the state after the last batch `next` returned, however
    many were prepared ahead. An error of the pipeline is raised by the `next` that would have
    returned that batch; `close` stops the thread.
    """
    it_ds = ds.to_iter_dataset(
        grain.ReadOptions(num_threads=_READ_THREADS, prefetch_buffer_size=prefetch)
    )
    if num_workers:
        # grain's workers read absl flags; outside `absl.app.run` (notebooks, pytest) they are
        # unparsed, so take the defaults.
        if not flags.FLAGS.is_parsed():
            flags.FLAGS.mark_as_parsed()
        it_ds = it_ds.mp_prefetch(
            grain.MultiprocessingOptions(num_workers=num_workers, per_worker_buffer_size=prefetch),
            worker_init_fn=_exit_with_parent,
        ).map(_in_own_memory)
    if to_device is not None:
        it_ds = it_ds.map(to_device)
        if device_prefetch:
            it_ds = grain.experimental.ThreadPrefetchIterDataset(
                it_ds, prefetch_buffer_size=device_prefetch
            )
    return iter(it_ds)


def _exit_with_parent(worker_index: int, worker_count: int) -> None:
    """Runs in each worker process: ends it once the process that started it is gone.

    A training process killed outright (SIGKILL, the OOM killer) cannot stop its workers, which
    would otherwise wait forever to hand over their next batch, holding its stdout and stderr.
    """
    del worker_index, worker_count
    parent = os.getppid()

    def watch():
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="exit-with-parent").start()


def _in_own_memory(element: Any) -> Any:
    """`element` with the arrays workers passed in shared memory copied into ordinary arrays.

    The shared memory is then unlinked at once, not when the last array aliasing it goes: JAX
    on CPU aliases host arrays without copying, and an aliased batch of the last step would
    only be freed while the interpreter shuts down, too late to unlink (a "leaked shared_memory"
    warning). The copy costs a few milliseconds per 10 MB of batch, small beside a train step.
    """
    if isinstance(element, dict):
        return {k: _in_own_memory(v) for k, v in element.items()}
    if isinstance(element, grain.multiprocessing.SharedMemoryArray):
        return np.array(element)
    return element
