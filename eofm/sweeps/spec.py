"""Sweeps as configs: a config file may define `get_sweep()`, the list of points to run, each a
dict of overrides, built from `sweep`, `product` and `zipped` (big_vision's `get_hyper` is the
model):

    from eofm.sweeps import spec as sweeps

    def get_sweep():
        return sweeps.product(
            sweeps.sweep("config.lr", [1e-4, 3e-4]),
            sweeps.sweep("config.model.mask_ratio", [0.5, 0.75]),
        )

A key is `config.<path>` (a config field, given to the run as `--config.<path>=VALUE`) or
`arg.<name>` (an argument of the config file, `FILE:<name>=VALUE`, e.g. `arg.variant`). Each
point runs in a workdir of its own under the sweep's root, named by its overrides (`point_name`).
"""

from __future__ import annotations

import ast
import dataclasses
import importlib.util
import itertools
import math
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import ml_collections

from eofm import config_args

KEY_PREFIXES = ("config.", "arg.")
REPOSITORY = Path(__file__).resolve().parents[2]
# Entry points by the folder of the config file.
PROGRAMS = {name: REPOSITORY / name / "main.py" for name in ("pretrain", "finetune")}


def sweep(key: str, values: Sequence[Any]) -> list[dict[str, Any]]:
    """One axis: [{key: v} for v in values]."""
    if not key.startswith(KEY_PREFIXES):
        raise ValueError(f"sweep key {key!r} must start with one of {KEY_PREFIXES}")
    if not values:
        raise ValueError(f"sweep key {key!r} has no values")
    return [{key: v} for v in values]


