"""Model families: shared transformer layers, the ViT encoder and the masked autoencoder."""
