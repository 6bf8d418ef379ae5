"""ResNet-18 and ResNet-50 (He et al. 2016) mapping images (B, C, H, W) to pooled features (B, 512 or 2048).

`small_stem` replaces the 7×7 stride-2 stem and max-pool by a 3×3 stride-1 convolution, as SimCLR and solo-learn
do for 32×32 images: without it a 32-pixel image is 1×1 after the third stage. The last BatchNorm of each
residual branch starts at zero (Goyal et al. 2017), so every block starts as the identity.
"""

from __future__ import annotations

from torch import Tensor, nn


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, width: int, stride: int):
        super().__init__()
        cout = width * self.expansion
        self.branch = nn.Sequential(
            nn.Conv2d(cin, width, 3, stride, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
            nn.Conv2d(width, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout))
        self.shortcut = _shortcut(cin, cout, stride)

    def forward(self, x: Tensor) -> Tensor:
        return (self.branch(x) + self.shortcut(x)).relu()


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, width: int, stride: int):
        super().__init__()
        cout = width * self.expansion
        self.branch = nn.Sequential(  # stride on the 3×3 convolution (ResNet v1.5, as torchvision)
            nn.Conv2d(cin, width, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
            nn.Conv2d(width, width, 3, stride, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
            nn.Conv2d(width, cout, 1, bias=False), nn.BatchNorm2d(cout))
        self.shortcut = _shortcut(cin, cout, stride)

    def forward(self, x: Tensor) -> Tensor:
        return (self.branch(x) + self.shortcut(x)).relu()


def _shortcut(cin: int, cout: int, stride: int) -> nn.Module:
    if stride == 1 and cin == cout:
        return nn.Identity()
    return nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))


LAYOUTS = {"resnet18": (BasicBlock, (2, 2, 2, 2)), "resnet50": (Bottleneck, (3, 4, 6, 3))}


class ResNet(nn.Module):
    def __init__(self, name: str, channels: int = 3, small_stem: bool = False):
        super().__init__()
        block, counts = LAYOUTS[name]
        if small_stem:
            stem = [nn.Conv2d(channels, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True)]
        else:
            stem = [nn.Conv2d(channels, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True),
                    nn.MaxPool2d(3, 2, 1)]
        layers, cin = [], 64
        for stage, (n, width) in enumerate(zip(counts, (64, 128, 256, 512))):
            for i in range(n):
                layers.append(block(cin, width, stride=2 if stage > 0 and i == 0 else 1))
                cin = width * block.expansion
        self.stem = nn.Sequential(*stem)
        self.layers = nn.Sequential(*layers)
        self.out_dim = cin
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        for m in self.modules():
            if isinstance(m, (BasicBlock, Bottleneck)):
                nn.init.zeros_(m.branch[-1].weight)

    def forward(self, images: Tensor) -> Tensor:  # (B, C, H, W) -> (B, out_dim)
        return self.layers(self.stem(images)).mean(dim=(2, 3))
