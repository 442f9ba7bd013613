"""The `tiny` pretraining config of each ViT-style family built into a model, and synthetic
batches for it, for tests that compare one family's settings against each other."""

import jax
from flax import nnx

from eofm.data import datasets, inputs
from eofm.models import family

VIT_FAMILIES = ("mae", "smarties", "croma", "spectralgpt")


def tiny_model(load_config, name: str, like=None, image_size: int = 32, **model_fields):
    """(model, input specs) of configs/pretrain/<name>.py:tiny with `model_fields` set, for images
    of `image_size` pixels; `load_config` is the `pretrain_config` fixture. With `like` (a model of
    the same family), the model holds `like`'s state instead of a fresh initialisation (settings
    such as dtype, remat or scan leave the parameters as they are)."""
    config = load_config(name, "tiny")
    config.model.update(model_fields)
    config.data.image_size = image_size
    source = datasets.make_source(config.data.source, **config.data.source_args)
    specs = inputs.input_specs(config.data, source.specs)
    make = family.model_builder(config, specs)
    if like is None:
        return make(nnx.Rngs(0)), specs
    model = nnx.eval_shape(lambda: make(nnx.Rngs(0)))
    nnx.update(model, nnx.state(like))
    return model, specs


def synthetic_batch(specs, batch_size: int, image_size: int = 32, seed: int = 0) -> dict:
    """{input key: f32[B, S, S, C] uniform in [0, 1)} for the input specs of `tiny_model`."""
    key = jax.random.key(seed)
    return {
        k: jax.random.uniform(jax.random.fold_in(key, i), (batch_size, image_size, image_size, n))
        for i, (k, n) in enumerate((k, len(spec.bands)) for k, spec in specs.items())
    }
