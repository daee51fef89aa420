"""The Features dock's settings controls come from FeatureConfig's field declarations (one home with the CLI)."""

from __future__ import annotations

import pytest

from napari_hrdv2._widgets._feature_settings import DEVICES, FeatureSettingsControls
from napari_hrdv2.core.config import field_spec

pytestmark = pytest.mark.gui


def test_controls_carry_the_declared_labels_choices_and_help(qtbot):
    controls = FeatureSettingsControls()
    for name, control in {
        "shifts": controls.shifts, "shift_distances": controls.distances, "flips": controls.flips,
        "rotations": controls.rotations, "stride": controls.stride, "resize": controls.resize,
        "tile_size": controls.tile_size, "facet": controls.facet, "layer": controls.layer, "device": controls.device,
        "channel_mode": controls.channel_mode, "runtime": controls.runtime,
    }.items():  # fmt: skip
        spec = field_spec(name)
        shown = control.text if spec.widget == "check" else control.label
        assert shown == spec.label, name
        if spec.widget == "combo" and name != "device":
            assert tuple(control.choices) == spec.choices, name
    assert controls.tile_size.tooltip.startswith(field_spec("tile_size").help)
    assert controls.flips.tooltip == field_spec("flips").help
    # The dock's own choices where the declaration is open text or None is spelled 0:
    assert tuple(controls.device.choices) == DEVICES and controls.tile_size.min == 0 and controls.stride.min == 0


def test_the_runtime_control_defaults_to_torch_and_reads_and_shows_the_setting(qtbot):
    from napari_hrdv2.core.config import FeatureConfig

    controls = FeatureSettingsControls()
    assert controls.runtime.value == "torch" and controls.runtime in controls.advanced_controls
    controls.show(FeatureConfig())
    assert controls.read(FeatureConfig()).runtime == "torch"  # the dock's default state computes with torch
    controls.runtime.value = "onnxruntime"
    assert controls.read(FeatureConfig()).runtime == "onnxruntime"
    controls.show(FeatureConfig())
    assert controls.runtime.value == "torch"
    controls.show(FeatureConfig(runtime="onnxruntime"))
    assert controls.runtime.value == "onnxruntime"
    assert tuple(controls.runtime.choices) == ("torch", "onnxruntime", "openvino")  # from the field's declaration
    controls.runtime.value = "openvino"
    assert controls.read(FeatureConfig()).runtime == "openvino"
