"""psi trained on the run's own real data (``doping.encoder: trained_convnet``).

The evaluation ConvNet (``pipeline.evaluation``) is trained to classify the input with the
benchmark's recipe and the job seed; psi's blocks are the pixels and its last conv stage
pooled to at most 4x4. A class's samples then lie where a classifier sees them, so k-center's
farthest points are the samples that tell the class apart, not outliers of a random map
(docs/method.md, "A trained psi"). Training needs the whole labelled input in one process,
so this encoder is for data the doping actor holds in memory.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load, save

from pipeline.evaluation import ConvNet, TrainRecipe, train_classifier


class TrainedFeatures(nn.Module):
    """The conv stages of a trained ConvNet as psi: blocks = pixels + pooled last stage."""

    def __init__(self, features: nn.Sequential):
        super().__init__()
        self.features = features.eval().requires_grad_(False)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        h = self.features(x)
        return [x.flatten(1), F.adaptive_avg_pool2d(h, min(4, h.shape[-1])).flatten(1)]

    def to_bytes(self) -> bytes:
        """The weights as safetensors bytes (cached beside the embeddings)."""
        return save({k: v.contiguous() for k, v in self.features.state_dict().items()})


def train_features(images: np.ndarray, labels: np.ndarray, num_classes: int, seed: int,
                   recipe: TrainRecipe = TrainRecipe()) -> TrainedFeatures:
    """Train the ConvNet on (uint8 images [N, H, W, C], labels) with ``seed`` and the
    benchmark's ``recipe``; return psi.

    Trained on one thread, whatever the process has: a second thread changes the order of
    floating-point sums, and psi must come out the same in a Ray actor and in a script."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = train_classifier(images, labels, num_classes, seed, "convnet", recipe)
    finally:
        torch.set_num_threads(threads)
    return TrainedFeatures(model.features)


def features_from_bytes(data: bytes, channels: int, num_classes: int,
                        size: int) -> TrainedFeatures:
    """Rebuild the psi that ``TrainedFeatures.to_bytes`` saved."""
    features = ConvNet(channels, num_classes, size).features
    features.load_state_dict(load(data))
    return TrainedFeatures(features)
