"""Segmentation from scribbles: the linear segmenter, the MLP head, their training, labels, the model file,
stacks, the one compatibility check and the :class:`~.protocol.Segmenter` protocol.

See ARCHITECTURE.md for the layers and where each concept lives.
"""
