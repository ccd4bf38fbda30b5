"""Joining or starting Ray, and sizing the NoiseOptimizer actors to the cluster."""
from __future__ import annotations

import os
import signal
import socket
import threading
from dataclasses import dataclass

import ray
from ray._private import services as ray_services
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from pipeline.config import ExecutionConfig
from pipeline.errors import DscoError


def connect(address: str | None) -> None:
    """Join the cluster at ``address`` (or RAY_ADDRESS); otherwise start a local Ray."""
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    caller_sigterm = signal.getsignal(signal.SIGTERM)
    if address:  # under `ray job submit` the job's own runtime_env applies; add none here
        refuse_a_dead_cluster(address)
        try:
            ray.init(address=address, log_to_driver=True)
        except ConnectionError as exc:
            raise DscoError(
                f"cannot join the Ray cluster at {address!r} ({exc}). Check the address "
                "(ray://HOST:10001 for Ray Client, HOST:6379 or `auto` on a cluster node), that "
                "the cluster is up (`ray status` there), or leave --address and RAY_ADDRESS "
                "unset to run on a local Ray.") from None
    else:
        # "local": always a fresh one, even beside a `ray start` cluster (join that with
        # --address auto)
        ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False,
                 log_to_driver=True)
    if callable(caller_sigterm) and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, caller_sigterm)  # the CLI's: ray.init put its own exit


def refuse_a_dead_cluster(address: str | None) -> None:
    """Fail at once where ``ray.init(address)`` would wait minutes for a cluster that is down.

    ``address`` as ray.init takes it: HOST:PORT, ``auto``, or None (RAY_ADDRESS, else the
    cluster the last `ray start` on this machine recorded, which outlives a cluster killed
    without `ray stop`). Ray Client (ray://) and addresses Ray cannot parse are left to Ray.
    """
    if address and address.startswith("ray://"):
        return
    try:
        gcs = ray_services.canonicalize_bootstrap_address(address)
    except Exception:  # no cluster found, or an address Ray rejects: ray.init says it well
        return
    if gcs is None:  # ray.init starts a local Ray
        return
    host, _, port = gcs.rpartition(":")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=5).close()  # IPv6
    except (OSError, ValueError) as exc:
        source = (f"the address {address!r}" if address else
                  f"RAY_ADDRESS {os.environ['RAY_ADDRESS']!r}" if os.environ.get("RAY_ADDRESS")
                  else "the record of the last `ray start` on this machine")
        raise DscoError(
            f"no Ray cluster answers at {gcs} ({exc}), where {source} points; Ray would "
            "wait minutes for it. Start that cluster (`ray start --head`), point --address or "
            "RAY_ADDRESS at a running one, or, if a cluster on this machine was killed "
            "without `ray stop`, clear its stale record with `ray stop --force` (a local Ray "
            "is then started where no address is given).") from None


# Storage settings the I/O actors need; forwarded from the driver's environment at submission
# (never written to the run config). On clusters with instance roles these are usually unset.
STORAGE_ENV_VARS = ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                    "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION", "AWS_PROFILE",
                    "AWS_REQUEST_CHECKSUM_CALCULATION", "AWS_RESPONSE_CHECKSUM_VALIDATION",
                    "AWS_MAX_ATTEMPTS", "AWS_RETRY_MODE",
                    "GOOGLE_APPLICATION_CREDENTIALS")


def head_node_id() -> str | None:
    """The id of the cluster's head node (None if Ray does not say which it is)."""
    for node in ray.nodes():
        if node["Alive"] and HEAD_NODE_RESOURCE in node["Resources"]:
            return node["NodeID"]
    return None


HEAD_NODE_RESOURCE = "node:__internal_head__"


def io_actor_options(node_id: str | None = None) -> dict:
    """Options for the Coordinator and DopingSelector: no CPU reservation (they mostly wait on
    storage, and must not starve the optimisers), no GPU, the driver's storage settings, and
    (given ``node_id``, the head's) a pin there, so that losing a worker node never takes them
    down: the head lives as long as the cluster. The pin is hard: a soft one was seen to place
    them on a worker whenever the head has no CPUs (Ray 2.60), which a node loss then killed."""
    env = {k: os.environ[k] for k in STORAGE_ENV_VARS if k in os.environ}
    options = {"num_cpus": 0, "num_gpus": 0, "runtime_env": {"env_vars": env}}
    if node_id:
        options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(node_id, soft=False)
    return options


@dataclass(frozen=True)
class ActorShape:
    """How many NoiseOptimizer actors to start and what each asks Ray for."""

    count: int
    num_cpus: float
    num_gpus: float
    threads: int

    def options(self) -> dict:
        """Keyword arguments for ``NoiseOptimizer.options``; SPREAD puts them on many nodes."""
        return {"num_cpus": self.num_cpus, "num_gpus": self.num_gpus,
                "scheduling_strategy": "SPREAD", "max_restarts": 0}


def optimizer_shape(cfg: ExecutionConfig, cluster: dict[str, float], units: int) -> ActorShape:
    """One actor per GPU (or per ``gpus_per_actor`` share) when GPUs are used, else one per
    ``cpus_per_actor`` CPUs; never more actors than work units.

    GPUs are used when ``cfg.accelerator`` is ``gpu``, or ``auto`` and the cluster has some now.
    """
    gpus = cluster.get("GPU", 0.0)
    if cfg.accelerator == "gpu" or (cfg.accelerator == "auto" and gpus > 0):
        fit = int(gpus / cfg.gpus_per_actor)
        shape = ActorShape(cfg.actors or fit, 1, cfg.gpus_per_actor, cfg.cpus_per_actor)
    else:
        fit = int(cluster.get("CPU", 1) // cfg.cpus_per_actor)
        shape = ActorShape(cfg.actors or fit, cfg.cpus_per_actor, 0, cfg.cpus_per_actor)
    return ActorShape(max(1, min(shape.count, units)), shape.num_cpus, shape.num_gpus,
                      shape.threads)
