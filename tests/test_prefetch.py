"""Device prefetch of `pipeline.make_iterator(..., to_device=...)`: batches in order, the state of
the last batch taken (not of those prepared ahead), loader errors raised by `next`, a thread that
stops on `close` and never holds the interpreter at exit."""

import threading

import grain
import jax
import numpy as np
import pytest

from eofm.data import pipeline
from eofm.train import loop, validate


class _FailAt(grain.transforms.Map):
    """Raises for the example `bad` (a corrupt record), passes the others through."""

    def __init__(self, bad: int = -1):
        self.bad = bad

    def map(self, x):
        if x == self.bad:
            raise ValueError(f"corrupt record {x} in shard-00003")
        return x


class _Recorder:
    """A `to_device` that notes each batch it converts and the thread it runs in."""

    def __init__(self):
        self.seen, self.threads = [], set()
        self.enough = threading.Condition()

    def __call__(self, batch):
        with self.enough:
            self.seen.append(batch.tolist())
            self.threads.add(threading.current_thread())
            self.enough.notify_all()
        return {"x": jax.device_put(batch)}

    def wait_for(self, count: int) -> None:
        with self.enough:
            assert self.enough.wait_for(lambda: len(self.seen) >= count, timeout=30), self.seen


def _dataset(bad: int = -1) -> grain.MapDataset:
    """Shuffled batches of 4 of the examples 0..63, repeated."""
    return pipeline.make_dataset(
        list(range(64)),
        batch_size=4,
        seed=3,
        transforms=[_FailAt(bad)],
        process_index=0,
        process_count=1,
    )


def _take(it, n: int) -> list[list[int]]:
    return [np.asarray(next(it)["x"]).tolist() for _ in range(n)]


def test_batches_arrive_in_order_on_the_devices():
    plain = pipeline.make_iterator(_dataset())
    expected = [next(plain).tolist() for _ in range(6)]
    plain.close()
    it = pipeline.make_iterator(_dataset(), to_device=_Recorder(), device_prefetch=2)
    batches = [next(it)["x"] for _ in range(6)]
    it.close()
    assert all(isinstance(b, jax.Array) for b in batches)
    assert [np.asarray(b).tolist() for b in batches] == expected


def test_state_is_that_of_the_last_batch_taken_not_of_those_prefetched():
    put = _Recorder()
    it = pipeline.make_iterator(_dataset(), to_device=put, device_prefetch=2)
    taken = _take(it, 3)
    put.wait_for(5)  # batches 4 and 5 are prepared ahead
    state = it.get_state()
    following = _take(it, 2)
    it.close()
    assert put.seen[: len(taken) + 2] == taken + following

    resumed = pipeline.make_iterator(_dataset(), to_device=_Recorder(), device_prefetch=2)
    resumed.set_state(state)
    assert _take(resumed, 2) == following
    resumed.set_state(state)  # also on an iterator that has prefetched from elsewhere
    assert _take(resumed, 2) == following
    resumed.close()


def test_loader_error_is_raised_by_next_with_its_message():
    ds = _dataset()
    order = [x for batch in ds[:4] for x in batch.tolist()]
    it = pipeline.make_iterator(_dataset(bad=order[9]), to_device=_Recorder(), device_prefetch=2)
    _take(it, 2)  # examples 0-7 are fine; the third batch holds the corrupt one
    with pytest.raises(ValueError, match=rf"corrupt record {order[9]} in shard-00003"):
        next(it)
    it.close()


def test_close_stops_the_thread_and_an_unclosed_one_does_not_hold_the_exit():
    put = _Recorder()
    it = pipeline.make_iterator(_dataset(), to_device=put, device_prefetch=1)
    _take(it, 1)
    put.wait_for(3)  # one batch waiting, one held by the thread until there is room
    (thread,) = put.threads
    assert thread is not threading.current_thread() and thread.is_alive()
    assert thread.daemon  # the interpreter exits without waiting for it
    it.close()
    assert not thread.is_alive()


def test_zero_device_prefetch_converts_in_the_caller():
    put = _Recorder()
    it = pipeline.make_iterator(_dataset(), to_device=put, device_prefetch=0)
    _take(it, 2)
    it.close()
    assert put.threads == {threading.current_thread()} and len(put.seen) == 2


def test_auto_workers_leave_a_cpu_to_the_training_process(monkeypatch):
    for cpus, machine, processes, workers in [
        (1, 1, 1, 0),
        (2, 2, 1, 1),
        (8, 8, 1, 7),
        (8, 8, 2, 3),
        (8, 64, 4, 7),  # pinned to 8 of 64 CPUs: the 8 are this process's own
        (128, 128, 1, 16),
    ]:
        monkeypatch.setattr(pipeline.os, "sched_getaffinity", lambda pid, n=cpus: set(range(n)))
        monkeypatch.setattr(pipeline.os, "cpu_count", lambda n=machine: n)
        assert pipeline.auto_num_workers(processes) == workers, (cpus, machine, processes)


def test_loop_sizes_workers_only_when_asked():
    assert loop._num_workers(0) == 0 and loop._num_workers(3) == 3
    assert loop._num_workers(pipeline.AUTO_WORKERS) == pipeline.auto_num_workers(1)


@pytest.mark.parametrize(
    "key, value, allowed",
    [("num_workers", -2, "an integer >= -1"), ("device_prefetch", -1, "an integer >= 0")],
)
def test_worker_and_prefetch_counts_are_checked(key, value, allowed, pretrain_config):
    config = pretrain_config("mae", "tiny")
    config.data[key] = value
    with pytest.raises(validate.ConfigError, match=rf"data.{key} = {value}; allowed: {allowed}"):
        validate.check_training_config(config)
