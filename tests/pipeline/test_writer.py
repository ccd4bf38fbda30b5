import hashlib
import io
import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from pipeline.config import load_config
from pipeline.errors import DscoError
from pipeline.images import encode_png
from pipeline.planning import make_plan
from pipeline.reader import iter_samples, read_index
from pipeline.samples import Sample, UnitOutput, real_key, synthetic_key
from pipeline.storage import join, read_bytes
from pipeline.writer import RunWriter


def unit_output(unit) -> UnitOutput:
    out = UnitOutput(unit.unit_id)
    for b in unit.budgets:
        for i in range(b.synthetic):
            out.samples.append(Sample(synthetic_key(b.label, i), b.label, str(b.label),
                                      "synthetic", encode_png(np.full((8, 8, 1), i, np.uint8))))
        for r in range(b.real):
            out.samples.append(Sample(real_key(b.label, r), b.label, str(b.label), "real",
                                      encode_png(np.full((8, 8, 1), 99, np.uint8)),
                                      origin=f"digits_{r:04d}"))
        out.metrics[str(b.label)] = {"final_mmd": 0.1, "loss_history": [0.5, 0.1]}
    return out


def new_run(output: str):
    """A writer for a 5-class run (3 per class, 1 doped) and its plan of 3 units."""
    cfg = load_config(None, ["output=o", "model.path=m", "input.url=d", "size.ipc=3",
                             "size.doping_fraction=0.34", "execution.classes_per_unit=2",
                             "write.shard_size=4"])
    plan = make_plan(cfg, [20] * 5)
    return RunWriter(output, "run1", cfg.to_dict()), plan


def write_run(output: str):
    writer, plan = new_run(output)
    for unit in plan.units:
        writer.write_unit(unit, unit_output(unit))
    return writer, plan


@pytest.fixture
def finished_run(tmp_path):
    writer, plan = write_run(str(tmp_path))
    writer.finalize([str(i) for i in range(5)], started=0.0)
    return join(str(tmp_path), "run1"), plan


def test_units_commit_in_any_order_with_a_generation_each(tmp_path):
    writer, plan = new_run(str(tmp_path))
    for unit in reversed(plan.units):
        writer.write_unit(unit, unit_output(unit))
        index = read_index(join(str(tmp_path), "run1"))
        assert not index["complete"]
    assert index["generation"] == 3
    assert [s["name"] for s in index["shards"]] == \
        [f"shards/{i:06d}.tar" for i in range(plan.num_shards)]
    assert writer.committed_units() == {0, 1, 2}
    first = json.loads((tmp_path / "run1" / "indexes" / "000001.json").read_text())
    assert [s["unit"] for s in first["shards"]] == [2]  # the immutable copy of generation 1


def test_a_resumed_run_never_rewrites_a_generations_copy_and_clears_cut_off_files(tmp_path):
    writer, plan = new_run(str(tmp_path))
    writer.write_unit(plan.units[0], unit_output(plan.units[0]))
    copies = tmp_path / "run1" / "indexes"
    # a writer that died after writing the copy of generation 2, before index.json
    orphan = json.dumps({"generation": 2, "units": {"0": {}, "1": {}}})
    (copies / "000002.json").write_text(orphan)
    cut_off = tmp_path / "run1" / "shards" / "000004.tar.partial-0a1b2c3d"
    cut_off.write_bytes(b"half a shard")  # and one killed while writing a shard
    resumed, _ = new_run(str(tmp_path))
    assert not cut_off.exists()
    resumed.write_unit(plan.units[2], unit_output(plan.units[2]))
    assert (copies / "000002.json").read_text() == orphan
    assert read_index(join(str(tmp_path), "run1"))["generation"] == 3
    assert sorted(json.loads((copies / "000003.json").read_text())["units"]) == ["0", "2"]


def test_a_writer_killed_before_its_first_index_json_leaves_its_copy_alone(tmp_path):
    writer, plan = new_run(str(tmp_path))
    writer.start(plan.num_shards)
    run = tmp_path / "run1"
    (run / "index.json").unlink()  # killed between generation 1's copy and index.json
    first_copy = (run / "indexes" / "000001.json").read_text()
    resumed, _ = new_run(str(tmp_path))
    resumed.start(plan.num_shards)
    assert (run / "indexes" / "000001.json").read_text() == first_copy
    assert read_index(str(run))["generation"] == 2


def test_finished_run_has_the_design_layout(finished_run, tmp_path):
    run_url, plan = finished_run
    index = read_index(run_url)
    assert index["complete"] and index["samples"] == plan.num_samples
    for entry in index["shards"]:
        data = read_bytes(join(run_url, entry["name"]))
        assert hashlib.sha256(data).hexdigest() == entry["sha256"] and len(data) == entry["bytes"]
        sidecar = json.loads(read_bytes(join(run_url, entry["name"][:-4] + ".json")))
        assert sidecar["sha256"] == entry["sha256"] and sidecar["nsamples"] == entry["nsamples"]
    table = pq.read_table(io.BytesIO(read_bytes(join(run_url, "samples.parquet"))))
    assert table.num_rows == plan.num_samples
    assert set(table.column("source").to_pylist()) == {"synthetic", "real"}
    for name in ("run_config.json", "report/metrics.json", "report/report.md", "report/grid.png"):
        assert (tmp_path / "run1" / name).is_file(), name
    assert json.loads((tmp_path / "latest.json").read_text())["run_id"] == "run1"
    assert "secret" not in (tmp_path / "run1" / "run_config.json").read_text().lower()


