"""InceptionResNetV2 matches the reference network and accepts small inputs; build_model's registry:
every model returns plain logits in training, and input sizes a model cannot take are refused up front."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from core.model import (
    MIN_INPUT_SIZE,
    InceptionResNetV2,
    available_models,
    build_model,
    check_input_size,
    count_parameters,
)


@pytest.fixture(scope="module")
def model50() -> InceptionResNetV2:
    torch.manual_seed(0)
    return InceptionResNetV2(num_classes=50).eval()


def on_meta(num_classes: int) -> InceptionResNetV2:
    """The network's structure without initialising 55M weights: for tests of names, shapes, counts."""
    with torch.device("meta"):
        return InceptionResNetV2(num_classes=num_classes)


@pytest.mark.parametrize(("num_classes", "expected"), [(50, 54_383_314),
                                                      pytest.param(1001, 55_845_001, marks=pytest.mark.slow)])
def test_parameter_count_matches_the_reference(num_classes, expected):
    assert count_parameters(on_meta(num_classes)) == expected


@pytest.mark.parametrize("size", [75, pytest.param(96, marks=pytest.mark.slow), pytest.param(128, marks=pytest.mark.slow),
                                  pytest.param(299, marks=pytest.mark.slow)])
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
    ours = on_meta(10).avgpool_1a(x)  # a module without parameters: it computes on the CPU all the same
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-6)


@pytest.mark.slow  # a 299 px forward of the full network
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
    sd = on_meta(1001).state_dict()
    for key, shape in REFERENCE_KEYS.items():
        assert key in sd, key
        assert tuple(sd[key].shape) == shape, key
    # 204 BasicConv2d x 6 entries (conv.weight, bn weight/bias/running_mean/running_var/
    # num_batches_tracked) + 40 residual 1x1 convs x 2 (weight, bias) + last_linear x 2.
    assert len(sd) == 204 * 6 + 40 * 2 + 2
    assert not any(k.startswith("avgpool_1a") for k in sd)


@pytest.mark.slow  # two 1001-class networks initialised, saved and compared
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


def test_a_state_dict_with_a_foreign_key_is_refused(model50):
    sd = model50.state_dict()
    sd["block8.relu.weight"] = torch.zeros(1)
    with pytest.raises(RuntimeError, match="block8.relu.weight"):
        on_meta(50).load_state_dict(sd, strict=True, assign=True)


def test_reference_hyperparameters():
    m = on_meta(5)
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


def test_weights_are_initialised_like_torchvision(model50):
    m = model50
    assert torch.equal(m.conv2d_1a.bn.weight, torch.ones(32))
    assert torch.equal(m.conv2d_1a.bn.bias, torch.zeros(32))
    assert torch.equal(m.repeat[0].conv2d.bias, torch.zeros(320))
    # kaiming_normal_(fan_out, relu): std = sqrt(2 / (out_channels * k * k)).
    w = m.conv2d_7b.conv.weight
    assert abs(w.std().item() - (2 / 1536) ** 0.5) < 0.1 * (2 / 1536) ** 0.5


def test_num_classes_must_be_positive():
    with pytest.raises(ValueError, match="num_classes"):
        InceptionResNetV2(num_classes=0)


@pytest.mark.parametrize("name", ["inception_resnet_v2", pytest.param("inceptionresnetv2", marks=pytest.mark.slow),
                                  pytest.param("Inception_ResNet_V2", marks=pytest.mark.slow)])
def test_build_model_our_network(name):
    with torch.device("meta"):
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


def _one_training_step(model: nn.Module, size: int) -> torch.Tensor:
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    out = model(torch.randn(2, 3, size, size))
    assert type(out) is torch.Tensor, f"training forward returned {type(out).__name__}, not the logits"
    nn.functional.cross_entropy(out, torch.tensor([0, 1])).backward()
    optimizer.step()
    return out


def test_googlenet_trains_on_its_main_logits(one_thread):
    torch.manual_seed(0)
    assert _one_training_step(build_model("googlenet", 5), 75).shape == (2, 5)


@pytest.mark.slow  # about 3 s on one CPU core
def test_inception_v3_trains_on_its_main_logits(one_thread):
    torch.manual_seed(0)
    model = build_model("inception_v3", 5)
    assert model.AuxLogits is None and model.min_input_size == 75
    assert _one_training_step(model, 96).shape == (2, 5)


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("name", ["vit_b_16", "vit_l_32", "maxvit_t"])
def test_a_model_with_a_fixed_input_size_refuses_any_other(name):
    with torch.device("meta"):  # the attributes, without initialising ~100M parameters
        model = build_model(name, 5)
    assert model.fixed_input_size == 224
    for built in (model, None):  # None: the CLI's check by name, before anything is built
        with pytest.raises(ValueError, match=rf"^--model {name} takes --image-size 224 only \(got 96\)$"):
            check_input_size(name, built, 96)
        check_input_size(name, built, 224)


@pytest.mark.parametrize("name, least", [("inception_resnet_v2", 75), ("inception_v3", 75), ("alexnet", 63)])
def test_a_model_with_a_minimum_input_size_refuses_smaller(name, least):
    with torch.device("meta"):
        model = build_model(name, 5)
    assert model.min_input_size == least
    for built in (model, None):
        with pytest.raises(ValueError, match=rf"^--image-size {least - 1} is too small for --model {name}: "
                                             rf"use {least} or more$"):
            check_input_size(name, built, least - 1)
        check_input_size(name, built, least)


def test_the_minimum_of_alexnet_is_where_its_forward_starts_to_work():
    with torch.device("meta"):
        model = build_model("alexnet", 5).train()
    model(torch.empty(2, 3, 63, 63, device="meta"))
    with pytest.raises(RuntimeError):
        model(torch.empty(2, 3, 62, 62, device="meta"))


def test_models_without_limits_take_any_size():
    model = build_model("resnet18", 5)
    assert not hasattr(model, "fixed_input_size") and not hasattr(model, "min_input_size")
    check_input_size("resnet18", model, 32)
    check_input_size("resnet18", None, 32)
