"""Small architectures that train in seconds on 2 CPU cores.

Each factory takes ``input_shape=(C, H, W)`` (or ``(features,)`` for the MLP on points) and
``num_classes``; spatial sizes adapt, so the same names work on 8×8 digits, 28×28 MNIST and
32×32 CIFAR images. The final layer is always an ``nn.Linear`` named ``fc`` (or the last entry of
``classifier``): feature-geometry analyses read its class weight vectors.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from workbench.errors import ParameterError
from workbench.models.registry import register_model


def _image_shape(input_shape, name):
    if len(input_shape) != 3:
        raise ParameterError(
            f"{name} needs image inputs shaped (channels, height, width), got {input_shape}; "
            "use 'mlp' for flat feature vectors"
        )
    return input_shape


@register_model("mlp")
class MLP(nn.Module):
    """Fully connected ReLU network on flattened inputs (``hidden`` widths)."""

    def __init__(self, input_shape, num_classes, hidden=(128, 64)):
        super().__init__()
        dims = [math.prod(input_shape), *hidden]
        layers: list[nn.Module] = [nn.Flatten()]
        for d_in, d_out in zip(dims[:-1], dims[1:]):
            layers += [nn.Linear(d_in, d_out), nn.ReLU()]
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(dims[-1], num_classes)

    def forward(self, x):
        return self.fc(self.features(x))


@register_model("lenet5")
class LeNet5(nn.Module):
    """LeNet-5 style CNN: two 5×5 conv + max-pool stages, then 120-84-classes."""

    def __init__(self, input_shape, num_classes, channels=(6, 16)):
        super().__init__()
        c, h, w = _image_shape(input_shape, "lenet5")
        c1, c2 = channels
        self.features = nn.Sequential(
            nn.Conv2d(c, c1, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(),
        )
        flat = c2 * (h // 4) * (w // 4)
        self.classifier = nn.Sequential(
            nn.Linear(flat, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(),
        )
        self.fc = nn.Linear(84, num_classes)

    def forward(self, x):
        return self.fc(self.classifier(self.features(x)))


@register_model("vgg_small")
class VGGSmall(nn.Module):
    """VGG-style CNN with BatchNorm: (conv-BN-ReLU)×2 + max-pool per stage, global average pool."""

    def __init__(self, input_shape, num_classes, widths=(16, 32, 64)):
        super().__init__()
        c, h, w = _image_shape(input_shape, "vgg_small")
        layers: list[nn.Module] = []
        for i, width in enumerate(widths):
            layers += [nn.Conv2d(c, width, 3, padding=1, bias=False), nn.BatchNorm2d(width),
                       nn.ReLU(),
                       nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width),
                       nn.ReLU()]
            if min(h, w) >= 2 and i < len(widths) - 1:
                layers.append(nn.MaxPool2d(2))
                h, w = h // 2, w // 2
            c = width
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(c, num_classes)

    def forward(self, x):
        return self.fc(self.features(x))


class BasicBlock(nn.Module):
    """ResNet basic block: conv-BN-ReLU-conv-BN plus identity or 1×1 projection shortcut."""

    def __init__(self, c_in, c_out, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False),
                                          nn.BatchNorm2d(c_out))
        self.relu2 = nn.ReLU()

    def forward(self, x):
        out = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        return self.relu2(out + self.shortcut(x))


@register_model("resnet_small")
class ResNetSmall(nn.Module):
    """A small ResNet: stem, one basic block per stage (strides 1, 2, 2), global average pool."""

    def __init__(self, input_shape, num_classes, widths=(16, 32, 64)):
        super().__init__()
        c, _, _ = _image_shape(input_shape, "resnet_small")
        self.stem = nn.Sequential(nn.Conv2d(c, widths[0], 3, padding=1, bias=False),
                                  nn.BatchNorm2d(widths[0]), nn.ReLU())
        blocks, c_in = [], widths[0]
        for i, width in enumerate(widths):
            blocks.append(BasicBlock(c_in, width, stride=1 if i == 0 else 2))
            c_in = width
        self.layers = nn.Sequential(*blocks)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(c_in, num_classes)

    def forward(self, x):
        return self.fc(self.pool(self.layers(self.stem(x))))




__all__ = ["MLP", "LeNet5", "VGGSmall", "ResNetSmall", "BasicBlock"]