def product(*axes: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Every combination of the axes' points (the last axis varies fastest)."""
    return [_merge(points) for points in itertools.product(*axes)]


def zipped(*axes: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The axes' i-th points together; the axes must be equally long."""
    lengths = {len(a) for a in axes}
    if len(lengths) > 1:
        raise ValueError(f"zipped axes have different lengths {sorted(lengths)}")
    return [_merge(points) for points in zip(*axes)]


def _merge(points: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    merged = {}
    for point in points:
        clash = merged.keys() & point.keys()
        if clash:
            raise ValueError(f"sweep key(s) {sorted(clash)} set by two axes")
        merged.update(point)
    return merged


def format_value(value: Any) -> str:
    """A value as a command-line override: repr for floats (exact), lists as tuples."""
    if isinstance(value, (list, tuple)):
        return (
            "(" + ", ".join(format_value(v) for v in value) + ("," if len(value) == 1 else "") + ")"
        )
    if isinstance(value, float):
        return repr(value)
    return str(value)


def point_name(overrides: Mapping[str, Any]) -> str:
    """A directory name of the overrides, e.g. `lr=0.0001,mask_ratio=0.5`: each key's last part
    (its whole path where two keys share it) = value, safe characters only."""
    short = {k: k.split(".")[-1] for k in overrides}
    counts = {s: list(short.values()).count(s) for s in short.values()}
    parts = []
    for key, value in overrides.items():
        name = short[key] if counts[short[key]] == 1 else key.split(".", 1)[1]
        text = f"{value:g}" if isinstance(value, float) else format_value(value)
        parts.append(f"{name}={text}")
    return re.sub(r"[^A-Za-z0-9._=,+-]", "_", ",".join(parts)) or "default"


@dataclasses.dataclass(frozen=True)
class Point:
    """One run of a sweep.

    Attributes:
      name: its workdir's name under the sweep root.
      overrides: {key: value} of the sweep (`config.*` and `arg.*`).
      config_arg: the config file's argument string (the command line's, with `arg.*` merged).
      config_overrides: ("--config.path=VALUE", ...) of the point and of the command line.
      config: the point's config, with every override applied.
    """

    name: str
    overrides: dict[str, Any]
    config_arg: str
    config_overrides: tuple[str, ...]
    config: ml_collections.ConfigDict


@dataclasses.dataclass(frozen=True)
class Sweep:
    """The points of a config file's `get_sweep()` and how to run them."""

    config_file: Path
    program: str  # the path of pretrain/main.py or finetune/main.py
    points: list[Point]

    def command(self, point: Point, workdir: Path) -> list[str]:
        """The argv that runs `point` in `workdir`."""
        config = f"{self.config_file}:{point.config_arg}" if point.config_arg else self.config_file
        return [
            sys.executable,
            self.program,
            f"--config={config}",
            f"--workdir={workdir}",
            *point.config_overrides,
        ]


def load_module(config_file: str | Path):
    path = Path(config_file)
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} not found")
    spec = importlib.util.spec_from_file_location(f"eofm_sweep_config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def program_for(config_file: Path) -> str:
    """The path of pretrain/main.py or finetune/main.py, by the config file's folder."""
    folder = config_file.resolve().parent.name
    if folder not in PROGRAMS:
        raise ValueError(
            f"{config_file}: cannot tell the program from its folder {folder!r}"
            f" (expected one of {sorted(PROGRAMS)}); give --program"
        )
    return str(PROGRAMS[folder])


def load_sweep(config_ref: str, overrides: Sequence[str] = (), program: str | None = None) -> Sweep:
    """The sweep of `config_ref` (FILE[:ARGS]) with command-line `overrides`
    ("--config.path=VALUE", applied to every point after the sweep's own).

    Raises:
      ValueError: the file has no `get_sweep`, a key is unknown, a value does not fit, or two
        points would share a workdir; the message names the culprit.
    """
    file, _, arg = config_ref.partition(":")
    config_file = Path(file)
    module = load_module(config_file)
    if not hasattr(module, "get_sweep"):
        raise ValueError(f"{config_file} defines no get_sweep(); see eofm.sweeps.spec")
    base_args = _parse_args(arg)
    cli = [_split_override(o) for o in overrides]
    points, names = [], {}
    for overrides_of_point in module.get_sweep() or [{}]:
        point = _point(module, config_file, base_args, dict(overrides_of_point), cli)
        if point.name in names:
            raise ValueError(
                f"points {names[point.name]} and {point.overrides} share the workdir name"
                f" {point.name!r}"
            )
        names[point.name] = point.overrides
        points.append(point)
    return Sweep(config_file, program or program_for(config_file), points)


def _parse_args(arg: str) -> dict[str, str]:
    """The config file's argument string as {key: text}; a bare word stays a key with value None."""
    out = {}
    for token in filter(None, (t.strip() for t in arg.split(","))):
        key, sep, text = token.partition("=")
        out[key] = text if sep else None
    return out


def _arg_string(args: Mapping[str, Any]) -> str:
    return ",".join(k if v is None else f"{k}={format_value(v)}" for k, v in args.items())


def _split_override(text: str) -> tuple[str, str]:
    """("path", "VALUE") of "--config.path=VALUE"."""
    match = re.fullmatch(r"--config\.([\w.]+)=(.*)", text)
    if match is None:
        raise ValueError(f"override {text!r}: expected --config.KEY=VALUE")
    return match.group(1), match.group(2)


def _point(
    module,
    config_file: Path,
    base_args: Mapping[str, str | None],
    overrides: dict[str, Any],
    cli: Sequence[tuple[str, str]],
) -> Point:
    args = dict(base_args)
    fields = {}
    for key, value in overrides.items():
        if key.startswith("arg."):
            args[key[len("arg.") :]] = value
        elif key.startswith("config."):
            fields[key[len("config.") :]] = value
        else:
            raise ValueError(f"sweep key {key!r} must start with one of {KEY_PREFIXES}")
    config_arg = _arg_string(args)
    try:
        config = module.get_config(config_arg) if config_arg else module.get_config()
    except ValueError as e:
        raise ValueError(f"{config_file}:{config_arg}: {e}") from e
    for path, value in fields.items():
        _set(config, path, value, f"sweep key config.{path}")
    for path, text in cli:
        _set(config, path, _parse_like(_get(config, path, f"--config.{path}"), text), path)
    config_overrides = tuple(
        [f"--config.{p}={format_value(v)}" for p, v in fields.items()]
        + [f"--config.{p}={t}" for p, t in cli]
    )
    return Point(point_name(overrides), overrides, config_arg, config_overrides, config)


def _get(config: ml_collections.ConfigDict, path: str, what: str) -> Any:
    node = config
    for part in path.split("."):
        if not isinstance(node, ml_collections.ConfigDict) or part not in node:
            raise ValueError(f"{what}: the config has no key {path!r}")
        node = node[part]
    return node


def _set(config: ml_collections.ConfigDict, path: str, value: Any, what: str) -> None:
    parent, _, last = path.rpartition(".")
    node = _get(config, parent, what) if parent else config
    old = _get(config, path, what)
    if old is not None and not _fits(old, value):
        raise ValueError(
            f"{what} = {value!r}: the config's value {old!r} is a {type(old).__name__}"
        )
    node[last] = tuple(value) if isinstance(old, tuple) else value


def _fits(old: Any, value: Any) -> bool:
    if isinstance(old, bool) or isinstance(value, bool):
        return isinstance(old, bool) and isinstance(value, bool)
    if isinstance(old, (int, float)) and isinstance(value, (int, float)):
        return isinstance(old, float) or isinstance(value, int)
    if isinstance(old, (tuple, list)):
        return isinstance(value, (tuple, list))
    return isinstance(value, type(old))


def _parse_like(old: Any, text: str) -> Any:
    """A command-line value as the type of the config's value."""
    if isinstance(old, bool):
        return config_args._convert("override", text, old)
    if isinstance(old, (int, float)):
        value = ast.literal_eval(text)
        return float(value) if isinstance(old, float) else value
    if isinstance(old, (tuple, list)):
        return tuple(ast.literal_eval(text))
    return text


def finished(program: str, config: ml_collections.ConfigDict, workdir: Path) -> bool:
    """Whether the run in `workdir` is done: a pretraining run has the checkpoint of its last
    step, an evaluation its report.json."""
    if Path(program).parent.name == "finetune":
        return (workdir / "report.json").is_file()
    return (workdir / "checkpoints" / str(config.total_steps)).is_dir()


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
