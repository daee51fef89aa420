"""Headless HR-Dv2 core: numpy/torch only, never napari, Qt or magicgui."""
