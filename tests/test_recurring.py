"""Recurring runs and streaming readers, end to end on a local Ray: one run at a time per
output, new input -> new run and latest moves, runs/gc, readers that follow a run while it is
written, and a driver killed with SIGKILL whose rerun finishes with identical output."""
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from cluster.cli import main
from cluster.driver import fingerprint, run_job
from pipeline.config import load_config
from pipeline.errors import DscoError
from pipeline.follow import follow_run, webdataset_of_run
from pipeline.reader import iter_samples, read_index
from pipeline.storage import read_json
from tests.conftest import RANDOM_PSI, REPO, s3_bucket
from tests.test_job_ray import FAST

pytestmark = pytest.mark.ray
DIGITS = str(REPO / "configs" / "digits.yaml")
SLOW = ["nopt.iterations=10", "nopt.ddim_steps=3", "nopt.batch_size=32", "size.ipc=2",
        "size.doping_fraction=0.5", "execution.classes_per_unit=1", "write.shard_size=50",
        RANDOM_PSI, "nopt.reweight_beta=0"]


def sets(out, prior, data, options) -> list[str]:
    return [f"output={out}", f"model.path={prior}", f"input.url={data}", *options]


def job(out, prior, data, options=FAST):
    return load_config(None, sets(out, prior, data, options))


def sample_hashes(run_url: str) -> dict[str, str]:
    out = {}
    for sample in iter_samples(run_url):
        key = sample.pop("__key__")
        out[key] = hashlib.sha256(b"".join(sample[e] for e in sorted(sample))).hexdigest()
    return out


