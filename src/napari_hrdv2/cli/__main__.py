"""``python -m napari_hrdv2.cli``: the same as the ``napari-hrdv2`` command."""

import sys

from . import main

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
