"""ray_cluster.yaml passes the schema check the Ray cluster launcher itself runs."""
import copy

import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

from tests.conftest import REPO


def launcher_check(config: dict) -> None:
    validate_config(prepare_config(copy.deepcopy(config)))


def test_ray_cluster_yaml_is_valid_for_the_launcher():
    config = yaml.safe_load((REPO / "ray_cluster.yaml").read_text())
    launcher_check(config)
    workers = config["available_node_types"]["gpu_worker"]
    assert workers["min_workers"] <= workers["max_workers"]
    assert any("[gpu]" in cmd for cmd in config["setup_commands"])


def test_a_broken_cluster_file_is_rejected():
    config = yaml.safe_load((REPO / "ray_cluster.yaml").read_text())
    config["available_node_types"]["gpu_worker"]["max_workers"] = "lots"
    with pytest.raises(Exception, match="not of type 'integer'"):
        launcher_check(config)
