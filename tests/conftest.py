"""Shared fixtures: a tiny seeded prior built in code, digits shards, local Ray, S3 servers."""
from __future__ import annotations

import contextlib
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.digits import prepare_digits
from pipeline.prior import save_prior
from pipeline.prior_meta import PriorMeta
from pipeline.datasets import read_dataset
from pipeline.prior_training import PriorTrainingConfig, build_unet, train_prior

REPO = Path(__file__).resolve().parents[1]
# job tests dope in a random ConvNet's psi: the default trained psi costs about 40 s of
# training a job (tests/test_job_ray.py runs the default once, on a psi it trains itself)
RANDOM_PSI = "doping.encoder=random_conv"
S3_ENV_KEYS = ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
               "AWS_DEFAULT_REGION", "AWS_REQUEST_CHECKSUM_CALCULATION",
               "AWS_RESPONSE_CHECKSUM_VALIDATION")


def make_tiny_prior(path: Path, num_classes: int = 10, size: int = 8, channels: int = 1) -> Path:
    """A randomly initialised (seeded) class-conditional UNet prior, saved like a real one."""
    torch.manual_seed(0)
    unet = build_unet(size, channels, num_classes, (8, 16))
    scheduler = {"num_train_timesteps": 1000, "beta_schedule": "squaredcos_cap_v2",
                 "timestep_spacing": "trailing"}
    meta = PriorMeta("pixel_unet", num_classes, num_classes, size, channels,
                     [str(i) for i in range(num_classes)])
    save_prior(unet, scheduler, meta, str(path))
    return path


@pytest.fixture(scope="session")
def tiny_prior(tmp_path_factory) -> Path:
    return make_tiny_prior(tmp_path_factory.mktemp("prior") / "tiny")


@pytest.fixture(scope="session")
def trained_tiny_prior(tmp_path_factory, digits_dir) -> Path:
    """The tiny prior trained for a few seconds on digits: enough structure for NOpt to act on."""
    out = tmp_path_factory.mktemp("prior") / "trained"
    data = read_dataset(str(digits_dir / "train"), "webdataset")
    train_prior(data, str(out), PriorTrainingConfig(steps=150, batch_size=64, channels=(8, 16)),
                progress=False)
    return out


@pytest.fixture(scope="session")
def tiny_dit(tmp_path_factory) -> Path:
    """A tiny random-weight DiT + VAE pipeline (32 px RGB, 10 classes) saved in the hub layout."""
    from benchmarks.dit_models import TINY, save_dit_pipeline

    return Path(save_dit_pipeline(TINY, str(tmp_path_factory.mktemp("dit") / "tiny-dit")))


@pytest.fixture(scope="session")
def digits_rgb32_dir(tmp_path_factory, digits_dir) -> Path:
    """The digits train split upsampled to 32x32 RGB, as WebDataset shards (the latent path's
    synthetic-but-real-format dataset)."""
    from PIL import Image

    from pipeline.images import encode_png
    from pipeline.tarfiles import build_tar

    data = read_dataset(str(digits_dir / "train"), "webdataset")
    out = tmp_path_factory.mktemp("digits-rgb32") / "train"
    out.mkdir()
    members = []
    for key, label, image in zip(data.keys, data.labels, data.images):
        big = Image.fromarray(image[..., 0]).resize((32, 32), Image.BILINEAR).convert("RGB")
        members += [(f"{key}.png", encode_png(np.asarray(big))), (f"{key}.cls",
                                                                  str(int(label)).encode())]
    (out / "000000.tar").write_bytes(build_tar(members))
    return out


@pytest.fixture(scope="session")
def digits_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("digits")
    prepare_digits(str(out))
    return out


@pytest.fixture(scope="module")
def ray_local():
    """A local Ray (2 CPUs, no dashboard), shared across modules until a module that needs its
    own cluster (``fresh_cluster``) shuts it down; Ray shuts it down at exit."""
    import ray

    if not ray.is_initialized():
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    return ray


@pytest.fixture
def fresh_cluster():
    """An empty ``ray.cluster_utils.Cluster`` (add nodes, then ``ray.init(cluster.address)``);
    the shared local Ray is shut down first, and everything is torn down after."""
    import ray
    from ray.cluster_utils import Cluster

    ray.shutdown()
    cluster = Cluster()
    try:
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()


def _set_env(monkeypatch, env: dict[str, str]) -> None:
    for key in S3_ENV_KEYS:
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)


@pytest.fixture(scope="session")
def moto_server():
    """moto's S3 emulator in-process on 127.0.0.1 (fast tier)."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    yield {"AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    server.stop()


@pytest.fixture(scope="session")
def radosgw_server():
    """Ceph's RADOS Gateway, a real S3 server, on 127.0.0.1 (integration tier)."""
    workdir = tempfile.mkdtemp(prefix="dsco-rgw-")
    script = REPO / "tests" / "s3" / "radosgw.sh"
    try:
        subprocess.run(["bash", str(script), "start", workdir], check=True, timeout=600)
        env = {}
        for line in (Path(workdir) / "env").read_text().splitlines():
            if line.startswith("export "):
                key, value = line[len("export "):].split("=", 1)
                env[key] = value.strip("'\"")
        yield env
    finally:
        subprocess.run(["bash", str(script), "stop", workdir], check=False, timeout=120)


def s3_bucket(env: dict[str, str], name: str) -> str:
    """Create bucket ``name`` on the server described by ``env``; return its s3:// URL."""
    import boto3

    client = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"],
                          aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                          aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
                          region_name=env.get("AWS_DEFAULT_REGION", "us-east-1"))
    try:
        client.create_bucket(Bucket=name)
    except client.exceptions.BucketAlreadyOwnedByYou:
        pass
    return f"s3://{name}"


@contextlib.contextmanager
def _storage_pointed_at(monkeypatch, env: dict[str, str]):
    """Set the S3 env vars for one test and drop fsspec's cached clients around it."""
    import fsspec

    _set_env(monkeypatch, env)
    fsspec.AbstractFileSystem.clear_instance_cache()
    yield env
    fsspec.AbstractFileSystem.clear_instance_cache()


@pytest.fixture
def moto_env(moto_server, monkeypatch):
    """Point storage at moto for one test."""
    with _storage_pointed_at(monkeypatch, moto_server) as env:
        yield env


@pytest.fixture
def radosgw_env(radosgw_server, monkeypatch):
    """Point storage at the RADOS Gateway for one test."""
    with _storage_pointed_at(monkeypatch, radosgw_server) as env:
        yield env
