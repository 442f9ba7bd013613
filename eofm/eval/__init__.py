"""Evaluation of frozen and fine-tuned encoders: probes, dense heads and host-side metrics."""
