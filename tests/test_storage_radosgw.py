"""The integration tier: the same storage paths against Ceph's RADOS Gateway, a real S3 server
started on 127.0.0.1 by tests/s3/radosgw.sh (which `make test` installs)."""
import os

import pytest

from cluster.driver import run_job
from pipeline.reader import iter_samples, read_index
from pipeline.storage import join, read_bytes, read_json, write_bytes
from tests.conftest import s3_bucket
from tests.test_job_ray import job

pytestmark = pytest.mark.radosgw


def test_large_object_round_trip_uses_multipart(radosgw_env):
    bucket = s3_bucket(radosgw_env, "rgw-objects")
    payload = os.urandom(12 * 2 ** 20)  # above s3fs's 5 MiB block: a multipart upload
    write_bytes(join(bucket, "big.bin"), payload)
    assert read_bytes(join(bucket, "big.bin")) == payload
    assert read_json(join(bucket, "nothing.json")) is None


def test_job_writes_a_complete_run_to_radosgw(ray_local, radosgw_env, tiny_prior, digits_dir):
    bucket = s3_bucket(radosgw_env, "rgw-runs")
    cfg = job(f"{bucket}/digits", tiny_prior, digits_dir, "size.doping_fraction=0.5")
    result = run_job(cfg, progress=False)
    index = read_index(result.run_url)
    assert index["complete"] and index["samples"] == 20
    assert len(list(iter_samples(result.run_url))) == 20
    assert read_json(join(bucket, "digits", "latest.json"))["run_id"] == result.run_id
    assert run_job(cfg, progress=False).status == "up to date"
