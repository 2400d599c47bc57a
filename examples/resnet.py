"""A small ResNet in plain PyTorch, for `arch = "resnet.py:build"`.

A 3×3 stem to ``width`` channels, ``depth`` residual blocks of two 3×3 convolutions with
GroupNorm (batch-independent, so cells can train batched), global average pooling and a
linear classifier. lrtransfer calls ``build`` with the width, the depth and the data's sizes
(in_channels, num_classes).
"""
from torch import nn
from torch.nn import functional as F


class Block(nn.Module):
    def __init__(self, width: int, groups: int):
        super().__init__()
        self.conv1 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.norm1 = nn.GroupNorm(groups, width)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.norm2 = nn.GroupNorm(groups, width)

    def forward(self, x):
        y = F.relu(self.norm1(self.conv1(x)))
        return F.relu(x + self.norm2(self.conv2(y)))


class ResNet(nn.Module):
    def __init__(self, in_channels: int, num_classes: int, width: int, depth: int, groups: int, pool: int):
        super().__init__()
        self.pool = pool
        self.stem = nn.Conv2d(in_channels, width, 3, padding=1, bias=False)
        self.norm = nn.GroupNorm(groups, width)
        self.blocks = nn.Sequential(*(Block(width, groups) for _ in range(depth)))
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x):
        if self.pool > 1:
            x = F.avg_pool2d(x, self.pool)
        x = F.relu(self.norm(self.stem(x)))
        x = self.blocks(x)
        return self.fc(x.mean(dim=(2, 3)))


def build(width: int, depth: int, in_channels: int, num_classes: int, groups: int = 8, pool: int = 2):
    return ResNet(in_channels, num_classes, width, depth, groups, pool)
