"""DenseNet-121 in plain torch, laid out like Keras' `keras.applications.DenseNet121`.

torchvision cannot be installed beside this CPU torch, and the default triage model is a Keras DenseNet-121,
so the network is written here with Keras' padding and layer order, and `keras_layers()` names each weighted
layer as Keras does so a .keras file maps onto it one to one.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

GROWTH = 32
BLOCKS = (6, 12, 24, 16)
BOTTLENECK = 4  # the 1x1 conv of each dense layer widens to BOTTLENECK * GROWTH channels
COMPRESSION = 0.5  # a transition keeps this fraction of the channels
KERAS_BN_EPSILON = 1.001e-5  # Keras' DenseNet value, not torch's 1e-5: it matters at 1e-4 in probability


class _DenseLayer(nn.Module):
    """Keras `conv_block`: BN-ReLU-1x1 conv, BN-ReLU-3x3 conv, its GROWTH new channels appended to the input."""

    def __init__(self, channels: int, eps: float) -> None:
        super().__init__()
        width = BOTTLENECK * GROWTH
        self.bn0 = nn.BatchNorm2d(channels, eps=eps)
        self.conv1 = nn.Conv2d(channels, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width, eps=eps)
        self.conv2 = nn.Conv2d(width, GROWTH, 3, padding=1, bias=False)  # Keras 'same' at stride 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv1(F.relu(self.bn0(x)))
        y = self.conv2(F.relu(self.bn1(y)))
        return torch.cat([x, y], dim=1)  # Keras concatenates [input, new]


class _Transition(nn.Module):
    """Keras `transition_block`: BN-ReLU-1x1 conv to half the channels, 2x2 average pool."""

    def __init__(self, channels: int, eps: float) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(channels, eps=eps)
        self.conv = nn.Conv2d(channels, int(channels * COMPRESSION), 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(self.conv(F.relu(self.bn(x))), 2)


class DenseNet121(nn.Module):
    """DenseNet-121 with global average pooling and a dropout + dense head; returns logits (softmax is the caller's).

    Input is NCHW float32, already normalised the way the weights were trained.
    """

    def __init__(self, num_classes: int, dropout: float = 0.0, eps: float = KERAS_BN_EPSILON) -> None:
        super().__init__()
        # Keras: ZeroPadding2D(3) then a 'valid' 7x7/2 conv, which is exactly torch's zero padding=3.
        self.conv1_conv = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.conv1_bn = nn.BatchNorm2d(64, eps=eps)
        stages: list[tuple[str, nn.Module]] = []
        channels = 64
        for i, n_layers in enumerate(BLOCKS):
            stage = i + 2  # Keras numbers the dense blocks conv2..conv5 and the transitions pool2..pool4
            block = nn.Sequential()
            for j in range(n_layers):
                block.add_module(f"block{j + 1}", _DenseLayer(channels, eps))
                channels += GROWTH
            stages.append((f"conv{stage}", block))
            if i < len(BLOCKS) - 1:
                stages.append((f"pool{stage}", _Transition(channels, eps)))
                channels = int(channels * COMPRESSION)
        self.features = nn.Sequential()
        for name, module in stages:
            self.features.add_module(name, module)
        self.bn = nn.BatchNorm2d(channels, eps=eps)
        self.dropout = nn.Dropout(dropout)
        self.dense = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv1_bn(self.conv1_conv(x)))
        # Keras: ZeroPadding2D(1) then a 'valid' 3x3/2 max pool. Padding with zeros (not torch's -inf) is the
        # Keras behaviour; written out so it stays exact even if the input could be negative.
        x = F.max_pool2d(F.pad(x, (1, 1, 1, 1)), 3, stride=2)
        x = F.relu(self.bn(self.features(x)))
        return self.dense(self.dropout(x.mean(dim=(2, 3))))

    def keras_layers(self) -> dict[str, nn.Module]:
        """Every weighted layer under its Keras DenseNet121 name (`conv3_block2_1_conv`, `pool4_bn`, `dense`, ...)."""
        layers: dict[str, nn.Module] = {"conv1_conv": self.conv1_conv, "conv1_bn": self.conv1_bn}
        for stage_name, stage in self.features.named_children():
            if isinstance(stage, _Transition):
                layers |= {f"{stage_name}_bn": stage.bn, f"{stage_name}_conv": stage.conv}
                continue
            for block_name, block in stage.named_children():
                prefix = f"{stage_name}_{block_name}"
                layers |= {
                    f"{prefix}_0_bn": block.bn0,
                    f"{prefix}_1_conv": block.conv1,
                    f"{prefix}_1_bn": block.bn1,
                    f"{prefix}_2_conv": block.conv2,
                }
        return layers | {"bn": self.bn, "dense": self.dense}
