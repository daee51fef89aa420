"""FeatureConfig owns which fields define the features; one compatibility check; no torch import."""

import dataclasses
import subprocess
import sys

import pytest

import napari_hrdv2 as hr
from napari_hrdv2.core.config import FEATURE_DEFINING_FIELDS, RUNTIME_FIELDS, check_same_features


def test_fields_are_either_runtime_or_feature_defining():
    names = [f.name for f in dataclasses.fields(hr.FeatureConfig)]
    assert sorted(FEATURE_DEFINING_FIELDS + RUNTIME_FIELDS) == sorted(names)
    assert not set(FEATURE_DEFINING_FIELDS) & set(RUNTIME_FIELDS)
    assert {"backbone", "shifts", "resize", "normalize"} <= set(FEATURE_DEFINING_FIELDS)
    assert {"device", "tile_size", "batch_size", "weights_sha256"} <= set(RUNTIME_FIELDS)


def test_with_runtime_of_keeps_the_features_and_takes_the_runtime():
    model = hr.FeatureConfig(shifts="neumann", resize="nearest", tile_size=None, weights_sha256="ab" * 32)
    widget = hr.FeatureConfig(shifts="moore", device="cpu", tile_size=224, batch_size=2)
    merged = model.with_runtime_of(widget)
    assert merged.feature_signature() == model.feature_signature()
    assert (merged.device, merged.tile_size, merged.batch_size) == ("cpu", 224, 2)
    assert merged.weights_sha256 == model.weights_sha256  # "no checksum given" keeps the model's check
    assert model.with_runtime_of(widget.replace(weights_sha256="cd" * 32)).weights_sha256 == "cd" * 32


def test_check_same_features_names_every_difference():
    check_same_features(hr.FeatureConfig(), hr.FeatureConfig(device="cpu", tile_size=None))  # runtime only: fine
    with pytest.raises(hr.InputError, match=r"resize: model 'bilinear' vs image 'nearest'") as raised:
        check_same_features(hr.FeatureConfig(), hr.FeatureConfig(resize="nearest", flips=True))
    assert "flips" in str(raised.value)


def test_config_module_imports_no_torch():
    code = (
        "import sys, napari_hrdv2.core.config as c; c.FeatureConfig().to_dict(); "
        "bad = [m for m in ('torch', 'scipy', 'transformers') if m in sys.modules]; assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_field_specs_declare_every_field_once_and_derive_the_cli_options():
    import dataclasses

    from napari_hrdv2.cli import OPTION_OF, build_parser
    from napari_hrdv2.core.config import (
        RUNTIME_FIELDS,
        SECTIONS,
        VALUE_KINDS,
        WIDGET_KINDS,
        FeatureConfig,
        field_spec,
        field_specs,
    )

    specs = field_specs()
    assert [s.name for s in specs] == [f.name for f in dataclasses.fields(FeatureConfig)]
    assert tuple(s.name for s in specs if s.runtime) == RUNTIME_FIELDS
    assert all(s.kind in VALUE_KINDS and s.widget in WIDGET_KINDS and s.section in SECTIONS for s in specs)
    assert all(s.default == getattr(FeatureConfig(), s.name) for s in specs)
    assert all((s.kind == "choice") == bool(s.choices) for s in specs)
    assert {s.name: s.flag for s in specs} == OPTION_OF
    assert field_spec("shift_distances").flag == "--distances" and field_spec("tile_size").minimum == 28
    help_text = build_parser()._subparsers._group_actions[0].choices["train"].format_help()
    assert all(s.flag in help_text for s in specs)


def test_runtime_is_a_runtime_setting_that_older_files_lack_and_the_cli_sets():
    from napari_hrdv2.cli import build_parser
    from napari_hrdv2.cli.settings import build_config, runtime_config
    from napari_hrdv2.core.config import RUNTIME_FIELDS, RUNTIMES, FeatureConfig, field_spec

    assert "runtime" in RUNTIME_FIELDS and FeatureConfig().runtime == "torch" and RUNTIMES == ("torch", "onnxruntime", "openvino")
    spec = field_spec("runtime")
    assert (spec.flag, spec.kind, spec.section, spec.choices) == ("--runtime", "choice", "computation", RUNTIMES)
    older = FeatureConfig().to_dict()
    del older["runtime"]  # a model or basis file written before the field existed
    assert FeatureConfig.from_dict(older) == FeatureConfig()
    onnx = FeatureConfig(runtime="onnxruntime")
    assert onnx.feature_differences(FeatureConfig()) == {}  # same features: a model applies with either runtime
    assert FeatureConfig().with_runtime_of(onnx).runtime == "onnxruntime"
    with pytest.raises(hr.InputError, match="runtime='tensorrt' is not one of"):
        FeatureConfig(runtime="tensorrt")
    parser = build_parser()
    for runtime in ("onnxruntime", "openvino"):
        assert build_config(parser.parse_args(["features", "x.tif", "--runtime", runtime])).runtime == runtime
    assert build_config(parser.parse_args(["features", "x.tif"])).runtime == "torch"
    assert runtime_config(parser.parse_args(["segment", "x.tif", "--model", "m.hrdv2"]), onnx).runtime == "torch"
