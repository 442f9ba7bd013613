"""eofm: pretraining and evaluation of Earth-observation foundation models in JAX."""

__version__ = "0.1.0"
