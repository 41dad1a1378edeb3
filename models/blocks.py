"""The paper's five building blocks (Section 2.2.1, Figures 1-5).

Every conv keeps its bias and is followed by BatchNorm2d, as the paper says ("batch normalization after
every convolutional layer"); with these choices the variants reproduce Table 2's parameter counts exactly.
Blocks return the residual sum with no final activation: the models put a ReLU after every block, so a
dense skip (V2, Alpha) can be added to a block's output before that ReLU.
"""
import torch
from torch import nn


def conv_bn(in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, groups: int = 1) -> nn.Sequential:
    """Conv (with bias, 'same' padding for odd kernels) followed by BatchNorm2d."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding=kernel_size // 2, groups=groups),
        nn.BatchNorm2d(out_channels),
    )


class SkipConn2d(nn.Sequential):
    """Projection shortcut (Figure 1): 1x1 conv with the given stride, then BN."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride),
            nn.BatchNorm2d(out_channels),
        )


class ResBlock(nn.Module):
    """Figure 2: conv3x3-BN-ReLU-conv3x3-BN plus a shortcut (identity when the channels match)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.out_channels = out_channels
        self.conv1 = conv_bn(in_channels, out_channels, 3)
        self.conv2 = conv_bn(out_channels, out_channels, 3)
        self.shortcut = nn.Identity() if in_channels == out_channels else SkipConn2d(in_channels, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(torch.relu(self.conv1(x))) + self.shortcut(x)


class FireResBlock(nn.Module):
    """Figure 3, SqueezeNet's fire module with a projection shortcut:
    squeeze 1x1-BN-ReLU, then 1x1 and 3x3 expands (each with BN) concatenated on channels."""

    def __init__(self, in_channels: int, squeeze_channels: int, expand1x1_channels: int, expand3x3_channels: int):
        super().__init__()
        self.out_channels = expand1x1_channels + expand3x3_channels
        self.squeeze = conv_bn(in_channels, squeeze_channels, 1)
        self.expand1x1 = conv_bn(squeeze_channels, expand1x1_channels, 1)
        self.expand3x3 = conv_bn(squeeze_channels, expand3x3_channels, 3)
        self.shortcut = SkipConn2d(in_channels, self.out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = torch.relu(self.squeeze(x))
        return torch.cat([self.expand1x1(s), self.expand3x3(s)], dim=1) + self.shortcut(x)


class DepthwiseResBlock(nn.Module):
    """Figure 4, MobileNet's depthwise-separable conv with a projection shortcut:
    depthwise 3x3-BN, pointwise 1x1-BN (no activation between, as the issue defines it)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.out_channels = out_channels
        self.depthwise = conv_bn(in_channels, in_channels, 3, groups=in_channels)
        self.pointwise = conv_bn(in_channels, out_channels, 1)
        self.shortcut = SkipConn2d(in_channels, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.depthwise(x)) + self.shortcut(x)


class BottleneckResBlock(nn.Module):
    """Figure 5, ResNet's bottleneck with a projection shortcut: 1x1-BN-ReLU, 3x3-BN-ReLU, 1x1-BN."""

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int):
        super().__init__()
        self.out_channels = out_channels
        self.reduce = conv_bn(in_channels, mid_channels, 1)
        self.conv = conv_bn(mid_channels, mid_channels, 3)
        self.expand = conv_bn(mid_channels, out_channels, 1)
        self.shortcut = SkipConn2d(in_channels, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.conv(torch.relu(self.reduce(x))))
        return self.expand(y) + self.shortcut(x)