def test_the_grid_reads_only_the_shards_holding_each_classes_first_images(
        tmp_path, monkeypatch):
    import pipeline.writer
    from pipeline.reader import image_of
    from pipeline.report import GRID_COLUMNS

    cfg = load_config(None, ["output=o", "model.path=m", "input.url=d",
                             f"size.ipc={2 * GRID_COLUMNS}", "size.doping_fraction=0.5",
                             "execution.classes_per_unit=2", "write.shard_size=5"])
    plan = make_plan(cfg, [40] * 5)
    writer = RunWriter(str(tmp_path), "run1", cfg.to_dict())
    for unit in plan.units:
        writer.write_unit(unit, unit_output(unit))
    read, grids = [], []
    verified = pipeline.writer.verified_shard
    monkeypatch.setattr(pipeline.writer, "verified_shard",
                        lambda url, entry: read.append(entry["name"]) or verified(url, entry))
    monkeypatch.setattr(pipeline.writer, "write_report",
                        lambda url, metrics, rows: grids.append(rows))
    writer.finalize([str(i) for i in range(5)], started=0.0)
    expected = [[] for _ in range(5)]
    for sample in iter_samples(join(str(tmp_path), "run1")):
        if len(expected[int(sample["cls"])]) < GRID_COLUMNS:
            expected[int(sample["cls"])].append(image_of(sample))
    assert grids == [expected]  # the first images of every class, as a full scan finds them
    assert len(read) == 10 < plan.num_shards == 20  # two shards a class, not the whole run


def test_samples_carry_png_cls_and_json(finished_run):
    run_url, _ = finished_run
    samples = list(iter_samples(run_url))
    real = next(s for s in samples if b'"real"' in s["json"])
    meta = json.loads(real["json"])
    assert meta == {"label": int(real["cls"]), "class_name": str(meta["label"]),
                    "source": "real", "origin": meta["origin"]}
    assert meta["origin"].startswith("digits_")
    assert all(s["png"].startswith(b"\x89PNG") for s in samples)
    table = pq.read_table(f"{run_url}/samples.parquet").to_pylist()
    synthetic = [row["origin"] for row in table if row["source"] == "synthetic"]
    assert synthetic and set(synthetic) == {None}  # null, as in each sample's json


def test_reader_refuses_a_modified_shard(finished_run, tmp_path):
    run_url, _ = finished_run
    shard = tmp_path / "run1" / "shards" / "000000.tar"
    shard.write_bytes(shard.read_bytes()[:-512] + b"\0" * 512 + b"x")
    with pytest.raises(DscoError, match="does not match its index"):
        list(iter_samples(run_url))


def test_a_shard_deleted_from_a_run_is_named(finished_run, tmp_path):
    run_url, _ = finished_run
    (tmp_path / "run1" / "shards" / "000001.tar").unlink()
    with pytest.raises(DscoError, match="shard shards/000001.tar is listed in the index .* but "
                                        "missing"):
        list(iter_samples(run_url))


def test_reading_a_run_that_is_not_complete_takes_partial(tmp_path):
    writer, plan = new_run(str(tmp_path))
    writer.start(plan.num_shards)
    writer.write_unit(plan.units[0], unit_output(plan.units[0]))
    run_url = join(str(tmp_path), "run1")
    with pytest.raises(DscoError, match=f"is not complete \\(2 of {plan.num_shards} shards"):
        list(iter_samples(run_url))
    assert len(list(iter_samples(run_url, partial=True))) == plan.units[0].num_samples


def test_dataloader_workers_and_training_processes_each_read_their_own_shards(finished_run):
    import webdataset as wds

    from pipeline.follow import webdataset_of_run

    run_url, plan = finished_run
    keys = sorted(s["__key__"] for s in iter_samples(run_url))
    loader = wds.WebLoader(webdataset_of_run(run_url, 0.01, 30), batch_size=None,
                           num_workers=2)
    assert sorted(s["__key__"] for s in loader) == keys  # each sample once, not once a worker
    ranks = [[s["__key__"] for s in webdataset_of_run(run_url, 0.01, 30, rank, 2)]
             for rank in (0, 1)]
    assert ranks[0] and ranks[1] and sorted(ranks[0] + ranks[1]) == keys


def test_writes_are_byte_identical_across_runs(tmp_path):
    write_run(str(tmp_path / "a"))
    write_run(str(tmp_path / "b"))
    for i in range(3):
        name = f"run1/shards/{i:06d}.tar"
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
