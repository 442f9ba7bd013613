"""Device mesh, logical-axis sharding rules and multi-host initialisation.

One mesh with axes ("data", "fsdp", "tensor"). Parameters carry logical axis names ("embed", "mlp",
"heads", "patch"; see `eofm.models.layers`), and rules map them to mesh axes. `DEFAULT_RULES`:

  batch -> ("data", "fsdp")   every data-parallel axis splits the batch
  embed -> "fsdp"             FSDP: each parameter's model dimension is split across devices
  mlp, heads -> "tensor"      tensor parallelism of the MLP hidden and attention heads

Axes of size 1 shard nothing, so data parallelism, FSDP and FSDP + TP are mesh sizes (presets `dp`,
`fsdp`, `fsdp_tp`), not code. `rules_from_config` reads another table from a config
(`config.mesh.rules`). A dimension that does not divide by its mesh axes stays replicated, and
`shardings_for` logs it once per parameter path.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import sys
import threading
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

Rules = tuple[tuple[str, str | tuple[str, ...] | None], ...]

DEFAULT_RULES: Rules = (
    ("batch", BATCH_AXES),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("patch", None),
)
# Every logical name a rule may map: "batch" and `eofm.models.layers.LOGICAL_AXES`.
LOGICAL_NAMES = tuple(name for name, _ in DEFAULT_RULES)

# (parameter path, dim, mesh axes) already reported as replicated by `shardings_for`.
_REPORTED: set[tuple[str, int, tuple[str, ...]]] = set()

PRESETS: Mapping[str, Mapping[str, int]] = {
    "dp": {"data": -1, "fsdp": 1, "tensor": 1},
    "fsdp": {"data": 1, "fsdp": -1, "tensor": 1},
    "fsdp_tp": {"data": 1, "fsdp": -1, "tensor": 2},
}


def mesh_shape(sizes: Mapping[str, int], num_devices: int) -> tuple[int, ...]:
    """Resolves sizes per axis of MESH_AXES (one may be -1: the rest of the devices)."""
    unknown = set(sizes) - set(MESH_AXES)
    if unknown:
        raise ValueError(f"unknown mesh axes {sorted(unknown)}; expected {MESH_AXES}")
    shape = [int(sizes.get(a, 1)) for a in MESH_AXES]
    if shape.count(-1) > 1:
        raise ValueError(f"at most one mesh axis may be -1, got {dict(zip(MESH_AXES, shape))}")
    if -1 in shape:
        known = math.prod(s for s in shape if s != -1)
        if num_devices % known:
            raise ValueError(f"{num_devices} devices do not divide into mesh {sizes}")
        shape[shape.index(-1)] = num_devices // known
    if math.prod(shape) != num_devices:
        raise ValueError(
            f"mesh {dict(zip(MESH_AXES, shape))} needs {math.prod(shape)} devices,"
            f" {num_devices} are available"
        )
    return tuple(shape)


def make_mesh(
    preset: str | None = None, devices: Sequence[jax.Device] | None = None, **sizes: int
) -> Mesh:
    """A ("data", "fsdp", "tensor") mesh from a preset and/or explicit sizes (sizes win)."""
    if preset is not None and preset not in PRESETS:
        raise ValueError(f"unknown mesh preset {preset!r}; expected one of {sorted(PRESETS)}")
    resolved = {**(PRESETS[preset] if preset else {}), **sizes}
    devices = list(devices if devices is not None else jax.devices())
    shape = mesh_shape(resolved, len(devices))
    return jax.make_mesh(
        shape, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES), devices=devices
    )


def default_rules_config() -> Rules:
    """`DEFAULT_RULES` as a `config.mesh.rules` value (tuples of str / None, as ConfigDict holds).

    A command-line flag replaces the whole table with a Python literal, e.g.
    `--config.mesh.rules="(('batch', ('data', 'fsdp')), ('embed', None), ('mlp', 'tensor'),
    ('heads', 'tensor'), ('patch', None))"`; `--config.mesh.rules="()"` means the default table.
    Keep the trailing comma of a one-rule table, `"(('embed', None),)"`, or it parses as one pair.
    """
    return DEFAULT_RULES


def rules_from_config(rules: Sequence[Sequence[Any]]) -> Rules:
    """Canonical rules from `config.mesh.rules`: (logical name, mesh axes) pairs, lists or tuples.

    Mesh axes are None, one axis name or a sequence of them (an empty one means None). An empty
    table means `DEFAULT_RULES`; any other replaces it whole. Raises ValueError naming the pair
    whose logical name is unknown or repeated, or whose mesh axes are not in MESH_AXES.
    """
    if not rules:
        return DEFAULT_RULES
    out = []
    for pair in rules:
        if isinstance(pair, str) or not isinstance(pair, Sequence) or len(pair) != 2:
            raise ValueError(f"mesh rule {pair!r} is not a (logical axis, mesh axes) pair")
        name, axes = pair
        if name not in LOGICAL_NAMES:
            raise ValueError(
                f"mesh rule {pair!r}: unknown logical axis {name!r}; expected one of"
                f" {LOGICAL_NAMES}"
            )
        if name in (n for n, _ in out):
            raise ValueError(f"mesh rule {pair!r}: logical axis {name!r} has a rule already")
        if axes is None or isinstance(axes, str) or not isinstance(axes, Sequence):
            names = () if axes is None else (axes,)
        else:
            names = tuple(axes)
        bad = [a for a in names if a not in MESH_AXES]
        if bad or len(set(names)) != len(names):
            raise ValueError(
                f"mesh rule {pair!r}: mesh axes {axes!r} must be None or distinct names from"
                f" {MESH_AXES}"
            )
        out.append((name, axes if isinstance(axes, str) else names or None))
    return tuple(out)


def logical_to_mesh(
    logical: PartitionSpec | Sequence[str | None],
    shape: Sequence[int],
    mesh: Mesh,
    rules: Rules = DEFAULT_RULES,
) -> tuple[PartitionSpec, list[tuple[int, int, tuple[str, ...]]]]:
    """Maps a logical PartitionSpec of an array of `shape` to mesh axes.

    A mesh axis is used at most once per array; a dimension not divisible by the product of its
    mesh axes is replicated instead. Returns the PartitionSpec and those replicated dimensions as
    (dim index, size, mesh axes).
    """
    table = dict(rules)
    used: set[str] = set()
    out = []
    undivided = []
    padded = tuple(logical) + (None,) * (len(shape) - len(logical))
    for i, (name, dim) in enumerate(zip(padded, shape)):
        axes = table.get(name) if name is not None else None
        if name is not None and name not in table:
            raise ValueError(f"logical axis {name!r} has no rule; rules cover {sorted(table)}")
        axes = () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)
        axes = tuple(a for a in axes if a not in used and mesh.shape[a] > 1)
        if axes and dim % math.prod(mesh.shape[a] for a in axes) == 0:
            used.update(axes)
            out.append(axes[0] if len(axes) == 1 else axes)
        else:
            if axes:
                undivided.append((i, dim, axes))
            out.append(None)
    return PartitionSpec(*out), undivided


def _path_name(path: tuple) -> str:
    """'/'-joined names of a pytree key path (as `eofm.train.optim.param_path`)."""
    return "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)


def shardings_for(abstract_tree: Any, mesh: Mesh, rules: Rules = DEFAULT_RULES) -> Any:
    """NamedShardings for a pytree of (abstract) arrays whose nnx Variables carry logical names.

    Leaves without names (optimizer step counters, scalars) are replicated. A dimension replicated
    because it does not divide by its mesh axes is logged once per process and leaf path.
    """

    def one(path, leaf):
        if isinstance(leaf, nnx.Variable):
            names = leaf.get_metadata().get("out_sharding") or ()
            value = leaf.get_value()
        else:
            names, value = (), leaf
        spec, undivided = logical_to_mesh(names, np.shape(value), mesh, rules)
        for dim, size, axes in undivided:
            name = _path_name(path)
            if (name, dim, axes) not in _REPORTED:
                _REPORTED.add((name, dim, axes))
                devices = math.prod(mesh.shape[a] for a in axes)
                logging.warning(
                    "parameter %s: dim %d (%d) does not divide mesh axes %s (%d): replicated",
                    name,
                    dim,
                    size,
                    axes,
                    devices,
                )
        sharding = NamedSharding(mesh, spec)
        return leaf.replace(sharding) if isinstance(leaf, nnx.Variable) else sharding

    return jax.tree_util.tree_map_with_path(
        one, abstract_tree, is_leaf=lambda x: isinstance(x, nnx.Variable)
    )


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) dimension split over every data-parallel axis."""
    return NamedSharding(mesh, PartitionSpec(BATCH_AXES))


