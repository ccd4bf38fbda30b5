"""Storage errors that no retry can fix are reported at once, with the fix."""
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.errors import DscoError
from pipeline.storage import read_json, write_json

ROOT = Path(__file__).resolve().parents[1]


def test_missing_object_store_credentials_are_named_at_once(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(HOME=str(tmp_path), AWS_EC2_METADATA_DISABLED="true",  # no instance role
               AWS_ENDPOINT_URL="http://127.0.0.1:9")  # never reached: signing fails first
    result = subprocess.run(
        [sys.executable, "-c", "from pipeline.storage import read_json\n"
                               "read_json('s3://bucket/run/index.json')"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "no object-store credentials were found" in result.stderr
    assert "AWS_ACCESS_KEY_ID" in result.stderr
    assert "after 4 tries" not in result.stderr  # failed at once, not retried


def test_a_file_where_a_folder_belongs_is_named_at_once(tmp_path):
    a_file = tmp_path / "a_file"
    a_file.write_text("not a folder")
    started = time.monotonic()
    with pytest.raises(DscoError, match="A file stands where the path needs a folder") as error:
        write_json(str(a_file / "run" / "index.json"), {})
    with pytest.raises(DscoError, match="A file stands where"):
        read_json(str(a_file / "latest.json"))
    assert "tries" not in str(error.value) and time.monotonic() - started < 1  # no retries


def test_corrupt_json_is_named_with_its_path(tmp_path):
    (tmp_path / "index.json").write_text('{"complete": tr')
    with pytest.raises(DscoError, match=r"index.json is not valid JSON .*corrupt or was cut off"):
        read_json(str(tmp_path / "index.json"))


def test_a_protocol_without_its_filesystem_says_what_to_install(monkeypatch):
    from pipeline.storage import filesystem

    def not_installed(url, **options):  # what fsspec raises for gs:// without gcsfs
        raise ImportError("Install gcsfs to access Google Storage")

    monkeypatch.setattr("fsspec.core.url_to_fs", not_installed)
    with pytest.raises(DscoError, match="its filesystem is not installed .*gs://: gcsfs"):
        filesystem("gs://bucket/runs")
