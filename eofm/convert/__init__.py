"""Importers of published PyTorch checkpoints into the eofm models."""
