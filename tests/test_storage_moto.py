"""Object storage against moto's S3 server on 127.0.0.1 (the fast tier)."""
import io
import json
import time

import pyarrow.parquet as pq
import pytest

from pipeline.errors import DscoError
from pipeline.reader import iter_samples, read_index
from pipeline.storage import join, read_bytes, read_json, write_bytes, write_json
from tests.conftest import s3_bucket
from tests.pipeline.test_writer import write_run


def test_bytes_and_json_round_trip(moto_env):
    bucket = s3_bucket(moto_env, "roundtrip")
    write_bytes(join(bucket, "a/b.bin"), b"\x00payload")
    assert read_bytes(join(bucket, "a/b.bin")) == b"\x00payload"
    write_json(join(bucket, "x.json"), {"k": 1})
    assert read_json(join(bucket, "x.json")) == {"k": 1}
    assert read_json(join(bucket, "missing.json")) is None


def test_a_whole_run_on_s3(moto_env):
    bucket = s3_bucket(moto_env, "runs")
    writer, plan = write_run(join(bucket, "prefix"))
    writer.finalize([str(i) for i in range(5)], started=0.0)
    run_url = join(bucket, "prefix", "run1")
    assert read_index(run_url)["complete"]
    assert len(list(iter_samples(run_url))) == plan.num_samples
    table = pq.read_table(io.BytesIO(read_bytes(join(run_url, "samples.parquet"))))
    assert table.num_rows == plan.num_samples
    assert json.loads(read_bytes(join(bucket, "prefix", "latest.json")))["run_id"] == "run1"


def test_missing_bucket_is_explained(moto_env):
    with pytest.raises(DscoError, match="'s3://no-such-bucket/x.bin'.*does not exist"):
        write_bytes("s3://no-such-bucket/x.bin", b"1")


def test_unreachable_endpoint_is_explained(moto_env, monkeypatch):
    import fsspec

    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens there
    fsspec.AbstractFileSystem.clear_instance_cache()
    monkeypatch.setattr("pipeline.storage.time.sleep", lambda s: None)
    started = time.monotonic()
    with pytest.raises(DscoError,
                       match="failed after 5 tries.*AWS_ENDPOINT_URL: http://127.0.0.1:9"):
        write_bytes("s3://bucket/x.bin", b"1")
    # our retries are the only layer: botocore's own (random backoff) took 41 s here
    assert time.monotonic() - started < 5


def test_botocore_retries_stay_the_users_to_configure(moto_env, monkeypatch):
    from pipeline.storage import filesystem

    fs, _ = filesystem("s3://bucket/a")
    assert fs.config_kwargs["retries"]["total_max_attempts"] == 1  # no retry of its own
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "3")
    fs, _ = filesystem("s3://bucket/b")
    assert "retries" not in fs.config_kwargs
    monkeypatch.delenv("AWS_MAX_ATTEMPTS")
    monkeypatch.delenv("AWS_ENDPOINT_URL")  # AWS itself keeps botocore's 5xx retries
    fs, _ = filesystem("s3://bucket/c")
    assert "retries" not in fs.config_kwargs
