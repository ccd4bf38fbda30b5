"""Judging a concentrated set: train a classifier from scratch on it alone, test on real data."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from pipeline.tensors import to_model_space
from pipeline.seeding import derive_seed


class ConvNet(nn.Module):
    """A small ConvNet (conv-norm-relu-pool x depth, then linear), sized for small images."""

    def __init__(self, channels: int, num_classes: int, size: int, width: int = 64):
        super().__init__()
        layers: list[nn.Module] = []
        depth = max(1, min(3, int(np.log2(size)) - 1))
        for i in range(depth):
            layers += [nn.Conv2d(channels if i == 0 else width, width, 3, padding=1),
                       nn.GroupNorm(width // 8, width), nn.ReLU(), nn.AvgPool2d(2)]
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(width * (size // 2 ** depth) ** 2, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(1))


class MLP(nn.Module):
    """A two-hidden-layer perceptron on raw pixels: a second, different evaluation network."""

    def __init__(self, channels: int, num_classes: int, size: int, width: int = 256):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(channels * size * size, width),
                                 nn.ReLU(), nn.Linear(width, width), nn.ReLU(),
                                 nn.Linear(width, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


ARCHITECTURES = {"convnet": ConvNet, "mlp": MLP}


@dataclass(frozen=True)
class TrainRecipe:
    """One fixed recipe for every method, so comparisons are fair: a fixed number of optimizer
    steps (full passes over sets smaller than a batch), cosine-decayed.

    The step count is set by when training on the full digits train set stops gaining, so that
    large sets are not disadvantaged (docs/method.md, "The training recipe"): 300 steps of 256
    left the full set at 97.3 % (ConvNet), 1200 steps of 128 reach 98.8 %."""

    steps: int = 1200
    batch_size: int = 128
    learning_rate: float = 1e-2
    weight_decay: float = 5e-4
    augment_shift: int = 1  # random translation in pixels (0: off)


def _augment(x: torch.Tensor, shift: int, gen: torch.Generator) -> torch.Tensor:
    if shift == 0:
        return x
    dx, dy = (int(v) for v in torch.randint(-shift, shift + 1, (2,), generator=gen))
    return torch.roll(x, shifts=(dy, dx), dims=(2, 3))


def train_classifier(images: np.ndarray, labels: np.ndarray, num_classes: int, seed: int,
                     arch: str = "convnet", recipe: TrainRecipe = TrainRecipe(),
                     device: str = "cpu") -> nn.Module:
    """Train a fresh ``arch`` network on (uint8 images [N, H, W, C], labels) only, on
    ``device`` (the returned network stays there)."""
    torch.manual_seed(derive_seed(seed, "classifier", arch))
    gen = torch.Generator().manual_seed(derive_seed(seed, "classifier-batches"))
    x = to_model_space(images)  # on the CPU: a batch at a time goes to the device
    # a copy: Ray hands read-only arrays
    y = torch.tensor(np.asarray(labels), dtype=torch.int64, device=device)
    model = ARCHITECTURES[arch](x.shape[1], num_classes, x.shape[2]).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=recipe.learning_rate,
                            weight_decay=recipe.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, recipe.steps)
    model.train()
    step = 0
    while step < recipe.steps:
        order = torch.randperm(len(x), generator=gen)
        for start in range(0, len(x), recipe.batch_size):
            if step == recipe.steps:
                break
            idx = order[start:start + recipe.batch_size]
            batch = _augment(x[idx].to(device), recipe.augment_shift, gen)
            loss = F.cross_entropy(model(batch), y[idx.to(device)])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
    return model.eval()


@torch.no_grad()
def accuracy(model: nn.Module, images: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy in percent."""
    pred = model(to_model_space(images)).argmax(1).numpy()
    return float((pred == np.asarray(labels)).mean() * 100.0)


def evaluate_set(train_images: np.ndarray, train_labels: np.ndarray, test_images: np.ndarray,
                 test_labels: np.ndarray, num_classes: int, seeds: list[int],
                 arch: str = "convnet", recipe: TrainRecipe = TrainRecipe()) -> dict:
    """Accuracy per seed plus mean and std (population std over seeds)."""
    accs = [accuracy(train_classifier(train_images, train_labels, num_classes, s, arch, recipe),
                     test_images, test_labels) for s in seeds]
    return {"accuracies": accs, "mean": float(np.mean(accs)), "std": float(np.std(accs))}
