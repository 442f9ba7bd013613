"""Tests of the SpectralGPT checkpoint importer: round trip, official key names, the Conv3d patch
embedding and the separate q, k, v Linears in numpy, position tables of another grid, errors."""

import argparse
import dataclasses
import logging
import math

import jax
import numpy as np
import pytest
from flax import nnx
from param_helpers import params, randomize

from eofm.convert import croma as croma_convert
from eofm.convert import spectralgpt as convert
from eofm.convert import torch_state
from eofm.models import spectralgpt
from eofm.models.croma import Croma, CromaConfig
from eofm.models.spectralgpt import SpectralGPT, SpectralGPTConfig, cubify

D, DEPTH, HEADS, DD, S = 32, 2, 2, 16, 32
CFG = SpectralGPTConfig(
    embed_dim=D,
    depth=DEPTH,
    num_heads=HEADS,
    image_size=S,
    decoder_dim=DD,
    decoder_depth=1,
    decoder_heads=2,
)
GRID = S // 8
INPUTS = convert.DEFAULT_INPUTS  # the 12 bands of spectralgpt.BANDS


def trained_model(seed: int = 0, cfg: SpectralGPTConfig = CFG) -> SpectralGPT:
    """A model whose every parameter (zero biases, unit scales included) is random."""
    return randomize(SpectralGPT(cfg, INPUTS, rngs=nnx.Rngs(seed)), seed)


def images(seed: int = 0, size: int = S) -> np.ndarray:
    return np.random.default_rng(seed).uniform(size=(2, size, size, 12)).astype(np.float32)


