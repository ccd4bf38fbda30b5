"""Image encoding: uint8 arrays <-> PNG/JPEG/WebP bytes (no torch: the Coordinator, which
only writes shards, loads this and not torch; model tensors are in ``pipeline.tensors``)."""
from __future__ import annotations

import io

import numpy as np
from PIL import Image

from pipeline.errors import DscoError


def decode_image(data: bytes, name: str = "image") -> np.ndarray:
    """Decode PNG/JPEG/WebP bytes to a uint8 array of shape [H, W, C] (C = 1 or 3)."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            if img.mode.startswith("I;16"):  # 16-bit grey: PIL's convert would clip at 255
                wide = np.asarray(img).astype(np.float64)
                arr = np.round(wide / 257).astype(np.uint8)  # 65535 -> 255
            else:
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
