"""scikit-learn's bundled digits as WebDataset shards: the project's reference dataset.

Split: sample i of ``load_digits()`` is test when ``i % 5 == 0``, else train (1437 / 360).
Encoding: 8x8 grayscale PNG, pixel = round(v * 255 / 16) for the original v in 0..16.
"""
from __future__ import annotations

import numpy as np
from sklearn.datasets import load_digits

from pipeline.images import encode_png
from pipeline.storage import join, read_bytes, write_bytes, write_json
from pipeline.tarfiles import build_tar

SHARD_SIZE = 500
CLASS_NAMES = [str(d) for d in range(10)]


def digits_arrays() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return (indices, uint8 images [N, 8, 8, 1], labels) of all 1797 digits, encoded."""
    digits = load_digits()
    pixels = np.rint(digits.images * 255.0 / 16.0).astype(np.uint8)
    return np.arange(len(pixels)), pixels[:, :, :, None], digits.target.astype(np.int64)


def split_of(index: int) -> str:
    """The fixed split of sample ``index``."""
    return "test" if index % 5 == 0 else "train"


def prepare_digits(out_url: str) -> dict[str, int]:
    """Write ``out/train`` and ``out/test`` shards; unchanged files are not rewritten.

    Returns the number of samples per split.
    """
    indices, images, labels = digits_arrays()
    counts = {}
    for split in ("train", "test"):
        chosen = [i for i in indices if split_of(i) == split]
        counts[split] = len(chosen)
        for shard_no, start in enumerate(range(0, len(chosen), SHARD_SIZE)):
            members = []
            for i in chosen[start:start + SHARD_SIZE]:
                key = f"digits_{i:04d}"
                members += [(f"{key}.png", encode_png(images[i])),
                            (f"{key}.cls", str(int(labels[i])).encode())]
            _write_if_changed(join(out_url, split, f"{shard_no:06d}.tar"), build_tar(members))
        _write_if_changed(join(out_url, split, "classes.json"),
                          (str(CLASS_NAMES).replace("'", '"')).encode())
    write_json(join(out_url, "README.json"), {
        "dataset": "scikit-learn load_digits", "split": "test if i % 5 == 0 else train",
        "encoding": "8x8 grayscale PNG, round(v * 255 / 16)", "counts": counts})
    return counts


def _write_if_changed(url: str, data: bytes) -> None:
    """Keep the file (and so its mtime, which is part of run fingerprints) when identical."""
    try:
        if read_bytes(url) == data:
            return
    except FileNotFoundError:
        pass
    write_bytes(url, data)
