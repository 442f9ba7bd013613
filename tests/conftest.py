"""Shared test set-up: 8 host CPU devices for sharding tests, and the real data samples."""

import os
from pathlib import Path

# Must happen before jax is imported anywhere in the test process.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pytest  # noqa: E402

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """`../shared/data` beside the project root: the real EO samples the tests read."""
    if not SHARED_DATA.is_dir():
        raise FileNotFoundError(f"{SHARED_DATA} is missing: the tests need ../shared/data")
    return SHARED_DATA


@pytest.fixture(scope="session")
def pretrain_config():
    """Loader of `configs/pretrain/<name>.py` variants: pretrain_config("croma", "tiny")."""
    import importlib.util

    def load(name: str, arg: str):
        path = Path(__file__).resolve().parents[1] / "configs" / "pretrain" / f"{name}.py"
        spec = importlib.util.spec_from_file_location(f"pretrain_config_{name}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module.get_config(arg)

    return load
