"""The embed stage at scale (Ray Data -> Parquet by class) and doping from it: the same
embeddings, the same sample bytes fetched by key, and the same run output as the in-memory
path."""
import hashlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cluster.driver import run_job
from cluster.embed import embed_with_ray_data
from pipeline.class_store import InMemoryStore, ShardedStore
from pipeline.config import DopingConfig, load_config
from pipeline.datasets import count_per_class, list_input
from pipeline.reader import iter_samples
from tests.conftest import RANDOM_PSI

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def stores(ray_local, digits_dir, tmp_path_factory):
    data = str(digits_dir / "train")
    out = str(tmp_path_factory.mktemp("embed") / "embeddings")
    stale = Path(out) / "label=0" / "from-an-attempt-that-died-before-meta.parquet"
    stale.parent.mkdir(parents=True)
    pq.write_table(pa.table({"key": ["digits_0000"], "shard": ["000000.tar"],
                             "embedding": pa.array([[0.0]], pa.list_(pa.float32()))}), stale)
    checked = []  # the driver's lock check, which must come before the stage is marked done

    def lock_check():
        checked.append(not (Path(out) / "meta.json").exists())

    meta = embed_with_ray_data(data, "webdataset", list_input(data, "webdataset"),
                               DopingConfig(encoder="random_conv"), 0, out, use_gpus=False,
                               actors=2, before_complete=lock_check)
    assert checked == [True]
    memory = InMemoryStore(data, "webdataset", "random_conv", 0,
                           str(tmp_path_factory.mktemp("cache")))
    return meta, ShardedStore(data, out), memory


def test_the_embed_stage_writes_every_sample_once_partitioned_by_class(stores, digits_dir):
    # (over the files of an attempt that died before its meta.json: those are gone)
    meta, sharded, memory = stores
    assert meta["class_sizes"] == count_per_class(str(digits_dir / "train"), "webdataset")
    assert sharded.class_names == memory.class_names
    for label in (0, 7):
        assert sharded.embeddings(label).shape == memory.embeddings(label).shape
        assert np.allclose(sharded.embeddings(label), memory.embeddings(label), atol=1e-4)


def test_sample_bytes_are_fetched_by_key_from_the_input_shards(stores):
    _, sharded, memory = stores
    picks = [0, 5, 3]
    assert sharded.samples(4, picks) == memory.samples(4, picks)
    assert np.array_equal(sharded.images(4), memory.images(4))


def test_a_run_doped_from_the_embed_stage_equals_the_in_memory_run(ray_local, tiny_prior,
                                                                   digits_dir, tmp_path):
    def run(embed):
        cfg = load_config(None, [f"output={tmp_path / embed}", f"model.path={tiny_prior}",
                                 f"input.url={digits_dir / 'train'}", "nopt.iterations=2",
                                 "nopt.ddim_steps=2", "size.ipc=4", "size.doping_fraction=0.5",
                                 "execution.classes_per_unit=5", f"doping.embed={embed}",
                                 "nopt.reweight_beta=0", RANDOM_PSI])
        result = run_job(cfg, progress=False)
        return {s["__key__"]: hashlib.sha256(s["png"]).hexdigest()
                for s in iter_samples(result.run_url)}

    memory, sharded = run("memory"), run("ray_data")
    assert len(memory) == 40 and sharded == memory


def test_shards_out_of_class_order_are_pointed_out(caplog):
    from cluster.embed import _warn_if_classes_are_spread

    shards = [f"{n:06d}.tar" for n in range(20)]
    in_order = {c: set(shards[2 * c:2 * c + 3]) for c in range(10)}  # a shard shared at ends
    _warn_if_classes_are_spread(in_order, len(shards))
    many_per_shard = {c: {shards[c // 50]} for c in range(1000)}  # 1000 classes in 20 shards
    _warn_if_classes_are_spread(many_per_shard, len(shards))
    assert not caplog.records
    shuffled = {c: set(shards) for c in range(10)}  # every class in every shard
    _warn_if_classes_are_spread(shuffled, len(shards))
    assert "not in class order: fetching each class's samples reads 200 shards where shards " \
        "in class order would need at most 30 (the input has 20)" in caplog.text


def test_an_input_shard_damaged_after_embedding_fails_its_units_not_the_driver(
        ray_local, tiny_prior, digits_dir, tmp_path, monkeypatch):
    # the references are read from the input shards when a unit starts: a shard damaged
    # since the embed stage makes those units fail (and retry), reported with the shard's name
    import shutil

    from cluster import embed
    from pipeline.datasets import input_samples_in_tar
    from pipeline.errors import JobFailed

    data = tmp_path / "train"
    shutil.copytree(digits_dir / "train", data)
    shards = sorted(p.name for p in data.glob("*.tar"))
    holding = {s: input_samples_in_tar((data / s).read_bytes(), s) for s in shards}
    first_zero = min(key for s in shards for key, label, _, _ in holding[s] if label == 0)
    # the DopingSelector's prepare reads class 0's first image: damage another shard
    damaged = next(s for s in reversed(shards)
                   if all(key != first_zero for key, *_ in holding[s]))
    embed_stage = embed.embed_with_ray_data

    def embed_then_damage(*args, **kwargs):
        meta = embed_stage(*args, **kwargs)
        (data / damaged).write_bytes(b"garbage" * 100)
        return meta

    monkeypatch.setattr(embed, "embed_with_ray_data", embed_then_damage)
    cfg = load_config(None, [f"output={tmp_path / 'out'}", f"model.path={tiny_prior}",
                             f"input.url={data}", "nopt.iterations=1", "nopt.ddim_steps=2",
                             "size.ipc=2", "execution.classes_per_unit=5",
                             "execution.max_retries=1", "doping.embed=ray_data",
                             "nopt.reweight_beta=0", RANDOM_PSI])
    with pytest.raises(JobFailed, match=f"work unit.*failed after 1 retries.*input shard "
                                        f"'{damaged}' is not a readable tar"):
        run_job(cfg, progress=False)


def test_a_key_held_by_two_input_shards_is_refused_before_the_stage_completes(ray_local,
                                                                              tmp_path):
    from pipeline.errors import DscoError
    from pipeline.images import encode_png
    from pipeline.tarfiles import build_tar

    data = tmp_path / "input"
    data.mkdir()
    for shard, keys in (("000000.tar", ["a", "b"]), ("000001.tar", ["b", "c"])):
        (data / shard).write_bytes(build_tar(
            [m for i, key in enumerate(keys)
             for m in ((f"{key}.png", encode_png(np.full((8, 8, 1), 40 * i, np.uint8))),
                       (f"{key}.cls", str(i).encode()))]))
    out = tmp_path / "embeddings"
    with pytest.raises(DscoError, match="has the sample key 'b' more than once"):
        embed_with_ray_data(str(data), "webdataset", list_input(str(data), "webdataset"),
                            DopingConfig(encoder="random_conv"), 0, str(out), use_gpus=False,
                            actors=1)
    assert not (out / "meta.json").exists()
