"""InceptionResNetV2 matches the reference network and accepts small inputs; build_model's registry."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from core.model import (
    MIN_INPUT_SIZE,
    InceptionResNetV2,
    available_models,
    build_model,
    count_parameters,
)


@pytest.fixture(scope="module")
def model50() -> InceptionResNetV2:
    torch.manual_seed(0)
    return InceptionResNetV2(num_classes=50).eval()


@pytest.mark.parametrize(("num_classes", "expected"), [(50, 54_383_314), (1001, 55_845_001)])
def test_parameter_count_matches_the_reference(num_classes, expected):
    assert count_parameters(InceptionResNetV2(num_classes=num_classes)) == expected


@pytest.mark.parametrize("size", [75, 96, 128, 299])
def test_forward_accepts_any_input_of_at_least_75_px(model50, size):
    with torch.no_grad():
        out = model50(torch.randn(2, 3, size, size))
    assert out.shape == (2, 50)
    assert torch.isfinite(out).all()


def test_non_square_input_works(model50):
    with torch.no_grad():
        assert model50(torch.randn(1, 3, 75, 160)).shape == (1, 50)


@pytest.mark.parametrize("shape", [(1, 3, 74, 74), (1, 3, 299, 60), (1, 1, 128, 128), (3, 128, 128)])
def test_bad_input_shape_gets_a_clear_error(model50, shape):
    with pytest.raises(ValueError, match="InceptionResNetV2 needs|RGB images"):
        model50(torch.randn(*shape))


def test_adaptive_pool_equals_reference_avgpool_on_8x8_map():
    x = torch.randn(2, 1536, 8, 8)
    ref = nn.AvgPool2d(8, count_include_pad=False)(x)
    ours = InceptionResNetV2(num_classes=10).avgpool_1a(x)
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-6)


def test_at_299_px_logits_equal_the_reference_pooling_path(model50):
    x = torch.randn(1, 3, 299, 299)
    with torch.no_grad():
        feats = model50.features(x)
        assert feats.shape == (1, 1536, 8, 8)
        ref = model50.last_linear(nn.AvgPool2d(8, count_include_pad=False)(feats).view(1, -1))
        torch.testing.assert_close(model50.logits(feats), ref)
        torch.testing.assert_close(model50(x), ref)


# Keys and shapes from the published pretrainedmodels InceptionResNetV2 state_dict.
REFERENCE_KEYS = {
    "conv2d_1a.conv.weight": (32, 3, 3, 3),
    "conv2d_1a.bn.running_mean": (32,),
    "conv2d_4a.conv.weight": (192, 80, 3, 3),
    "mixed_5b.branch1.1.conv.weight": (64, 48, 5, 5),
    "mixed_5b.branch3.1.conv.weight": (64, 192, 1, 1),
    "repeat.0.branch2.2.bn.weight": (64,),
    "repeat.9.conv2d.weight": (320, 128, 1, 1),
    "mixed_6a.branch1.2.conv.weight": (384, 256, 3, 3),
    "repeat_1.19.branch1.1.conv.weight": (160, 128, 1, 7),
    "repeat_1.0.branch1.2.conv.weight": (192, 160, 7, 1),
    "mixed_7a.branch2.2.conv.weight": (320, 288, 3, 3),
    "repeat_2.8.conv2d.bias": (2080,),
    "repeat_2.0.branch1.1.conv.weight": (224, 192, 1, 3),
    "block8.conv2d.weight": (2080, 448, 1, 1),
    "conv2d_7b.conv.weight": (1536, 2080, 1, 1),
    "last_linear.weight": (1001, 1536),
    "last_linear.bias": (1001,),
}


def test_state_dict_has_reference_names_and_shapes():
    sd = InceptionResNetV2(num_classes=1001).state_dict()
    for key, shape in REFERENCE_KEYS.items():
        assert key in sd, key
        assert tuple(sd[key].shape) == shape, key
    # 204 BasicConv2d x 6 entries (conv.weight, bn weight/bias/running_mean/running_var/
    # num_batches_tracked) + 40 residual 1x1 convs x 2 (weight, bias) + last_linear x 2.
    assert len(sd) == 204 * 6 + 40 * 2 + 2
    assert not any(k.startswith("avgpool_1a") for k in sd)


def test_reference_state_dict_loads_strict_from_disk(tmp_path):
    torch.manual_seed(1)
    src = InceptionResNetV2(num_classes=1001).eval()
    path = tmp_path / "irv2.pth"
    torch.save(src.state_dict(), path)
    dst = InceptionResNetV2(num_classes=1001).eval()
    result = dst.load_state_dict(torch.load(path, weights_only=True), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    x = torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        torch.testing.assert_close(dst(x), src(x))


def test_a_state_dict_with_a_foreign_key_is_refused():
    sd = InceptionResNetV2(num_classes=10).state_dict()
    sd["block8.relu.weight"] = torch.zeros(1)
    with pytest.raises(RuntimeError, match="block8.relu.weight"):
        InceptionResNetV2(num_classes=10).load_state_dict(sd, strict=True)


def test_reference_hyperparameters():
    m = InceptionResNetV2(num_classes=5)
    bns = [mod for mod in m.modules() if isinstance(mod, nn.BatchNorm2d)]
    assert len(bns) == 204
    assert all(bn.eps == 0.001 and bn.momentum == 0.1 and bn.affine for bn in bns)
    assert len(m.repeat) == 10 and {b.scale for b in m.repeat} == {0.17}
    assert len(m.repeat_1) == 20 and {b.scale for b in m.repeat_1} == {0.10}
    assert len(m.repeat_2) == 9 and {b.scale for b in m.repeat_2} == {0.20}
    assert all(not b.noReLU for b in m.repeat_2)
    assert m.block8.noReLU and m.block8.scale == 1.0 and not hasattr(m.block8, "relu")


def test_final_block8_output_can_be_negative(model50):
    # Without the ReLU the residual sum keeps its sign; a ReLU here would clamp it at zero.
    with torch.no_grad():
        x = model50.repeat_2(torch.randn(1, 2080, 3, 3).relu())
        assert (model50.block8(x) < 0).any()
        assert (model50.repeat_2[-1](x) >= 0).all()


def test_weights_are_initialised_like_torchvision():
    m = InceptionResNetV2(num_classes=7)
    assert torch.equal(m.conv2d_1a.bn.weight, torch.ones(32))
    assert torch.equal(m.conv2d_1a.bn.bias, torch.zeros(32))
    assert torch.equal(m.repeat[0].conv2d.bias, torch.zeros(320))
    # kaiming_normal_(fan_out, relu): std = sqrt(2 / (out_channels * k * k)).
    w = m.conv2d_7b.conv.weight
    assert abs(w.std().item() - (2 / 1536) ** 0.5) < 0.1 * (2 / 1536) ** 0.5


def test_num_classes_must_be_positive():
    with pytest.raises(ValueError, match="num_classes"):
        InceptionResNetV2(num_classes=0)


@pytest.mark.parametrize("name", ["inception_resnet_v2", "inceptionresnetv2", "Inception_ResNet_V2"])
def test_build_model_our_network(name):
    m = build_model(name, 50)
    assert isinstance(m, InceptionResNetV2)
    assert m.last_linear.out_features == 50


def test_build_model_torchvision_resnet18():
    m = build_model("resnet18", 12)
    assert type(m).__name__ == "ResNet"
    assert m.fc.out_features == 12
    with torch.no_grad():
        assert m.eval()(torch.randn(1, 3, 64, 64)).shape == (1, 12)


def test_build_model_unknown_name_lists_valid_names():
    with pytest.raises(ValueError, match="unknown model 'resnet9000'.*inception_resnet_v2.*resnet50"):
        build_model("resnet9000", 10)


@pytest.mark.parametrize("bad", [0, -3, 2.5, True])
def test_build_model_rejects_bad_num_classes(bad):
    with pytest.raises(ValueError, match="num_classes"):
        build_model("resnet18", bad)


def test_available_models_lists_ours_and_torchvision_classifiers():
    names = available_models()
    assert names[0] == "inception_resnet_v2"
    assert {"resnet18", "resnet50", "vit_b_16"} <= set(names)
    assert "fasterrcnn_resnet50_fpn" not in names  # detection models are not classifiers
    assert MIN_INPUT_SIZE == 75


def test_count_parameters_trainable_only():
    m = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    m[0].weight.requires_grad_(False)
    assert count_parameters(m) == 16 + 10
    assert count_parameters(m, trainable_only=True) == 4 + 10
