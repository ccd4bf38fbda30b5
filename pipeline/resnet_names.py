"""ResNet-18/34/50 parameter names (torchvision's, and transformers' mapped onto them) and the
depth they imply: plain Python, so the driver can check a ``pretrained:`` file without torch."""
from __future__ import annotations

import re

NOT_A_RESNET = "hold no ResNet-18/34/50 in the torchvision or transformers layout"
DEPTHS = {18: ("basic", (2, 2, 2, 2)), 34: ("basic", (3, 4, 6, 3)),
          50: ("bottleneck", (3, 4, 6, 3))}
_HF_RULES = [  # transformers' ResNet names -> torchvision's
    (r"^(resnet\.)?embedder\.embedder\.convolution\.", "conv1."),
    (r"^(resnet\.)?embedder\.embedder\.normalization\.", "bn1."),
    (r"^(resnet\.)?encoder\.stages\.(\d)\.layers\.(\d+)\.shortcut\.convolution\.",
     lambda m: f"layer{int(m[2]) + 1}.{m[3]}.downsample.0."),
    (r"^(resnet\.)?encoder\.stages\.(\d)\.layers\.(\d+)\.shortcut\.normalization\.",
     lambda m: f"layer{int(m[2]) + 1}.{m[3]}.downsample.1."),
    (r"^(resnet\.)?encoder\.stages\.(\d)\.layers\.(\d+)\.layer\.(\d)\.convolution\.",
     lambda m: f"layer{int(m[2]) + 1}.{m[3]}.conv{int(m[4]) + 1}."),
    (r"^(resnet\.)?encoder\.stages\.(\d)\.layers\.(\d+)\.layer\.(\d)\.normalization\.",
     lambda m: f"layer{int(m[2]) + 1}.{m[3]}.bn{int(m[4]) + 1}."),
]


def torchvision_name(key: str) -> str | None:
    """``key`` in torchvision's naming; None for what the backbone drops (classifier heads,
    batch-norm counters)."""
    for pattern, replacement in _HF_RULES:
        new, hits = re.subn(pattern, replacement, key)
        if hits:
            key = new
            break
    if key.startswith(("fc.", "classifier.")) or "num_batches_tracked" in key:
        return None
    return key


def resnet_depth(names: list[str]) -> int | None:
    """18, 34 or 50 from torchvision-named parameters' stage sizes and block kind, else None."""
    counts = stage_sizes(names)
    bottleneck = any(k.endswith("conv3.weight") for k in names)
    return next((d for d, (kind, c) in DEPTHS.items()
                 if c == counts and (kind == "bottleneck") == bottleneck), None)


def stage_sizes(names: list[str]) -> tuple[int, ...]:
    """Blocks per stage of torchvision-named parameters (for messages)."""
    blocks = {".".join(k.split(".")[:2]) for k in names if k.startswith("layer")}
    return tuple(sum(1 for b in blocks if b.startswith(f"layer{s}.")) for s in range(1, 5))
