"""Looking at features: PCA bases (fit, apply, files), similarity maps and patch matching.

See ARCHITECTURE.md for the layers and where each concept lives.
"""
