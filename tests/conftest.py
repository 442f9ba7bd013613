"""Shared test set-up: 8 host CPU devices for sharding tests, and the real data samples."""

import os
from pathlib import Path

# Must happen before jax is imported anywhere in the test process.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Tests compile the same tiny programs again and again, in-process and in the training runs they
# start as subprocesses (which inherit this): JAX's persistent cache compiles each one once.
os.environ.setdefault(
    "JAX_COMPILATION_CACHE_DIR", str(Path(__file__).resolve().parents[1] / ".pytest_cache" / "jax")
)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

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
    """Loader of `configs/pretrain/<name>.py` variants: pretrain_config("croma", "tiny"), decoding
    in-process (`data.num_workers` 0)."""
    import importlib.util

    def load(name: str, arg: str):
        path = Path(__file__).resolve().parents[1] / "configs" / "pretrain" / f"{name}.py"
        spec = importlib.util.spec_from_file_location(f"pretrain_config_{name}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        config = module.get_config(arg)
        config.data.num_workers = 0  # decode in-process: worker start-up outweighs a few steps
        return config

    return load


@pytest.fixture(scope="session")
def small_smarties_run(tmp_path_factory, pretrain_config):
    """A 10-step SMARTIES pretraining run (64 wide, 2 blocks, 48 px) on the BigEarthNet pairs: a
    cheap pretrained encoder for the evaluation tests."""
    from eofm.train import loop, pretrain

    workdir = tmp_path_factory.mktemp("smarties_small")
    config = pretrain_config("smarties", "tiny")
    config.model.update(
        dict(embed_dim=64, depth=2, num_heads=2, decoder_dim=32, decoder_depth=1, decoder_heads=2)
    )
    config.data.image_size = 48
    config.batch_size = 8
    config.total_steps = 10
    config.warmup_steps = 2
    config.peak_flops = 1e11
    loop.train(config, workdir, pretrain.workload(config, workdir))
    return workdir


@pytest.fixture(scope="session")
def finetune_config():
    """Loader of `configs/finetune/<name>.py[:arg]` with data roots pointed at ../shared/data."""
    import importlib.util

    root = Path(__file__).resolve().parents[1]

    def load(name: str, arg: str = ""):
        spec = importlib.util.spec_from_file_location(
            f"finetune_config_{name}", root / "configs" / "finetune" / f"{name}.py"
        )
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        config = module.get_config(arg)
        data_root = config.data.source_args.get("root")
        if isinstance(data_root, str) and data_root.startswith("../shared/data/"):
            relative = data_root.removeprefix("../shared/data/")
            config.data.source_args.root = str(SHARED_DATA / relative)
        config.lock()  # a misspelt key is an error, as on the command line
        return config

    return load


@pytest.fixture(scope="session")
def eurosat_image_statistics(shared_data):
    """The training-free "imagestats" features of Corley et al. on the EuroSAT-MS sample:
    per-band mean / std / min / max of each image in reflectance, [216, 52], and labels [216]."""
    import numpy as np

    from eofm.data import datasets

    source = datasets.eurosat_ms(shared_data / "eurosat_ms")
    feats, labels = [], []
    for i in range(len(source)):
        x = source[i]["s2"].reshape(-1, 13) / 10000.0
        feats.append(np.concatenate([x.mean(0), x.std(0), x.min(0), x.max(0)]))
        labels.append(int(source[i]["label"]))
    return np.stack(feats), np.asarray(labels)
