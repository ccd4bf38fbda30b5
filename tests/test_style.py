"""flake8 over the project (settings in setup.cfg), so style problems fail CI, not review."""
import subprocess
import sys

from tests.conftest import REPO


def test_flake8_is_clean():
    result = subprocess.run([sys.executable, "-m", "flake8", "pipeline", "actors", "cluster",
                             "tests", "benchmarks"], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
