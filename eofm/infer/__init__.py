"""Whole-scene inference: a model applied to a scene far larger than memory, window by window at
the encoder's native size with overlap (tiling: the tile plan, the window grid and the seamless
blend of overlapping outputs), written tile by tile to a resumable Zarr store that GIS tools open
(store), by one loop whose memory does not grow with the scene (scene.run_scene). Embeddings of a
pretrained encoder (embed); class maps and probabilities of a trained head (heads, maps), written
as cloud-optimised GeoTIFFs (cog).
"""