@nnx.jit
def encode(model: SpectralGPT, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    return model.encode(x)


@nnx.jit
def loss(model: SpectralGPT, x: jax.Array, rng: jax.Array) -> jax.Array:
    return model(x, rng=rng)[0]


@pytest.fixture(scope="module")
def official() -> dict[str, np.ndarray]:
    """An official-layout state dict with random values."""
    return convert.from_eofm(trained_model(0))


# --- round trip -----------------------------------------------------------------------------


def test_round_trip_through_safetensors(tmp_path):
    model_a = trained_model(0)
    path = tmp_path / "spectralgpt.safetensors"
    torch_state.save_safetensors(path, convert.from_eofm(model_a))
    model_b = convert.load_spectralgpt(path, CFG, rngs=nnx.Rngs(1))
    # Default inputs: the 12 bands SpectralGPT reads, as its input contract requires.
    assert model_b.inputs == convert.DEFAULT_INPUTS
    assert spectralgpt.from_data(model_b.inputs, S) == {"image_size": S}
    want = params(model_a)
    for key, value in params(model_b).items():
        np.testing.assert_array_equal(value, want[key], err_msg=str(key))

    x, rng = images(), jax.random.key(3)
    for got, expected in zip(encode(model_b, x), encode(model_a, x)):  # tokens, pooled
        np.testing.assert_array_equal(got, expected)
    assert float(loss(model_b, x, rng)) == float(loss(model_a, x, rng))


def test_official_key_names_and_shapes(official):
    expected = {
        "patch_embed.proj.weight": (D, 1, 3, 8, 8),
        "patch_embed.proj.bias": (D,),
        "pos_embed_spatial": (1, GRID * GRID, D),
        "pos_embed_temporal": (1, 4, D),
        "blocks.1.norm1.weight": (D,),
        "blocks.1.attn.q.weight": (D, D),
        "blocks.1.attn.k.weight": (D, D),
        "blocks.1.attn.v.weight": (D, D),
        "blocks.1.attn.q.bias": (D,),
        "blocks.1.attn.v.bias": (D,),
        "blocks.1.attn.proj.weight": (D, D),
        "blocks.1.norm2.bias": (D,),
        "blocks.1.mlp.fc1.weight": (4 * D, D),
        "blocks.1.mlp.fc2.weight": (D, 4 * D),
        "norm.weight": (D,),
        "mask_token": (1, 1, DD),
        "decoder_embed.weight": (DD, D),
        "decoder_pos_embed_spatial": (1, GRID * GRID, DD),
        "decoder_pos_embed_temporal": (1, 4, DD),
        "decoder_blocks.0.attn.k.weight": (DD, DD),
        "decoder_blocks.0.mlp.fc2.bias": (DD,),
        "decoder_norm.bias": (DD,),
        "decoder_pred.weight": (192, DD),
        "decoder_pred.bias": (192,),
    }
    for key, shape in expected.items():
        assert official[key].shape == shape, key
    block = 2 + 4 * 2 + 2 + 2 * 2  # norm1, q, k, v, proj, norm2, fc1, fc2 (weight and bias)
    tables = 4 + 1  # position tables, mask token
    linears = 2 * 4  # patch_embed, norm, decoder_embed, decoder_norm, decoder_pred: 2 of each
    assert len(official) == (DEPTH + 1) * block + tables + linears + 2
    assert not any(part in key for key in official for part in ("kernel", "scale", "qkv"))
    assert all(v.dtype == np.float32 for v in official.values())


# --- layouts against numpy ports of the official modules --------------------------------------


def conv3d(volume: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """Conv3d, kernel = stride = weight.shape[2:], no padding.  [C, T, H, W] -> [D, T', H', W']."""
    kt, kh, kw = weight.shape[2:]
    _, t, h, w = volume.shape
    out = np.zeros((weight.shape[0], t // kt, h // kh, w // kw), np.float64)
    for g, y, x in np.ndindex(*out.shape[1:]):
        window = volume[:, g * kt : (g + 1) * kt, y * kh : (y + 1) * kh, x * kw : (x + 1) * kw]
        out[:, g, y, x] = np.sum(weight * window[None], axis=(1, 2, 3, 4)) + bias
    return out


def test_patch_embedding_is_the_official_conv3d(official):
    model = SpectralGPT(CFG, INPUTS, rngs=nnx.Rngs(1))
    convert.to_eofm(official, model)
    image = images(2)[0]
    # The official model sees the bands as 12 frames of a 1-channel volume [1, T, H, W].
    volume = image.transpose(2, 0, 1)[None].astype(np.float64)
    out = conv3d(volume, official["patch_embed.proj.weight"], official["patch_embed.proj.bias"])
    want = out.reshape(D, -1).T  # tokens: spectral group, then spatial raster
    got = model.patch_embed(cubify(image[None]))[0]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_separate_qkv_linears(official):
    rng = np.random.default_rng(0)
    state = dict(official)
    for part in "qkv":
        state[f"blocks.0.attn.{part}.weight"] = rng.standard_normal((D, D), np.float32) / 6
        state[f"blocks.0.attn.{part}.bias"] = rng.standard_normal(D, np.float32)
    model = SpectralGPT(CFG, INPUTS, rngs=nnx.Rngs(1))
    convert.to_eofm(state, model)
    attn = model.blocks[0].attn

    b, n, hd = 2, 5, D // HEADS
    x = rng.standard_normal((b, n, D), np.float32)
    linear = lambda key, t: t @ state[f"{key}.weight"].T + state[f"{key}.bias"]
    # torch: q = self.q(x).reshape(B, N, H, D/H), likewise k and v.
    q, k, v = (linear(f"blocks.0.attn.{part}", x).reshape(b, n, HEADS, hd) for part in "qkv")
    eofm_qkv = np.asarray(attn.qkv(x)).reshape(b, n, 3, HEADS, hd)  # as `Attention` splits it
    for i, expected in enumerate((q, k, v)):
        np.testing.assert_allclose(eofm_qkv[:, :, i], expected, rtol=1e-5, atol=1e-5)

    logits = np.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(hd)
    weights = np.exp(logits - logits.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    heads = np.einsum("bhqk,bkhd->bqhd", weights, v).reshape(b, n, D)
    np.testing.assert_allclose(attn(x), linear("blocks.0.attn.proj", heads), rtol=1e-4, atol=1e-4)


# --- position tables of another grid ---------------------------------------------------------


def test_checkpoint_of_another_image_size_is_interpolated(official, caplog):
    big = dataclasses.replace(CFG, image_size=48)  # a 6 x 6 grid from the 4 x 4 one
    with caplog.at_level(logging.INFO):
        model = SpectralGPT(big, INPUTS, rngs=nnx.Rngs(1))
        convert.to_eofm(official, model, source="spectralgpt_32px.pth")
    assert "spectralgpt_32px.pth: pos_embed_spatial interpolated from a 4x4 grid (32 px)" in (
        caplog.text
    )
    assert "decoder_pos_embed_spatial interpolated" in caplog.text

    corners = [(0, 0), (0, -1), (-1, 0), (-1, -1)]
    for module, key in (("pos", "pos_embed_spatial"), ("decoder_pos", "decoder_pos_embed_spatial")):
        old = official[key][0].reshape(GRID, GRID, -1)
        new = np.asarray(getattr(model, module).spatial[...]).reshape(6, 6, -1)
        for corner in corners:
            np.testing.assert_allclose(new[corner], old[corner], rtol=1e-6, atol=1e-6)
        assert not np.allclose(new[1, 1], old[1, 1])
        assert convert.from_eofm(model)[key].shape == (1, 36, old.shape[-1])
    # Everything else is copied as it is.
    np.testing.assert_array_equal(model.pos.spectral[...], official["pos_embed_temporal"][0])

    x = images(1, size=48)
    tokens, pooled = encode(model, x)
    assert tokens.shape == (2, 4 * 36, D) and pooled.shape == (2, D)
    assert np.isfinite(tokens).all() and np.isfinite(float(loss(model, x, jax.random.key(0))))


# --- the files users have: encoder only, finetuning ViT ----------------------------------------

DECODER = ("decoder_blocks", "decoder_embed", "decoder_norm", "decoder_pos", "decoder_pred")


def encoder_only(state: dict) -> dict:
    return {k: v for k, v in state.items() if not k.startswith("decoder_") and k != "mask_token"}


def finetuning_vit(state: dict, *, global_pool: bool) -> dict:
    """The official finetuning ViT: the encoder with one learned (1, 4 N, D) `pos_embed` in place
    of the separable tables, and a linear head; with global pooling, fc_norm instead of norm."""
    rng = np.random.default_rng(5)
    out = {k: v for k, v in encoder_only(state).items() if not k.startswith("pos_embed_")}
    out |= {
        "pos_embed": rng.standard_normal((1, 4 * GRID * GRID, D), np.float32),
        "head.weight": rng.standard_normal((10, D), np.float32),
        "head.bias": rng.standard_normal(10, np.float32),
    }
    if global_pool:
        out["fc_norm.weight"], out["fc_norm.bias"] = out.pop("norm.weight"), out.pop("norm.bias")
    return out


def assert_loaded(model: SpectralGPT, kept: tuple[str, ...]) -> None:
    """Params of the modules `kept` hold their initial values (seed 1), the others the trained
    ones."""
    trained, init = params(trained_model(0)), params(SpectralGPT(CFG, INPUTS, rngs=nnx.Rngs(1)))
    for path, value in params(model).items():
        want = init if path[0] in kept else trained
        np.testing.assert_array_equal(value, want[path], err_msg=str(path))


def test_encoder_only_file_loads(official, caplog):
    model = SpectralGPT(CFG, INPUTS, rngs=nnx.Rngs(1))
    with caplog.at_level(logging.WARNING):
        report = convert.to_eofm(encoder_only(official), model, source="encoder.pth")
    assert report.unused == ()
    assert report.kept == (*DECODER, "mask_token")
    assert "encoder.pth" in caplog.text and "decoder_blocks" in caplog.text
    assert_loaded(model, report.kept)

    # Half a decoder is not an encoder-only file.
    state = encoder_only(official) | {"decoder_embed.weight": official["decoder_embed.weight"]}
    with pytest.raises(convert.ConversionError) as info:
        convert.to_eofm(state, SpectralGPT(CFG, INPUTS, rngs=nnx.Rngs(1)))
    assert "decoder_pred.weight" in info.value.missing
    assert "decoder_embed.bias" in info.value.missing
    with pytest.raises(convert.ConversionError) as info:
        convert.to_eofm(
            encoder_only(official),
            SpectralGPT(CFG, INPUTS, rngs=nnx.Rngs(1)),
            allow_missing_decoder=False,
        )
    assert "mask_token" in info.value.missing


@pytest.mark.parametrize("global_pool", [False, True])
def test_finetuning_vit_state_dict_loads_the_encoder(official, global_pool, caplog):
    model = SpectralGPT(CFG, INPUTS, rngs=nnx.Rngs(1))
    state = finetuning_vit(official, global_pool=global_pool)
    with caplog.at_level(logging.WARNING):
        report = convert.to_eofm(state, model, source="eurosat_finetuned.pth")
    fc_norm = ("fc_norm.bias", "fc_norm.weight") if global_pool else ()
    assert report.unused == (*fc_norm, "head.bias", "head.weight", "pos_embed")
    norm = ("norm",) if global_pool else ()
    assert report.kept == (*DECODER, "mask_token", *norm, "pos")
    for name in report.unused + report.kept:
        assert name in caplog.text
    assert_loaded(model, report.kept)


# --- errors ---------------------------------------------------------------------------------


def test_all_problems_listed_in_one_error(official):
    state = dict(official)
    del state["blocks.1.attn.k.weight"]
    state["blocks.0.attn.qkv.weight"] = np.zeros((3 * D, D), np.float32)
    state["patch_embed.proj.weight"] = np.zeros((D, 12, 8, 8), np.float32)
    state["pos_embed_spatial"] = np.zeros((1, 15, D), np.float32)  # not a square grid
    model = SpectralGPT(CFG, INPUTS, rngs=nnx.Rngs(1))
    before = params(model)
    with pytest.raises(convert.ConversionError) as info:
        convert.to_eofm(state, model, source="bad.pth")
    error = info.value
    assert error.missing == ["blocks.1.attn.k.weight"]
    assert error.unexpected == ["blocks.0.attn.qkv.weight"]
    assert sorted(error.mismatched) == [
        "patch_embed.proj.weight: expected (32, 1, 3, 8, 8), got (32, 12, 8, 8)",
        "pos_embed_spatial: expected (1, 16, 32), got (1, 15, 32)",
    ]
    message = str(error)
    assert "bad.pth" in message and "SpectralGPT (width 32, depth 2" in message
    assert "the file holds: depth 2, decoder width 16, decoder depth 1" in message
    for item in error.missing + error.unexpected + error.mismatched:
        assert item in message
    after = params(model)  # nothing written
    assert all(np.array_equal(after[k], before[k]) for k in before)


def test_croma_checkpoint_is_refused(official):
    croma_cfg = CromaConfig(
        embed_dim=D, depth=DEPTH, num_heads=4, decoder_dim=16, decoder_heads=2, decoder_mlp_dim=32
    )
    croma = Croma(croma_cfg, croma_convert.DEFAULT_INPUTS, rngs=nnx.Rngs(0))
    state = croma_convert.from_eofm(croma)
    with pytest.raises(convert.ConversionError) as info:
        convert.to_eofm(state, SpectralGPT(CFG, INPUTS, rngs=nnx.Rngs(0)), source="CROMA_base.pt")
    error = info.value
    assert "patch_embed.proj.weight" in error.missing and "blocks.0.attn.q.weight" in error.missing
    assert "s2_encoder.linear_input.weight" in error.unexpected
    message = str(error)
    assert "CROMA_base.pt" in message and "is a SpectralGPT key" in message
    assert "expected: a SpectralGPT state dict" in message and "head" in message
    assert len(message.splitlines()) < 60 and "... and " in message
    # And the other way round.
    with pytest.raises(convert.ConversionError, match="is a CROMA key"):
        croma_convert.to_eofm(official, croma)


# --- the official file form ------------------------------------------------------------------


def test_official_torch_checkpoint(tmp_path, official):
    torch = pytest.importorskip("torch")
    path = tmp_path / "SpectralGPT.pth"
    checkpoint = {
        "model": {key: torch.from_numpy(value) for key, value in official.items()},
        "optimizer": {"state": {}, "param_groups": [{"lr": 1e-4, "params": [0, 1]}]},
        "epoch": 199,
        "scaler": {"scale": 65536.0, "growth_factor": 2.0},
        "args": argparse.Namespace(model="mae_vit_base_patch8_128", input_size=S, t_patch_size=3),
    }
    torch.save(checkpoint, path)
    model = convert.load_spectralgpt(path, CFG, rngs=nnx.Rngs(1))
    assert convert.from_eofm(model).keys() == official.keys()
    for key, value in convert.from_eofm(model).items():
        np.testing.assert_array_equal(value, official[key], err_msg=key)

    image = images(2)[:1]
    volume = torch.from_numpy(image).permute(0, 3, 1, 2)[:, None]  # [B, 1, T, H, W]
    conv = torch.nn.functional.conv3d(
        volume,
        checkpoint["model"]["patch_embed.proj.weight"],
        checkpoint["model"]["patch_embed.proj.bias"],
        stride=(3, 8, 8),
    )
    want = conv.flatten(2).transpose(1, 2).numpy()
    got = model.patch_embed(cubify(image))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
