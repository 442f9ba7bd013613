"""Helpers shared by the data-source tests: plain rasterio reads and the sample contract."""

import numpy as np
import rasterio


def read_hwc(path) -> np.ndarray:
    """A raster as float64 [H, W, C], read directly with rasterio (the reference)."""
    with rasterio.open(path) as f:
        return np.moveaxis(f.read(), 0, -1).astype(np.float64)


def check_images(sample, specs, hw) -> None:
    """Every image key: float32 [H, W, C] with a bool mask of the same shape, finite, 0 where
    invalid."""
    for key, spec in specs.items():
        image, valid = sample[key], sample[key + "_valid"]
        assert image.dtype == np.float32 and valid.dtype == bool
        assert image.shape == valid.shape == (*hw, len(spec.bands)), key
        assert np.isfinite(image).all() and np.all(image[~valid] == 0)
