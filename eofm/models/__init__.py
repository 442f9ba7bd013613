"""Model families (one module each, found by `config.model_name` through `family.get`; the
protocol is in `family.py`) and what they share: transformer layers, tokenizers, the ViT encoder
and the masked autoencoder."""
