"""scripts/bench_scaling.py: rows, numbers and scaling exponents of the encoder benchmark, on tiny
RoMA and ViT encoders at two small sizes."""

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

from eofm.models import roma, vit

ROOT = Path(__file__).resolve().parents[1]


def _load_script():
    spec = importlib.util.spec_from_file_location(
        "bench_scaling", ROOT / "scripts/bench_scaling.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


bench = _load_script()
SIZES = (32, 64)  # 16 and 64 tokens of 8 px patches


@pytest.fixture(scope="module")
def tiny_encoders():
    one_block = {**roma.VARIANTS["tiny"], "depth": 1, "memory_layers": (1,)}
    roma_cfg = roma.RomaConfig(**one_block, in_chans=3, scan_chunk=8)
    vit_cfg = vit.ViTConfig(patch_size=8, embed_dim=32, depth=1, num_heads=2, in_chans=3)
    return [bench.roma_encoder(roma_cfg), bench.vit_encoder(vit_cfg)]


def test_measure_gives_one_row_per_model_and_size_with_positive_costs(tiny_encoders):
    rows = [r for e in tiny_encoders for r in bench.measure(e, SIZES, batch=2, repeats=2)]

    assert [(r.model, r.image_size, r.tokens) for r in rows] == [
        ("roma scan_chunk=8", 32, 16),
        ("roma scan_chunk=8", 64, 64),
        ("vit", 32, 16),
        ("vit", 64, 64),
    ]
    for row in rows:
        assert row.seconds > 0 and row.peak_bytes > 0 and row.forward_flops > 0, row
    roma_small, roma_large, vit_small, vit_large = rows
    assert roma_large.peak_bytes > roma_small.peak_bytes
    assert vit_large.peak_bytes > vit_small.peak_bytes
    # 4x the tokens: 4x the Mamba FLOPs, more than 4x with attention's quadratic term.
    assert roma_large.forward_flops == pytest.approx(4 * roma_small.forward_flops)
    assert vit_large.forward_flops > 4.2 * vit_small.forward_flops
    lines = [bench.row_line(r) for r in rows]
    assert lines[2].startswith("| vit | 32 | 16 | ") and lines[2].count("|") == 7
    summary = bench.scaling_summary(rows[:2])
    assert (
        summary.startswith("roma scan_chunk=8: time ~ N^") and "between 16 and 64 tokens" in summary
    )


def test_program_over_the_memory_limit_is_compiled_but_not_run(tiny_encoders):
    limit = 2**24  # 16 MiB
    small, large = bench.measure(tiny_encoders[1], SIZES, batch=64, repeats=1, max_bytes=limit)

    assert small.peak_bytes < limit < large.peak_bytes
    assert small.seconds > 0 and large.seconds is None
    assert "| not run (> 0.0 GiB limit) |" in bench.row_line(large)
    summary = bench.scaling_summary([small, large])
    assert "time ~ not fitted (fewer than 2 sizes), memory ~ N^" in summary


def test_patch_size_must_divide_the_image_size(tiny_encoders):
    with pytest.raises(ValueError, match=r"vit: image sizes \[36\] px .* patch size 8"):
        next(bench.measure(tiny_encoders[1], (32, 36), batch=1, repeats=1))


@pytest.mark.parametrize("power", [1.0, 2.0])
def test_scaling_exponent_of_a_power_law(power):
    tokens = np.array([144, 576, 2304, 4096])

    assert bench.scaling_exponent(tokens, 3.5 * tokens**power) == pytest.approx(power, abs=1e-9)
    assert bench.scaling_exponent(tokens[-2:], 0.1 * tokens[-2:] ** power) == pytest.approx(power)
