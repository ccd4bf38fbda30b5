"""Image encoding: uint8 arrays <-> PNG bytes <-> model tensors in [-1, 1]."""
from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image

from pipeline.errors import DscoError


def decode_image(data: bytes, name: str = "image") -> np.ndarray:
    """Decode PNG/JPEG/WebP bytes to a uint8 array of shape [H, W, C] (C = 1 or 3)."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            if img.mode not in ("L", "RGB"):
                img = img.convert("RGB")
            arr = np.asarray(img, dtype=np.uint8)
    except Exception as exc:  # PIL raises many types for corrupt data
        raise DscoError(f"cannot decode {name!r} as an image ({exc}); "
                        "re-export the sample as PNG, JPEG or WebP.") from exc
    return arr[:, :, None] if arr.ndim == 2 else arr


def encode_png(array: np.ndarray) -> bytes:
    """Encode a uint8 [H, W, C] array as PNG (grayscale for C = 1)."""
    img = Image.fromarray(array[:, :, 0] if array.shape[2] == 1 else array)
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def to_model_space(images: np.ndarray) -> torch.Tensor:
    """uint8 [N, H, W, C] -> float32 [N, C, H, W] in [-1, 1]."""
    x = torch.from_numpy(np.array(images, copy=True))  # a copy: inputs may be read-only
    return x.permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """float [N, C, H, W] in [-1, 1] (clamped) -> uint8 [N, H, W, C], rounded."""
    x = images.detach().clamp(-1, 1).add(1).mul(127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()
