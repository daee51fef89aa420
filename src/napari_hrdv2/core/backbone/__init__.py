"""The backbone: a registry of frozen model specs, loading weights (Hub, folders, checkpoints), the ViT's
structure and its forward pass (tokens, facets, CLS attention), and the identity of its weights.

See ARCHITECTURE.md for the layers and where each concept lives.
"""
