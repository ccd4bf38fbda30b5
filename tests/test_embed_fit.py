"""psi's scales for the embed stage are fitted on samples spread over the whole listing."""
import numpy as np
import pytest

from cluster import embed
from pipeline.errors import DscoError
from pipeline.images import encode_png
from pipeline.storage import filesystem
from pipeline.tarfiles import build_tar


def test_the_scales_are_fitted_on_shards_spread_over_a_class_ordered_listing(
        tmp_path, monkeypatch):
    shards = []
    for label in range(12):  # one class per shard, as the DopingSelector wants them
        members = [(f"c{label}_{i:03d}.{ext}",
                    encode_png(np.full((4, 4, 1), label, np.uint8)) if ext == "png"
                    else str(label).encode())
                   for i in range(50) for ext in ("png", "cls")]
        shards.append(f"{label:06d}.tar")
        (tmp_path / shards[-1]).write_bytes(build_tar(members))
    monkeypatch.setattr(embed, "FIT_SAMPLES", 60)
    monkeypatch.setattr(embed, "FIT_SHARDS", 6)
    fs, root = filesystem(str(tmp_path))
    samples = embed.fit_samples(fs, root, shards)
    labels = [label for _, label, _, _ in samples]
    assert labels == [label for label in (0, 2, 4, 7, 9, 11) for _ in range(10)]
    assert [key for key, _, _, _ in samples[:2]] == ["c0_000", "c0_001"]


def test_small_shards_are_topped_up_from_the_others_and_empty_ones_refused(tmp_path,
                                                                           monkeypatch):
    shards = [f"{i:06d}.tar" for i in range(10)]
    for i, shard in enumerate(shards):
        (tmp_path / shard).write_bytes(build_tar(
            [(f"s{i}_{j}.png", encode_png(np.full((4, 4, 1), i, np.uint8))) if ext == "png"
             else (f"s{i}_{j}.cls", b"0") for j in range(2) for ext in ("png", "cls")]))
    monkeypatch.setattr(embed, "FIT_SAMPLES", 9)
    monkeypatch.setattr(embed, "FIT_SHARDS", 3)  # 3 a shard from shards 0, 4, 9: 2 each
    fs, root = filesystem(str(tmp_path))
    keys = [key for key, _, _, _ in embed.fit_samples(fs, root, shards)]
    assert keys == ["s0_0", "s0_1", "s4_0", "s4_1", "s9_0", "s9_1", "s1_0", "s1_1", "s2_0",
                    "s2_1"]
    for shard in shards:
        (tmp_path / shard).write_bytes(build_tar([]))
    with pytest.raises(DscoError, match="holds no samples in its 10 shards"):
        embed.fit_samples(fs, root, shards)
