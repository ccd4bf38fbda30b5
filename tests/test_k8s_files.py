"""The KubeRay manifests: they parse, carry what KubeRay requires, and run a real config with
valid overrides in the image that cluster/k8s/Dockerfile builds."""
import configparser
import re
import shlex

import yaml

from cluster.cli import build_parser
from pipeline.config import load_config
from tests.conftest import REPO

K8S = REPO / "cluster" / "k8s"
IMAGE_CHECKOUT = "/home/ray/dsco/"  # where the Dockerfile puts this repository
RAYCRONJOB_SPEC_FIELDS = {"schedule", "jobTemplate", "suspend"}  # KubeRay 1.6's CRD


def manifest(name: str) -> dict:
    return yaml.safe_load((K8S / name).read_text())


def ray_pin() -> str:
    setup = configparser.ConfigParser()
    setup.read(REPO / "setup.cfg")
    [pin] = [r for r in setup["options"]["install_requires"].split() if r.startswith("ray[")]
    return pin.split("==")[1]


def check_rayjob_spec(spec: dict) -> None:
    assert spec["shutdownAfterJobFinishes"] is True
    cluster = spec["rayClusterSpec"]
    assert cluster["rayVersion"] == ray_pin()
    assert cluster["headGroupSpec"]["template"]["spec"]["containers"][0]["image"]
    [gpu_group] = cluster["workerGroupSpecs"]
    assert gpu_group["groupName"]
    assert gpu_group["minReplicas"] <= gpu_group["replicas"] <= gpu_group["maxReplicas"]
    [worker] = gpu_group["template"]["spec"]["containers"]
    assert int(worker["resources"]["limits"]["nvidia.com/gpu"]) >= 1
    check_entrypoint(spec["entrypoint"])


def check_entrypoint(entrypoint: str) -> None:
    """`dsco run CONFIG --set ...`: CONFIG exists in the image and every override is valid."""
    args = build_parser().parse_args(shlex.split(entrypoint)[1:])
    assert shlex.split(entrypoint)[0] == "dsco" and args.command == "run"
    assert args.config.startswith(IMAGE_CHECKOUT)
    config = REPO / args.config[len(IMAGE_CHECKOUT):]
    assert config.is_file(), config
    cfg = load_config(str(config), args.set)  # raises on an unknown key or a bad value
    assert cfg.output.startswith("s3://") and cfg.execution.accelerator == "gpu"


def test_rayjob_runs_a_real_config_on_a_fresh_gpu_cluster_and_shuts_it_down():
    job = manifest("rayjob.yaml")
    assert (job["apiVersion"], job["kind"]) == ("ray.io/v1", "RayJob")
    assert job["metadata"]["name"]
    check_rayjob_spec(job["spec"])


def test_raycronjob_schedules_the_same_job_with_only_fields_kuberay_1_6_knows():
    cron = manifest("raycronjob.yaml")
    assert (cron["apiVersion"], cron["kind"]) == ("ray.io/v1", "RayCronJob")
    assert set(cron["spec"]) <= RAYCRONJOB_SPEC_FIELDS
    fields = cron["spec"]["schedule"].split()
    assert len(fields) == 5 and all(re.fullmatch(r"[\d*/,-]+", f) for f in fields)
    assert cron["spec"]["jobTemplate"] == manifest("rayjob.yaml")["spec"]
    check_rayjob_spec(cron["spec"]["jobTemplate"])


def test_the_image_installs_this_checkout_where_the_manifests_expect_it():
    dockerfile = (K8S / "Dockerfile").read_text()
    assert f"FROM rayproject/ray:{ray_pin()}-py311-gpu" in dockerfile
    assert f"COPY --chown=ray:users . {IMAGE_CHECKOUT.rstrip('/')}" in dockerfile
    assert f'pip install --no-cache-dir -e "{IMAGE_CHECKOUT.rstrip("/")}[gpu]"' in dockerfile
