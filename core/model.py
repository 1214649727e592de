"""InceptionResNetV2 as the reference code defines it, and a registry of torchvision backbones.

The architecture, module names and hyper-parameters follow Cadene's `pretrainedmodels`
`inceptionresnetv2.py` (the network the mini-WebVision papers train), so a published state_dict
with those keys loads with `strict=True`. One deliberate difference: the final pool is adaptive,
so inputs smaller than 299 px work; at 299 px the feature map is 8x8 and the result is identical.
"""

from __future__ import annotations

import torch
import torchvision
from torch import Tensor, nn

__all__ = [
    "InceptionResNetV2",
    "MIN_INPUT_SIZE",
    "available_models",
    "build_model",
    "check_input_size",
    "count_parameters",
]

# Smallest side for which every stride-2 stage still leaves a non-empty map (75 -> ... -> 1x1).
MIN_INPUT_SIZE = 75

_OUR_NAMES = ("inception_resnet_v2", "inceptionresnetv2")


class BasicConv2d(nn.Module):
    """Conv (no bias) + BN + ReLU; BN eps 1e-3 matches the TensorFlow-trained weights."""

    def __init__(self, in_planes: int, out_planes: int, kernel_size, stride=1, padding=0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(
            in_planes, out_planes, kernel_size=kernel_size, stride=stride, padding=padding, bias=False
        )
        self.bn = nn.BatchNorm2d(out_planes, eps=0.001, momentum=0.1, affine=True)
        self.relu = nn.ReLU(inplace=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.relu(self.bn(self.conv(x)))


class Mixed_5b(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.branch0 = BasicConv2d(192, 96, 1)
        self.branch1 = nn.Sequential(BasicConv2d(192, 48, 1), BasicConv2d(48, 64, 5, padding=2))
        self.branch2 = nn.Sequential(
            BasicConv2d(192, 64, 1),
            BasicConv2d(64, 96, 3, padding=1),
            BasicConv2d(96, 96, 3, padding=1),
        )
        self.branch3 = nn.Sequential(
            nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False),
            BasicConv2d(192, 64, 1),
        )

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat((self.branch0(x), self.branch1(x), self.branch2(x), self.branch3(x)), 1)


class Block35(nn.Module):
    def __init__(self, scale: float = 1.0) -> None:
        super().__init__()
        self.scale = scale
        self.branch0 = BasicConv2d(320, 32, 1)
        self.branch1 = nn.Sequential(BasicConv2d(320, 32, 1), BasicConv2d(32, 32, 3, padding=1))
        self.branch2 = nn.Sequential(
            BasicConv2d(320, 32, 1),
            BasicConv2d(32, 48, 3, padding=1),
            BasicConv2d(48, 64, 3, padding=1),
        )
        self.conv2d = nn.Conv2d(128, 320, kernel_size=1, stride=1)
        self.relu = nn.ReLU(inplace=False)

    def forward(self, x: Tensor) -> Tensor:
        out = torch.cat((self.branch0(x), self.branch1(x), self.branch2(x)), 1)
        return self.relu(self.conv2d(out) * self.scale + x)


class Mixed_6a(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.branch0 = BasicConv2d(320, 384, 3, stride=2)
        self.branch1 = nn.Sequential(
            BasicConv2d(320, 256, 1),
            BasicConv2d(256, 256, 3, padding=1),
            BasicConv2d(256, 384, 3, stride=2),
        )
        self.branch2 = nn.MaxPool2d(3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat((self.branch0(x), self.branch1(x), self.branch2(x)), 1)


class Block17(nn.Module):
    def __init__(self, scale: float = 1.0) -> None:
        super().__init__()
        self.scale = scale
        self.branch0 = BasicConv2d(1088, 192, 1)
        self.branch1 = nn.Sequential(
            BasicConv2d(1088, 128, 1),
            BasicConv2d(128, 160, (1, 7), padding=(0, 3)),
            BasicConv2d(160, 192, (7, 1), padding=(3, 0)),
        )
        self.conv2d = nn.Conv2d(384, 1088, kernel_size=1, stride=1)
        self.relu = nn.ReLU(inplace=False)

    def forward(self, x: Tensor) -> Tensor:
        out = torch.cat((self.branch0(x), self.branch1(x)), 1)
        return self.relu(self.conv2d(out) * self.scale + x)


class Mixed_7a(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.branch0 = nn.Sequential(BasicConv2d(1088, 256, 1), BasicConv2d(256, 384, 3, stride=2))
        self.branch1 = nn.Sequential(BasicConv2d(1088, 256, 1), BasicConv2d(256, 288, 3, stride=2))
        self.branch2 = nn.Sequential(
            BasicConv2d(1088, 256, 1),
            BasicConv2d(256, 288, 3, padding=1),
            BasicConv2d(288, 320, 3, stride=2),
        )
        self.branch3 = nn.MaxPool2d(3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat((self.branch0(x), self.branch1(x), self.branch2(x), self.branch3(x)), 1)


class Block8(nn.Module):
    def __init__(self, scale: float = 1.0, noReLU: bool = False) -> None:
        super().__init__()
        self.scale = scale
        self.noReLU = noReLU
        self.branch0 = BasicConv2d(2080, 192, 1)
        self.branch1 = nn.Sequential(
            BasicConv2d(2080, 192, 1),
            BasicConv2d(192, 224, (1, 3), padding=(0, 1)),
            BasicConv2d(224, 256, (3, 1), padding=(1, 0)),
        )
        self.conv2d = nn.Conv2d(448, 2080, kernel_size=1, stride=1)
        if not noReLU:
            self.relu = nn.ReLU(inplace=False)

    def forward(self, x: Tensor) -> Tensor:
        out = torch.cat((self.branch0(x), self.branch1(x)), 1)
        out = self.conv2d(out) * self.scale + x
        return out if self.noReLU else self.relu(out)


class InceptionResNetV2(nn.Module):
    """InceptionResNetV2 (Szegedy et al. 2016) for inputs of at least 75x75 pixels.

    `features(x)` returns the 1536-channel map before pooling, `logits(features)` pools and
    classifies, `forward(x)` does both.
    """

    min_input_size = MIN_INPUT_SIZE

    def __init__(self, num_classes: int = 1001) -> None:
        super().__init__()
        if int(num_classes) < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = int(num_classes)
        self.conv2d_1a = BasicConv2d(3, 32, 3, stride=2)
        self.conv2d_2a = BasicConv2d(32, 32, 3)
        self.conv2d_2b = BasicConv2d(32, 64, 3, padding=1)
        self.maxpool_3a = nn.MaxPool2d(3, stride=2)
        self.conv2d_3b = BasicConv2d(64, 80, 1)
        self.conv2d_4a = BasicConv2d(80, 192, 3)
        self.maxpool_5a = nn.MaxPool2d(3, stride=2)
        self.mixed_5b = Mixed_5b()
        self.repeat = nn.Sequential(*(Block35(scale=0.17) for _ in range(10)))
        self.mixed_6a = Mixed_6a()
        self.repeat_1 = nn.Sequential(*(Block17(scale=0.10) for _ in range(20)))
        self.mixed_7a = Mixed_7a()
        self.repeat_2 = nn.Sequential(*(Block8(scale=0.20) for _ in range(9)))
        self.block8 = Block8(noReLU=True)
        self.conv2d_7b = BasicConv2d(2080, 1536, 1)
        # Reference: AvgPool2d(8, count_include_pad=False), which needs exactly 299 px input.
        # A global average over the 8x8 map is the same number and works for any size.
        self.avgpool_1a = nn.AdaptiveAvgPool2d(1)
        self.last_linear = nn.Linear(1536, self.num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        # torchvision's ResNet recipe; pretrained weights, when loaded, replace all of it.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.01)
                nn.init.zeros_(m.bias)

    def features(self, input: Tensor) -> Tensor:
        if input.dim() != 4 or input.shape[1] != 3:
            raise ValueError(
                f"expected a batch of RGB images [N, 3, H, W], got shape {tuple(input.shape)}"
            )
        if min(input.shape[-2:]) < MIN_INPUT_SIZE:
            raise ValueError(
                f"InceptionResNetV2 needs images of at least {MIN_INPUT_SIZE}x{MIN_INPUT_SIZE} px, "
                f"got {input.shape[-2]}x{input.shape[-1]}"
            )
        x = self.conv2d_1a(input)
        x = self.conv2d_2a(x)
        x = self.conv2d_2b(x)
        x = self.maxpool_3a(x)
        x = self.conv2d_3b(x)
        x = self.conv2d_4a(x)
        x = self.maxpool_5a(x)
        x = self.mixed_5b(x)
        x = self.repeat(x)
        x = self.mixed_6a(x)
        x = self.repeat_1(x)
        x = self.mixed_7a(x)
        x = self.repeat_2(x)
        x = self.block8(x)
        return self.conv2d_7b(x)

    def logits(self, features: Tensor) -> Tensor:
        x = self.avgpool_1a(features)
        return self.last_linear(torch.flatten(x, 1))

    def forward(self, input: Tensor) -> Tensor:
        return self.logits(self.features(input))


def _torchvision_names() -> list[str]:
    # module=torchvision.models restricts the list to classification models (no detection etc.).
    return sorted(torchvision.models.list_models(module=torchvision.models))


def available_models() -> list[str]:
    """Every name `build_model` accepts: ours first, then torchvision's classification models."""
    return [_OUR_NAMES[0], *_torchvision_names()]


# Smallest input side of the torchvision classifiers that fail at the CLI's floor of 32 px,
# found by bisection with meta-tensor forwards in training mode (alexnet's pools run out at 62).
_MIN_INPUT_SIZES = {"alexnet": 63, "inception_v3": 75}
# Models whose shapes are fixed at construction: position embeddings (vit_*), attention grids (maxvit).
_FIXED_INPUT_SIZES = {"maxvit_t": 224, **{n: 224 for n in ("vit_b_16", "vit_b_32", "vit_l_16", "vit_l_32", "vit_h_14")}}
# Without weights torchvision lets these drop their auxiliary heads; with the heads they return
# a (logits, aux...) namedtuple in training, which the trainer's loss cannot take.
_NO_AUX = {"googlenet": {"aux_logits": False, "init_weights": True},
           "inception_v3": {"aux_logits": False, "init_weights": True}}


def build_model(name: str, num_classes: int) -> nn.Module:
    """A freshly initialised classifier (no pretrained weights) with `num_classes` outputs.

    Its forward returns the logits tensor in training and evaluation alike. Models with input
    size limits carry them as `min_input_size` / `fixed_input_size`; see `check_input_size`.
    """
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    if not isinstance(name, str):
        raise ValueError(f"model name must be a string, got {type(name).__name__}")
    key = name.strip().lower()
    if key in _OUR_NAMES:
        return InceptionResNetV2(num_classes=num_classes)
    tv = _torchvision_names()
    if key not in tv:
        examples = ", ".join([_OUR_NAMES[0], "resnet50", "resnet18", "efficientnet_b0", "convnext_tiny"])
        raise ValueError(
            f"unknown model {name!r}; use {examples} or another of the {len(tv) + 1} names "
            "in core.model.available_models()"
        )
    model = torchvision.models.get_model(key, weights=None, num_classes=num_classes, **_NO_AUX.get(key, {}))
    if key in _MIN_INPUT_SIZES:
        model.min_input_size = _MIN_INPUT_SIZES[key]
    fixed = getattr(model, "image_size", None) if key.startswith("vit_") else _FIXED_INPUT_SIZES.get(key)
    if fixed is not None:
        model.fixed_input_size = int(fixed)
    return model


def check_input_size(name: str, model: nn.Module | None, image_size: int) -> None:
    """ValueError (one line, in the CLI's words) when `model` cannot take `image_size` px inputs.

    Reads the model's `fixed_input_size` / `min_input_size` attributes (absent: no limit); with
    `model=None` the limits of the named model are looked up without building it.
    """
    key = name.strip().lower()
    if model is None:
        fixed = _FIXED_INPUT_SIZES.get(key)
        least = MIN_INPUT_SIZE if key in _OUR_NAMES else _MIN_INPUT_SIZES.get(key, 0)
    else:
        fixed = getattr(model, "fixed_input_size", None)
        least = getattr(model, "min_input_size", 0)
    if fixed is not None and image_size != fixed:
        raise ValueError(f"--model {name} takes --image-size {fixed} only (got {image_size})")
    if image_size < least:
        raise ValueError(f"--image-size {image_size} is too small for --model {name}: use {least} or more")


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
