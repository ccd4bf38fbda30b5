"""Readers of a run at its edges: a run deleted while followed, an output followed before its
first run completes, loader workers that do not inherit the training process's group, and
shards that mix image formats."""
import shutil

import numpy as np
import pytest
import torch

from pipeline.errors import DscoError
from pipeline.follow import follow_run, webdataset_of_run
from pipeline.images import encode_png
from pipeline.index import RunIndex
from pipeline.samples import Sample
from pipeline.shards import write_shard
from pipeline.storage import write_json

JPEG = b"\xff\xd8 a doped real sample's bytes, as its input had them"


def make_run(run_dir, shards: list[list[Sample]], complete: bool = True) -> str:
    """A run folder holding ``shards`` (one unit each)."""
    run_url = str(run_dir)
    write_json(f"{run_url}/run_config.json", {"run_id": run_dir.name})
    index = RunIndex(run_url, run_dir.name)
    index.set_planned_shards(len(shards) + (0 if complete else 1))
    for number, samples in enumerate(shards):
        index.commit_unit(number, [write_shard(run_url, number, number, samples)], {})
    if complete:
        index.mark_complete({})
    return run_url


def synthetic(label: int, i: int) -> Sample:
    return Sample(f"c{label:05d}_syn_{i:05d}", label, str(label), "synthetic",
                  encode_png(np.full((8, 8, 1), i, np.uint8)))


def real_jpg(label: int, i: int) -> Sample:
    return Sample(f"c{label:05d}_real_{i:05d}", label, str(label), "real", JPEG, "jpg",
                  f"input/{label}/{i}.jpg")


def test_a_run_deleted_while_followed_ends_the_follower_with_a_message(tmp_path):
    run_url = make_run(tmp_path / "r1", [[synthetic(0, 0)]], complete=False)
    shards = follow_run(run_url, poll_s=0.01, timeout_s=5)  # once said "has not started"
    assert next(shards).name == "shards/000000.tar"
    shutil.rmtree(run_url)  # `dsco gc`, or the folder removed for a rerun
    with pytest.raises(DscoError, match="was deleted while it was read"):
        next(shards)


def test_the_ray_readers_tasks_see_a_deleted_run_too(tmp_path):
    from cluster.ray_reader import _wait_for

    with pytest.raises(DscoError, match="was deleted while it was read"):
        _wait_for(str(tmp_path / "gone"), lambda index: True, 0.01, None, "to commit",
                  started=True)


def test_an_output_is_refused_before_its_first_run_completes(tmp_path):
    from pipeline.lock import OutputLock

    out = tmp_path / "out"
    with OutputLock(str(out), "abc123", 60):  # still embedding: no run folder yet
        with pytest.raises(DscoError, match="is an output, not a run: its first run is "
                                            "starting there as .*abc123"):
            next(follow_run(str(out), poll_s=0.01, timeout_s=1))
        make_run(out / "abc123", [[synthetic(0, 0)]], complete=False)
        with pytest.raises(DscoError, match="is an output, not a run: it holds the writing "
                                            "run .*abc123"):
            next(follow_run(str(out), poll_s=0.01, timeout_s=1))


def test_spawned_loader_workers_read_their_training_process_share(tmp_path, monkeypatch):
    run_url = make_run(tmp_path / "r1", [[synthetic(n, 0)] for n in range(4)])
    monkeypatch.setenv("RANK", "1")  # as torchrun sets them for the second process
    monkeypatch.setenv("WORLD_SIZE", "2")
    dataset = webdataset_of_run(run_url, 0.01, 30)
    monkeypatch.delenv("RANK")  # a spawned worker must not depend on finding them again
    loader = torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=1,
                                         multiprocessing_context="spawn")
    # shards 1 and 3 of 4: rank 1 of 2; a spawned worker that took itself for rank 0 of 1
    # would read all four, so every process would train on every sample
    assert sorted(s["__key__"] for s in loader) == ["c00001_syn_00000", "c00003_syn_00000"]


@pytest.mark.ray
def test_the_ray_reader_keeps_every_image_column_of_a_shard_that_mixes_formats(
        ray_local, tmp_path):
    from cluster.ray_reader import read_run

    run_url = make_run(tmp_path / "r1", [[synthetic(0, 0), real_jpg(0, 0)],
                                         [real_jpg(1, 0), synthetic(1, 0)]])
    rows = {row["__key__"]: row for row in read_run(run_url, 0.01, 60).iter_rows()}
    assert rows["c00000_real_00000"]["jpg"] == rows["c00001_real_00000"]["jpg"] == JPEG
    assert rows["c00000_real_00000"]["png"] is None
    assert rows["c00001_syn_00000"]["png"] is not None and rows["c00001_syn_00000"]["jpg"] is None
