"""`ray job submit` against a head started with `ray start --head` on loopback: the job runs
unchanged, succeeds and writes its output; a bad config fails the job with the config error."""
import configparser
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest
import yaml
from ray._common.utils import get_ray_address_file
from ray.job_submission import JobStatus, JobSubmissionClient

from pipeline.reader import read_index
from tests.conftest import RANDOM_PSI, REPO

pytestmark = pytest.mark.ray
BIN = Path(sys.executable).parent
RAY_ENV = {"RAY_AUTH_MODE": "disabled", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
FAST = ["nopt.iterations=2", "nopt.ddim_steps=2", "size.ipc=2", "size.doping_fraction=0.5",
        RANDOM_PSI]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ray_head():
    """`ray start --head --block` in its own process group; killed with the group after."""
    env = {**os.environ, **RAY_ENV, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    dashboard, gcs = free_port(), free_port()
    cmd = [str(BIN / "ray"), "start", "--head", "--block", "--node-ip-address", "127.0.0.1",
           "--port", str(gcs), "--dashboard-host", "127.0.0.1",
           "--dashboard-port", str(dashboard), "--ray-client-server-port", str(free_port()),
           "--dashboard-agent-listen-port", str(free_port()), "--num-cpus", "2",
           "--num-gpus", "0", "--include-dashboard", "true", "--disable-usage-stats"]
    head = subprocess.Popen(cmd, env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    address = f"http://127.0.0.1:{dashboard}"
    try:
        wait_for_dashboard(address, head)
        yield address, env
    finally:
        stop_process_group(head)
        forget_the_head(gcs)


def forget_the_head(gcs_port: int) -> None:
    """Delete `ray start`'s record of the head (what `ray stop` does): left behind, it makes a
    later plain ray.init() on this machine wait minutes for the dead head."""
    record = Path(get_ray_address_file(None))
    if record.exists() and record.read_text().strip().endswith(f":{gcs_port}"):
        record.unlink()


def wait_for_dashboard(address: str, head: subprocess.Popen, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert head.poll() is None, "ray start --head exited"
        try:
            urllib.request.urlopen(f"{address}/api/version", timeout=2)
            return
        except OSError:
            time.sleep(1)
    raise TimeoutError(f"the Ray dashboard at {address} did not come up")


def stop_process_group(process: subprocess.Popen) -> None:
    """SIGTERM the group, then SIGKILL what is left after a short grace: Ray's dashboard and
    runtime-env agents outlive a SIGTERM (the test's own Ray starts with address="local", so a
    head killed hard leaves nothing it would join)."""
    for sig, grace in ((signal.SIGTERM, 3), (signal.SIGKILL, 5)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            process.poll()  # reaps the leader: a zombie would keep the group alive
            try:
                os.killpg(process.pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.2)


def example_runtime_env(tmp_path: Path) -> Path:
    """The shipped example with its pip list dropped: this machine's venv already has it."""
    runtime_env = yaml.safe_load((REPO / "cluster" / "runtime_env.yaml").read_text())
    runtime_env.pop("pip")
    path = tmp_path / "runtime_env.yaml"
    path.write_text(yaml.safe_dump(runtime_env))
    return path


def submit(address: str, env: dict, tmp_path: Path, *overrides: str) -> str:
    """Submit the digits job exactly as the README does; return the submission id."""
    job_id = f"dsco-test-{uuid.uuid4().hex[:8]}"
    sets = [arg for item in overrides for arg in ("--set", item)]
    subprocess.run([str(BIN / "ray"), "job", "submit", "--address", address, "--no-wait",
                    "--submission-id", job_id, "--working-dir", str(REPO),
                    "--runtime-env", str(example_runtime_env(tmp_path)), "--",
                    "dsco", "--quiet", "run", "configs/digits.yaml", *sets],
                   env=env, check=True, timeout=120, capture_output=True)
    return job_id


def wait_for_job(client: JobSubmissionClient, job_id: str, timeout: float = 300) -> JobStatus:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = client.get_job_status(job_id)
        if status.is_terminal():
            return status
        time.sleep(1)
    raise TimeoutError(f"job {job_id} still {status} after {timeout} s")


def test_the_digits_job_runs_unchanged_under_ray_job_submit(ray_head, tiny_prior, digits_dir,
                                                            tmp_path):
    address, env = ray_head
    out = tmp_path / "out"
    job_id = submit(address, env, tmp_path, f"output={out}", f"model.path={tiny_prior}",
                    f"input.url={digits_dir / 'train'}", *FAST)
    client = JobSubmissionClient(address)
    status = wait_for_job(client, job_id)
    logs = client.get_job_logs(job_id)
    assert status == JobStatus.SUCCEEDED, logs
    [run_dir] = [p for p in out.iterdir() if p.name not in ("cache", "latest.json")]
    index = read_index(str(run_dir))
    assert index["complete"] and index["samples"] == 20
    assert f"run {run_dir.name} complete: 20 samples" in logs
    # --quiet reaches the actors too: without it the log holds 15 bars ("NOpt unit 0 ... %|")
    assert "%|" not in logs


def test_a_bad_config_fails_the_submitted_job_with_the_config_error(ray_head, tmp_path):
    address, env = ray_head
    job_id = submit(address, env, tmp_path, f"output={tmp_path / 'out'}", "nopt.iterations=-1")
    client = JobSubmissionClient(address)
    assert wait_for_job(client, job_id) == JobStatus.FAILED
    assert "nopt.iterations must be >= 0, got -1" in client.get_job_logs(job_id)
    assert not (tmp_path / "out").exists()


def test_the_example_runtime_env_pins_the_projects_dependencies():
    setup = configparser.ConfigParser()
    setup.read(REPO / "setup.cfg")
    options = setup["options"]
    required = {r for r in options["install_requires"].split() if not r.startswith("ray")}
    required |= set(setup["options.extras_require"]["gpu"].split())
    runtime_env = yaml.safe_load((REPO / "cluster" / "runtime_env.yaml").read_text())
    assert set(runtime_env["pip"]["packages"]) == required
