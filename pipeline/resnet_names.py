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


def resnet_shapes(depth: int) -> dict[str, tuple[int, ...]]:
    """Every parameter and buffer shape of torchvision's ResNet-``depth`` feature layers by
    name, so a weights file of the same names but other widths (Wide ResNet, ResNeXt) is told
    apart from its header alone."""
    kind, counts = DEPTHS[depth]
    expansion = 4 if kind == "bottleneck" else 1
    shapes = {"conv1.weight": (64, 3, 7, 7), **_batch_norm("bn1", 64)}
    inplanes = 64
    for stage, (planes, count) in enumerate(zip((64, 128, 256, 512), counts), start=1):
        out = planes * expansion
        for block in range(count):
            prefix = f"layer{stage}.{block}"
            if kind == "basic":
                convs = [(inplanes, planes, 3), (planes, out, 3)]
            else:
                convs = [(inplanes, planes, 1), (planes, planes, 3), (planes, out, 1)]
            for i, (cin, cout, k) in enumerate(convs, start=1):
                shapes[f"{prefix}.conv{i}.weight"] = (cout, cin, k, k)
                shapes.update(_batch_norm(f"{prefix}.bn{i}", cout))
            if block == 0 and (stage > 1 or inplanes != out):
                shapes[f"{prefix}.downsample.0.weight"] = (out, inplanes, 1, 1)
                shapes.update(_batch_norm(f"{prefix}.downsample.1", out))
            inplanes = out
    return shapes


def _batch_norm(prefix: str, channels: int) -> dict[str, tuple[int, ...]]:
    return {f"{prefix}.{k}": (channels,)
            for k in ("weight", "bias", "running_mean", "running_var")}


def misshapen_tensor(depth: int, shapes: dict[str, tuple[int, ...]]) -> str | None:
    """Why torchvision-named ``shapes`` do not fit ResNet-``depth`` (the first tensor whose
    shape differs), or None."""
    expected = resnet_shapes(depth)
    for name, shape in shapes.items():
        if name in expected and tuple(shape) != expected[name]:
            return (f"hold {name} of shape {list(shape)} where ResNet-{depth} has "
                    f"{list(expected[name])} (a wider or grouped variant such as Wide ResNet "
                    "or ResNeXt, which the feature map does not support)")
    return None


def stage_sizes(names: list[str]) -> tuple[int, ...]:
    """Blocks per stage of torchvision-named parameters (for messages)."""
    blocks = {".".join(k.split(".")[:2]) for k in names if k.startswith("layer")}
    return tuple(sum(1 for b in blocks if b.startswith(f"layer{s}.")) for s in range(1, 5))
