"""Small networks shared by the tests of in-network kernel labels."""

import torch
import torch.nn as nn


class ResBlockNet(nn.Module):
    """conv-bn-relu stem, one residual conv-bn block with a ReLU after the add, and a linear head: the chains
    ONNX Runtime fuses (conv-relu, conv-add-relu) in a network small enough to trace in a second."""

    def __init__(self, c: int = 16):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU())
        self.conv = nn.Sequential(nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, 4))

    def forward(self, x):
        y = self.stem(x)
        return self.head(torch.relu(self.conv(y) + y))
