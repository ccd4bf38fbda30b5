"""uint8 image arrays [N, H, W, C] <-> float model tensors [N, C, H, W] in [-1, 1]."""
from __future__ import annotations

import numpy as np
import torch


def to_model_space(images: np.ndarray) -> torch.Tensor:
    """uint8 [N, H, W, C] -> float32 [N, C, H, W] in [-1, 1]."""
    x = torch.from_numpy(np.array(images, copy=True))  # a copy: inputs may be read-only
    return x.permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """float [N, C, H, W] in [-1, 1] (clamped) -> uint8 [N, H, W, C], rounded."""
    x = images.detach().clamp(-1, 1).add(1).mul(127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()