def test_a_second_run_of_the_same_job_exits_3_naming_the_holder(ray_local, capsys, tiny_prior,
                                                                digits_dir, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    now = time.time()
    (out / "lock.json").write_text(json.dumps({
        "token": "t", "run_id": "abc", "host": "node-7", "pid": 4242, "acquired": now,
        "expires": now + 300}))
    args = [a for s in sets(out, tiny_prior, digits_dir / "train", FAST) for a in ("--set", s)]
    assert main(["--quiet", "run", DIGITS, *args]) == 3
    assert "locked by pid 4242 on node-7 (run abc)" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["lock.json"]  # nothing written


def test_new_input_makes_a_new_run_latest_moves_and_gc_keeps_what_it_must(
        ray_local, capsys, tiny_prior, digits_dir, tmp_path):
    data, out = tmp_path / "in", tmp_path / "out"
    shutil.copytree(digits_dir / "train", data)
    real_only = [*FAST, "size.doping_fraction=1.0"]  # runs and their ids are what matter here
    first = run_job(job(out, tiny_prior, data, real_only), progress=False)
    assert run_job(job(out, tiny_prior, data, real_only), progress=False).status == "up to date"
    names = json.loads((data / "classes.json").read_text())
    (data / "classes.json").write_text(json.dumps([n.upper() for n in names]))  # new data
    second = run_job(job(out, tiny_prior, data, real_only), progress=False)
    assert second.status == "complete" and second.run_id != first.run_id
    assert read_json(str(out / "latest.json"))["run_id"] == second.run_id
    abandoned = out / ("0" * 16)
    shutil.copytree(out / first.run_id, abandoned)
    index = json.loads((abandoned / "index.json").read_text())
    (abandoned / "index.json").write_text(json.dumps({**index, "complete": False}))
    writing = out / ("1" * 16)
    shutil.copytree(abandoned, writing)
    now = time.time()  # a live run (on another node) holds the lock for `writing`
    (out / "lock.json").write_text(json.dumps({
        "token": "t", "run_id": writing.name, "host": "node-7", "pid": 1, "acquired": now,
        "expires": now + 300}))
    assert main(["runs", str(out)]) == 0
    listing = capsys.readouterr().out
    assert f"{second.run_id}  complete" in listing and listing.count("latest") == 1
    assert f"{writing.name}  writing" in listing and f"{abandoned.name}  incomplete" in listing
    assert main(["follow", str(abandoned / "index.json"), "--poll", "0.1",
                 "--timeout", "0.3"]) == 2
    assert "not complete" in capsys.readouterr().err
    assert main(["follow", str(out / second.run_id / "index.json")]) == 0
    followed = capsys.readouterr().out.splitlines()
    assert len(followed) == len(read_index(str(out / second.run_id))["shards"]) == 4
    assert main(["gc", str(out), "--keep", "1", "--dry-run"]) == 0
    assert "would delete 1 run(s)" in capsys.readouterr().out  # what gc does under that lock
    assert main(["gc", str(out), "--keep", "1"]) == 0
    left = {p.name for p in out.iterdir()}
    assert second.run_id in left and writing.name in left and first.run_id not in left
    # without the lock gc deletes complete runs only: once the live run ends, the next job
    # could resume the abandoned one while it is being deleted; and it leaves the cache
    assert abandoned.name in left
    assert len(list((out / "cache").iterdir())) == 2  # the embeddings of either input
    (out / "lock.json").unlink()  # the live run has ended (it died: `writing` is abandoned)
    assert main(["gc", str(out), "--keep", "1"]) == 0
    left = {p.name for p in out.iterdir()}
    assert second.run_id in left and abandoned.name not in left
    tag = json.loads((out / second.run_id / "run_config.json").read_text())["embeddings_tag"]
    assert [p.name for p in (out / "cache").iterdir()] == [f"embeddings-{tag}.parquet"]


def test_readers_started_before_the_run_see_every_sample_once_and_end_by_themselves(
        ray_local, tiny_prior, digits_dir, tmp_path):
    from cluster.ray_reader import read_run

    cfg = job(tmp_path / "out", tiny_prior, digits_dir / "train",
              [*SLOW, "execution.actors=1"])
    run_url = str(tmp_path / "out" / fingerprint(cfg))
    rogue = Path(run_url) / "shards" / "000099.tar"  # bytes on disk that no index lists
    rogue.parent.mkdir(parents=True)
    rogue.write_bytes(b"a shard still being written")
    seen: dict[str, list] = {"follow": [], "wds": [], "ray": [], "complete_at_yield": []}

    def follow():
        for shard in follow_run(run_url, poll_s=0.1, timeout_s=300):
            seen["follow"].append(shard.name)
            seen["complete_at_yield"].append(read_index(run_url)["complete"])

    def wds_reader():
        seen["wds"] = [s["__key__"] for s in webdataset_of_run(run_url, 0.1, 300)]

    def ray_reader():
        seen["ray"] = [row["__key__"] for row in read_run(run_url, 0.1, 300).iter_rows()]

    readers = [threading.Thread(target=f) for f in (follow, wds_reader, ray_reader)]
    for reader in readers:
        reader.start()
    result = run_job(cfg, progress=False)
    for reader in readers:
        reader.join(timeout=120)
        assert not reader.is_alive(), "a reader did not end when the run completed"
    keys = sorted(sample_hashes(result.run_url))
    assert len(keys) == 20
    assert sorted(seen["wds"]) == keys and sorted(seen["ray"]) == keys  # each exactly once
    assert len(seen["follow"]) == len(set(seen["follow"])) == 10
    assert "shards/000099.tar" not in seen["follow"]
    assert not all(seen["complete_at_yield"])  # some shards arrived while the run was growing


def test_the_ray_reader_refuses_an_output_and_says_when_it_waits(tmp_path, caplog):
    from cluster.ray_reader import RunDatasource

    (tmp_path / "latest.json").write_text('{"run_id": "abc123"}')
    with pytest.raises(DscoError, match="is an output, not a run: its latest run is"):
        RunDatasource(str(tmp_path), 0.05, 0.1)
    with pytest.raises(DscoError, match="waited 0.1 s for the run .* to start"):
        RunDatasource(str(tmp_path / "not_started"), 0.05, 0.1)
    assert "waiting for the run at" in caplog.text


def start_then_signal(out_url: str, env: dict, prior, data, kill) -> tuple[str, int, str]:
    """Start `dsco run` in its own process (with its own local Ray), call ``kill(driver)``
    once a unit is committed; return the run's URL, the driver's exit code and stderr."""
    options = sets(out_url, prior, data, SLOW)
    cmd = [sys.executable, "-m", "cluster.cli", "--quiet", "run", DIGITS,
           *[a for s in options for a in ("--set", s)]]
    run_url = f"{out_url}/{fingerprint(load_config(DIGITS, options))}"
    driver = subprocess.Popen(cmd, env=env, cwd=REPO, start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            index = read_json(f"{run_url}/index.json")
            if index and len(index["units"]) >= 1:
                break
            time.sleep(0.1)
        kill(driver)
    finally:
        _, err = driver.communicate(timeout=60)
    index = read_index(run_url)
    assert 1 <= len(index["units"]) < 10 and not index["complete"], "not stopped mid-run"
    return run_url, driver.returncode, err


def test_sigterm_stops_a_run_like_ctrl_c(ray_local, tiny_prior, digits_dir, tmp_path):
    """`ray job stop`, Kubernetes and `timeout` send SIGTERM: exit 143 with the resume message
    and the lock released (ray.init's own handler exited 1 and left the lock)."""
    out = tmp_path / "out"
    _, code, err = start_then_signal(str(out), dict(os.environ), tiny_prior,
                                     digits_dir / "train",
                                     lambda driver: driver.send_signal(signal.SIGTERM))
    assert code == 143 and "terminated (SIGTERM); a run keeps its committed units" in err
    assert not (out / "lock.json").exists()


def kill_mid_run_then_resume(out_url: str, env: dict, prior, data) -> str:
    """SIGKILL `dsco run` and its local Ray once a unit is committed, then resume the same job
    on the test's own Ray; return the run's URL."""
    run_url, _, _ = start_then_signal(out_url, env, prior, data,
                                      lambda driver: os.killpg(driver.pid, signal.SIGKILL))
    cfg = load_config(DIGITS, sets(out_url, prior, data, SLOW))
    rerun = run_job(cfg, progress=False)
    assert rerun.status == "complete" and read_index(rerun.run_url)["complete"]
    return rerun.run_url


@pytest.fixture(scope="module")
def undisturbed_samples(ray_local, tiny_prior, digits_dir, tmp_path_factory) -> dict[str, str]:
    """The SLOW job run once without interruption, on local disk: what every resumed run of it,
    on any storage, must equal sample for sample."""
    out = tmp_path_factory.mktemp("undisturbed")
    return sample_hashes(run_job(job(out, tiny_prior, digits_dir / "train", SLOW),
                                 progress=False).run_url)


def test_sigkill_then_rerun_equals_an_uninterrupted_run_on_local_disk(
        undisturbed_samples, tiny_prior, digits_dir, tmp_path):
    run_url = kill_mid_run_then_resume(str(tmp_path / "out"), dict(os.environ), tiny_prior,
                                       digits_dir / "train")
    assert sample_hashes(run_url) == undisturbed_samples


def test_sigkill_then_rerun_equals_an_uninterrupted_run_on_s3(undisturbed_samples, moto_env,
                                                              tiny_prior, digits_dir):
    bucket = s3_bucket(moto_env, "recurring")
    run_url = kill_mid_run_then_resume(f"{bucket}/out", {**os.environ, **moto_env}, tiny_prior,
                                       digits_dir / "train")
    assert sample_hashes(run_url) == undisturbed_samples
