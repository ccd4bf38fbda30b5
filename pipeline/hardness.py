"""The weights of NOpt's second pass: which real samples the synthetic set's own classifiers
get wrong (docs/method.md, "Reweighting the target toward the set's own errors").

The evaluation ConvNet and MLP are trained on the whole synthetic set (every class: a unit
holds only a few, so the driver gathers the first pass of all of them). Under each, a real
reference image's hardness is its log cross-entropy, standardised within its class and
clipped to +-``Z_CLIP``; its weight in the class's MMD target is exp(beta x the nets' mean).
"""
from __future__ import annotations

import io

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.evaluation import ARCHITECTURES, TrainRecipe, train_classifier
from pipeline.images import decode_image
from pipeline.samples import UnitOutput
from pipeline.seeding import derive_seed
from pipeline.tensors import to_model_space

HARDNESS_ARCHS = ("convnet", "mlp")  # both: a ConvNet's hardness alone costs the MLP
Z_CLIP = 3.0
SCORE_BATCH = 256


def synthetic_set(outputs: list[UnitOutput]) -> tuple[np.ndarray, np.ndarray]:
    """The synthetic images (uint8 [N, H, W, C]) and labels of first-pass ``outputs``, in unit
    order."""
    samples = [s for out in sorted(outputs, key=lambda o: o.unit_id) for s in out.samples
               if s.source == "synthetic"]
    images = np.stack([decode_image(s.image, s.key) for s in samples])
    return images, np.array([s.label for s in samples], dtype=np.int64)


def train_hardness_nets(images: np.ndarray, labels: np.ndarray, num_classes: int, seed: int,
                        device: str = "cpu", recipe: TrainRecipe = TrainRecipe()) -> bytes:
    """Train the hardness classifiers on the synthetic set with the evaluation's ``recipe``;
    return them serialised (their weights and shapes, loadable with
    ``torch.load(weights_only=True)``)."""
    channels, size = images.shape[3], images.shape[1]
    states = [train_classifier(images, labels, num_classes, derive_seed(seed, "hardness"), arch,
                               recipe, device).cpu().state_dict() for arch in HARDNESS_ARCHS]
    buffer = io.BytesIO()
    torch.save({"archs": list(HARDNESS_ARCHS), "channels": channels, "size": size,
                "num_classes": num_classes, "states": states}, buffer)
    return buffer.getvalue()


class HardnessNets:
    """The trained hardness classifiers, ready to weight a class's references."""

    def __init__(self, data: bytes, device: str = "cpu"):
        saved = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        self.device = device
        self.nets = []
        for arch, state in zip(saved["archs"], saved["states"]):
            net = ARCHITECTURES[arch](saved["channels"], saved["num_classes"], saved["size"])
            net.load_state_dict(state)
            self.nets.append(net.to(device).eval())

    @torch.no_grad()
    def weights(self, images: np.ndarray, label: int, beta: float) -> torch.Tensor:
        """exp(beta * z) for each of a class's real images (uint8 [N, H, W, C])."""
        z = torch.stack([_standardised(self._log_loss(net, images, label))
                         for net in self.nets]).mean(0)
        return torch.exp(beta * z)

    def _log_loss(self, net: torch.nn.Module, images: np.ndarray, label: int) -> torch.Tensor:
        losses = []
        for start in range(0, len(images), SCORE_BATCH):
            x = to_model_space(images[start:start + SCORE_BATCH]).to(self.device)
            target = torch.full((len(x),), label, dtype=torch.long, device=self.device)
            losses.append(F.cross_entropy(net(x), target, reduction="none").cpu())
        # a confidently right image's loss can round to 0: floor it before the log
        return torch.cat(losses).clamp_min(1e-12).log()


def _standardised(values: torch.Tensor) -> torch.Tensor:
    """(values - mean) / std within the class, clipped to +-Z_CLIP (0 for a single image)."""
    if len(values) < 2:
        return torch.zeros_like(values)
    return ((values - values.mean()) / values.std().clamp_min(1e-12)).clamp(-Z_CLIP, Z_CLIP)
