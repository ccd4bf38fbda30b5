"""`dsco runs` / `dsco gc`: what counts as a run, and what gc may delete."""
import json
import os
from datetime import datetime, timezone

import pytest

from cluster.cli import main
from pipeline.errors import DscoError
from pipeline.runs import Collected, gc, list_runs


def make_run(out, run_id, complete, updated=None, **recorded):
    run = out / run_id
    run.mkdir(parents=True)
    (run / "run_config.json").write_text(json.dumps({"run_id": run_id, **recorded}))
    if updated is not None:
        (run / "index.json").write_text(json.dumps({
            "complete": complete, "updated": updated,
            "shards": [{"nsamples": 10, "bytes": 1000}]}))


@pytest.fixture
def output(tmp_path):
    """An output as a user keeps it: runs beside a prior, data and a cache."""
    out = tmp_path / "out"
    make_run(out, "a_old", True, "2026-12-01T00:00:00Z")
    make_run(out, "b_latest", True, "2026-12-03T00:00:00Z")
    make_run(out, "c_abandoned", False, "2026-12-02T00:00:00Z")
    make_run(out, "d_to_resume", False, "2026-12-04T00:00:00Z")
    make_run(out, "e_nothing_committed", False)
    (out / "latest.json").write_text(json.dumps({"run_id": "b_latest"}))
    for folder in ("prior/unet", "data/train", "cache"):
        (out / folder).mkdir(parents=True)
        (out / folder / "file").write_text("keep me")
    return out


def test_only_folders_with_a_run_config_are_runs(output):
    assert {r.run_id for r in list_runs(str(output))} == {
        "a_old", "b_latest", "c_abandoned", "d_to_resume", "e_nothing_committed"}


def test_gc_deletes_old_complete_and_abandoned_runs_only(output, capsys):
    assert main(["gc", str(output), "--keep", "0"]) == 0
    assert "deleted 3 run(s)" in capsys.readouterr().out
    assert sorted(p.name for p in output.iterdir()) == [
        "b_latest", "cache", "d_to_resume", "data", "latest.json", "prior"]
    assert (output / "prior" / "unet" / "file").read_text() == "keep me"


def test_gc_of_a_folder_without_runs_touches_nothing(output):
    parent = output.parent  # one level too high: the output itself is not a run
    assert gc(str(parent), keep=0) == Collected()
    assert sorted(p.name for p in parent.iterdir()) == ["out"]
    assert gc(str(output / "data"), keep=0) == Collected() and (output / "data" / "train").exists()


def test_gc_refuses_a_negative_keep(output):
    with pytest.raises(DscoError, match="--keep must be 0 or more.*got -1"):
        gc(str(output), keep=-1)
    assert len(list_runs(str(output))) == 5


def test_a_damaged_index_is_listed_and_left_while_the_other_runs_are_collected(output, capsys):
    (output / "a_old" / "index.json").write_text('{"complete": true, "upd')  # cut off
    states = {r.run_id: r.state for r in list_runs(str(output))}
    assert states["a_old"] == "damaged" and states["b_latest"] == "complete"
    assert main(["runs", str(output)]) == 0
    assert "a_old  damaged" in capsys.readouterr().out
    assert {r.run_id for r in gc(str(output), keep=0).runs} == \
        {"c_abandoned", "e_nothing_committed"}
    assert (output / "a_old").is_dir()


def test_a_dry_run_takes_no_lock(output, monkeypatch):
    class NoLock:
        def __init__(self, *args):
            raise AssertionError("a dry run must only read")

    monkeypatch.setattr("pipeline.runs.OutputLock", NoLock)
    assert {r.run_id for r in gc(str(output), keep=0, dry_run=True).runs} == \
        {"a_old", "c_abandoned", "e_nothing_committed"}
    assert len(list_runs(str(output))) == 5


def test_gc_deletes_the_cache_entries_no_run_left_reads(tmp_path, capsys):
    out = tmp_path / "out"
    old, new, free, retry = "0" * 16, "1" * 16, "f" * 16, "e" * 16
    make_run(out, "a_old", True, "2026-12-01T00:00:00Z", embeddings_tag=old)
    make_run(out, "b_latest", True, "2026-12-03T00:00:00Z", embeddings_tag=new)
    make_run(out, "c_data_free", True, "2026-12-02T00:00:00Z", embeddings_tag=None)
    (out / "latest.json").write_text(json.dumps({"run_id": "b_latest"}))
    cache = out / "cache"
    (cache / f"embeddings-{old}").mkdir(parents=True)  # the embed stage's folder
    (cache / f"embeddings-{free}").mkdir(parents=True)  # one that never finished
    entries = [f"embeddings-{old}/meta.json", f"embeddings-{old}.parquet",
               f"encoder-{old}.safetensors", f"embeddings-{new}.parquet",
               f"encoder-{free}.safetensors", "notes.txt"]
    written = datetime(2026, 11, 20, tzinfo=timezone.utc).timestamp()  # before every run
    for name in entries:
        (cache / name).write_text("x")
        os.utime(cache / name, (written, written))
    # written after the newest complete run: a run that stopped before its folder existed
    (cache / f"embeddings-{retry}.parquet").write_text("x")
    assert main(["gc", str(out), "--keep", "1", "--dry-run"]) == 0
    assert "would delete cache/embeddings-0000000000000000.parquet" in capsys.readouterr().out
    assert len(list(cache.iterdir())) == 8
    assert gc(str(out), keep=1).cache == [f"embeddings-{old}", f"embeddings-{old}.parquet",
                                          f"encoder-{old}.safetensors",
                                          f"encoder-{free}.safetensors"]
    assert sorted(p.name for p in cache.iterdir()) == sorted([
        f"embeddings-{retry}.parquet", f"embeddings-{free}", f"embeddings-{new}.parquet",
        "notes.txt"])


def test_gc_keeps_the_whole_cache_while_a_run_left_has_no_record(output):
    (output / "cache" / f"embeddings-{'0' * 16}.parquet").write_text("x")
    assert gc(str(output), keep=0).cache == []  # the fixture's runs recorded no tag
    assert (output / "cache" / f"embeddings-{'0' * 16}.parquet").exists()


def test_gc_leaves_the_live_runs_own_run_even_once_it_reads_complete(output):
    from pipeline.lock import OutputLock

    # a_old's driver has marked it complete and not yet moved latest.json to it
    with OutputLock(str(output), "a_old", 60):
        assert gc(str(output), keep=0).runs == []  # incomplete runs wait for the lock too
    assert (output / "a_old").is_dir()
