"""Per-channel features (``channel_mode="separate"``): exact blocks, low-res projection, known answers, channel checks."""

from __future__ import annotations

import numpy as np
import pytest

import napari_hrdv2 as hr
from channel_images import five_channel_image, mirrored, strokes
from napari_hrdv2.core.config import describe_feature_differences, field_spec
from napari_hrdv2.core.errors import InputError
from napari_hrdv2.core.features.channels import ChannelEncoding


@pytest.fixture(scope="module")
def separate_config(tiny_backbone):
    return hr.FeatureConfig(
        backbone=tiny_backbone, device="cpu", shifts="neumann", shift_distances=(3,), tile_size=None,
        dtype="float32", storage_dtype="float32", channel_mode="separate",
    )  # fmt: skip


@pytest.fixture(scope="module")
def five_channels(separate_config):
    image, truth = five_channel_image()
    return image, truth, hr.Featurizer(separate_config).encode(image)


def test_channel_mode_is_a_feature_defining_setting():
    spec = field_spec("channel_mode")
    assert spec.flag == "--channel-mode" and spec.choices == ("joint", "separate") and spec.default == "joint"
    assert not spec.runtime and spec.widget == "combo"
    joint, separate = hr.FeatureConfig(), hr.FeatureConfig(channel_mode="separate")
    assert separate.feature_signature()["channel_mode"] == "separate"
    assert describe_feature_differences(joint, separate) == "channel_mode: model 'joint' vs image 'separate'"
    assert hr.FeatureConfig.from_dict(separate.to_dict()) == separate
    with pytest.raises(InputError, match="channel_mode"):
        hr.FeatureConfig(channel_mode="rgb")


def test_blocks_equal_each_channel_encoded_alone(five_channels, separate_config):
    image, _, encoding = five_channels
    assert isinstance(encoding, ChannelEncoding)
    assert encoding.n_channels == 5 and encoding.n_features == 5 * 128 and encoding.shape == (112, 112)
    features = encoding.features()
    assert features.shape == (640, 112, 112) and features.dtype == np.float32
    alone = hr.Featurizer(separate_config.replace(channel_mode="joint"))
    for c in range(5):
        single = alone.encode(image[..., c])
        np.testing.assert_array_equal(features[c * 128 : (c + 1) * 128], single.features())
    # A subset is reconstructed in other channel blocks: equal up to float32 rounding.
    np.testing.assert_allclose(encoding.features([130, 3, 639]), features[[130, 3, 639]], rtol=1e-5, atol=1e-6)
    assert encoding.nbytes == 5 * single.nbytes


def test_projection_sample_and_similarity_equal_materialised_features(five_channels):
    _, _, encoding = five_channels
    features = encoding.features()
    rng = np.random.default_rng(3)
    weight, bias = rng.standard_normal((3, 640)).astype(np.float32), rng.standard_normal(3).astype(np.float32)
    expected = np.einsum("oc,chw->ohw", weight, features) + bias[:, None, None]
    np.testing.assert_allclose(encoding.project(weight, bias), expected, rtol=1e-4, atol=1e-3)
    rows, cols = rng.integers(0, 112, 50), rng.integers(0, 112, 50)
    np.testing.assert_allclose(encoding.sample(rows, cols), features[:, rows, cols].T, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(encoding.feature_norm(), np.sqrt((features**2).sum(0)), rtol=1e-4)
    similarity = encoding.cosine_similarity(5, 7)
    assert similarity.shape == (112, 112) and similarity[5, 7] == pytest.approx(1.0, abs=1e-4)
    assert encoding.attention().shape == (2, 112, 112)


def test_classes_seen_only_in_channel_4_are_segmented(five_channels, separate_config):
    image, truth, encoding = five_channels
    labels = strokes(truth)
    model = hr.LinearSegmenter().fit(encoding, labels)
    predicted = model.predict(encoding)
    assert (predicted == truth).mean() > 0.95
    dense = model.decision_function(encoding.features())  # low-res path == materialised features
    np.testing.assert_allclose(model.decision_function(encoding), dense, rtol=1e-4, atol=1e-3)
    np.testing.assert_array_equal(predicted, model.classes_[dense.argmax(0)].astype(predicted.dtype))
    # On a new image with the classes swapped sides, the model reads channel 4, not the position.
    other, other_truth = mirrored(image, truth)
    featurizer = hr.Featurizer(separate_config)
    assert (model.predict(featurizer.encode(other)) == other_truth).mean() > 0.95
    # One wrong channel alone cannot tell the classes (by position only: wrong on the mirrored image).
    alone = hr.Featurizer(separate_config.replace(channel_mode="joint"))
    wrong_model = hr.LinearSegmenter().fit(alone.encode(image[..., 0]), labels)
    assert (wrong_model.predict(alone.encode(other[..., 0])) == other_truth).mean() < 0.6


def test_model_refuses_other_channel_counts_and_saves_the_mode(five_channels, separate_config, tmp_path):
    image, truth, encoding = five_channels
    model = hr.LinearSegmenter().fit(encoding, strokes(truth))
    three = hr.Featurizer(separate_config).encode(image[..., :3])
    with pytest.raises(InputError, match="trained on 5 channels separately; the image has 3"):
        model.predict(three)
    model.save(tmp_path / "m.hrdv2")
    loaded = hr.LinearSegmenter.load(tmp_path / "m.hrdv2")
    assert loaded.feature_config.channel_mode == "separate"
    np.testing.assert_array_equal(loaded.predict(encoding), model.predict(encoding))
    joint = hr.Featurizer(separate_config.replace(channel_mode="joint")).encode(image[..., 0])
    with pytest.raises(InputError, match="channel_mode"):
        loaded.predict(joint)


def test_grey_image_is_one_block_and_progress_counts_channels(separate_config):
    image = np.random.default_rng(0).random((40, 50)).astype(np.float32)
    seen = []
    encoding = hr.Featurizer(separate_config).encode(image, progress=seen.append)
    assert encoding.n_channels == 1 and encoding.n_features == 128
    assert any("channel 1/1" in p.message for p in seen)
    two = hr.Featurizer(separate_config).encode(np.stack([image, image * 2], axis=-1), progress=seen.append)
    assert two.n_channels == 2 and any("channel 2/2" in p.message for p in seen)


def test_hybrid_and_pca_work_on_separate_channels(five_channels):
    image, truth, encoding = five_channels
    model = hr.LinearSegmenter(hybrid=True).fit(encoding, strokes(truth))
    assert (model.predict(encoding) == truth).mean() > 0.95
    basis = hr.fit_pca(encoding, n_components=3)
    assert basis.components.shape == (3, 640)
