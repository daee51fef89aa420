"""HR-Dv2 features: preprocessing, tiling, the per-transform passes and their exact reconstruction
(:class:`~.encoding.Encoding`, :class:`~.encoding.Featurizer`), the encoding cache, feature sources and
classical filters.

See ARCHITECTURE.md for the layers and where each concept lives.
"""
