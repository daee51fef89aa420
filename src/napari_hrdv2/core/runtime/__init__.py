"""Where and how computation runs: device and precision (``dtype="auto"``), torch threads, memory budgets.

See ARCHITECTURE.md for the layers and where each concept lives.
"""
