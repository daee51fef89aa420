"""Files in and out: image readers (TIFF, PNG, OME-Zarr, lazy planes), atomic writes and the one overwrite rule,
output naming and batch reports, label-image dtypes, checksums. The bottom floor beside :mod:`..runtime`.

See ARCHITECTURE.md for the layers and where each concept lives.
"""
