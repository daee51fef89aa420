"""Many and large images: the batch plan shared by the in-process and the dask runner, and tile-by-tile
(out-of-core) segmentation and training.

See ARCHITECTURE.md for the layers and where each concept lives.
"""
