"""psi's scales for the embed stage are fitted on samples spread over the whole listing."""
import numpy as np

from cluster import embed
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
