"""S: the stitching, lip and eye retargeting MLPs (Linear + ReLU stacks on keypoint vectors)."""

import torch
from torch import nn


class RetargetingMLP(nn.Module):
    """(B, input_size) -> (B, output_size) through len(hidden_sizes) ReLU layers."""

    def __init__(self, input_size: int, hidden_sizes: list[int], output_size: int):
        super().__init__()
        if not hidden_sizes:
            raise ValueError("hidden_sizes must name at least one hidden layer")
        layers: list[nn.Module] = []
        width = input_size
        for hidden in hidden_sizes:
            layers += [nn.Linear(width, hidden), nn.ReLU()]
            width = hidden
        layers.append(nn.Linear(width, output_size))
        self.input_size = input_size
        self.mlp = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 2 or x.shape[1] != self.input_size:
            raise ValueError(f"expected (B, {self.input_size}), got {tuple(x.shape)}")
        return self.mlp(x)