def constrain_batch(batch: Mapping[str, Any], mesh: Mesh) -> dict[str, Any]:
    """`batch` with every array constrained to `batch_sharding(mesh)`; for use inside jit.

    Each array's leading dimension is the batch, divisible by the data-parallel devices.
    """
    return jax.lax.with_sharding_constraint(dict(batch), batch_sharding(mesh))


def constrain_activations(x: jax.Array) -> jax.Array:
    """An activation [B, ...] with its leading (batch) dimension split over the data-parallel axes
    of the mesh being traced under (`jax.set_mesh`, or the train step's), the other dimensions
    left to the compiler; unchanged outside a mesh or when B does not split evenly.

    Inside deep stacks, without it, the compiler may follow FSDP-sharded weights instead and
    gather activations to the global batch on every device."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return x
    axes = tuple(a for a in BATCH_AXES if a in mesh.axis_names)
    if not axes or x.shape[0] % math.prod(mesh.shape[a] for a in axes):
        return x
    spec = PartitionSpec(axes, *[PartitionSpec.UNCONSTRAINED] * (x.ndim - 1))
    return jax.lax.with_sharding_constraint(x, spec)


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def bytes_per_device(tree: Any) -> dict[jax.Device, int]:
    """Bytes of the addressable shards of every array in `tree`, per device."""
    total: dict[jax.Device, int] = {}
    for leaf in jax.tree.leaves(tree):
        for shard in leaf.addressable_shards:
            total[shard.device] = total.get(shard.device, 0) + shard.data.nbytes
    return total


# Environment variables of the launchers whose jobs `jax.distributed` configures by itself.
CLUSTER_ENV = (
    "SLURM_JOB_ID",
    "OMPI_COMM_WORLD_SIZE",
    "TPU_WORKER_HOSTNAMES",
    "MEGASCALE_COORDINATOR_ADDRESS",
)
# JAX's own deadline for the join comes this much after ours: when it passes, JAX aborts the
# process from C++ without a message that says what happened.
_JAX_DEADLINE_MARGIN_S = 30


def initialize_distributed(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    timeout_s: int = 300,
) -> None:
    """Starts `jax.distributed` when the run spans several processes.

    With no arguments, JAX auto-detects TPU pods and SLURM / Open MPI jobs (`CLUSTER_ENV`), and
    values given there override what it detects. Elsewhere the three arguments go together (all or
    none); a partial set is a ValueError naming the missing ones. A single process with nothing to
    detect is left alone. CPU collectives use gloo.

    Args:
      timeout_s: how long every process waits for all of them to join. Past it, this process
        logs which address it waited on and exits with status 1.
    """
    given = {
        "coordinator_address": coordinator_address,
        "num_processes": num_processes,
        "process_id": process_id,
    }
    missing = [name for name, value in given.items() if value is None]
    detected = any(v in os.environ for v in CLUSTER_ENV)
    if not detected and len(missing) == len(given):
        return
    if not detected and missing:
        present = {k: v for k, v in given.items() if v is not None}
        raise ValueError(
            f"a multi-process run needs coordinator_address, num_processes and process_id"
            f" together: {', '.join(missing)} missing (given {present}); give all three, or none"
            f" for a single process"
        )
    # Only CPU computations use this; without it XLA refuses multi-process CPU programs.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    with _exit_unless_joined(timeout_s, coordinator_address, num_processes, process_id):
        jax.distributed.initialize(
            coordinator_address,
            num_processes,
            process_id,
            initialization_timeout=timeout_s + _JAX_DEADLINE_MARGIN_S,
        )
    logging.info(
        "jax.distributed: process %d of %d, %d local / %d global devices",
        jax.process_index(),
        jax.process_count(),
        jax.local_device_count(),
        jax.device_count(),
    )


@contextlib.contextmanager
def _exit_unless_joined(
    timeout_s: int, address: str | None, num_processes: int | None, process_id: int | None
):
    """Exits the process with status 1 and a message if the body (the join) outlasts timeout_s.

    The join blocks in C++ with the GIL released, so a timer thread can still report and exit.
    """
    who = "this process" if process_id is None else f"process {process_id}"
    expected = f"all {num_processes}" if num_processes else "all"
    ids = f"0..{num_processes - 1}" if num_processes else "0..N-1"

    def give_up():
        logging.error(
            "jax.distributed: %s waited %d s at coordinator %s, and not %s processes joined. Start"
            " every process with the same coordinator address and number of processes, each with"
            " its own process id in %s; or allow more time (--distributed_timeout_s).",
            who,
            timeout_s,
            address or "(auto-detected)",
            expected,
            ids,
        )
        sys.stderr.flush()
        os._exit(1)

    timer = threading.Timer(timeout_s, give_up)
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()
