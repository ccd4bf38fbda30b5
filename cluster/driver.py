"""The job driver: fingerprint, plan, hand work units to actors, retry failures, finish.

Bulk data never passes through here: each unit's output goes from its NoiseOptimizer to the
DopingSelector and the Coordinator as object refs; the driver only sees small statuses.
"""
from __future__ import annotations

import time
from collections import Counter, deque
from dataclasses import dataclass, field

import ray
from ray.exceptions import RayActorError, RayError, RayTaskError
from tqdm.auto import tqdm

from actors.coordinator import Coordinator
from actors.doping_selector import DopingSelector
from actors.noise_optimizer import NoiseOptimizer
from cluster.actor_pool import ActorsCannotStart, OptimizerPool
from cluster.resources import connect, head_node_id, io_actor_options, optimizer_shape
from pipeline.config import JobConfig
from pipeline.class_mapping import (check_class_names_align, check_guidance, check_images_fit,
                                    check_prior_fits, data_free_classes)
from pipeline.datasets import InputFile, list_input, listed_class_names
from pipeline.errors import DscoError, JobFailed
from pipeline.lock import LockHeld, LockLost, OutputLock
from pipeline.cache_names import CACHE, embed_stage_folder, embedding_tag
from pipeline.fingerprint import file_digest, model_fingerprint, prior_files, \
    run_id as compute_run_id, without_trailing_slash
from pipeline.planning import (WorkUnit, check_selection_only, make_plan, pretrained_weights,
                               runs_second_pass)
from pipeline.prior_meta import read_prior_meta, weights_file_problem
from pipeline.runs import EMBEDDINGS_TAG, HARDNESS_NETS, RUN_CONFIG
from pipeline.samples import real_only_output
from pipeline.storage import exists, join, read_bytes, read_json, write_bytes
from pipeline.writer import latest_lags, point_latest_at


@dataclass
class JobResult:
    """What a finished (or up-to-date) job reports."""

    run_id: str
    run_url: str
    status: str  # "complete" | "up to date"
    metrics: dict = field(default_factory=dict)
    units_by_node: dict = field(default_factory=dict)  # node id -> units optimised there
    unit_spans: dict = field(default_factory=dict)  # unit id -> (start, end) of its NOpt, epoch s


def input_listing(cfg: JobConfig) -> list[InputFile]:
    """The input files a run reads (none for pure data-free runs): listed once per run, so the
    run_id and the data read agree."""
    return list_input(cfg.input.url, cfg.input.layout) if cfg.uses_real_data() else []


def fingerprint(cfg: JobConfig, listing: list[InputFile] | None = None) -> str:
    """The run_id of ``cfg`` over ``listing`` (listed now when not given) and the model files."""
    listing = input_listing(cfg) if listing is None else listing
    weights = pretrained_weights(cfg)
    for path in weights:
        problem = weights_file_problem(path)
        if problem:
            raise DscoError(f"pretrained weights {path!r} (from pretrained:<path>) {problem}; "
                            "put a readable copy of the file at that path on the driver's node "
                            "and on every node that runs the job.")
    model_rows = model_fingerprint(prior_files(cfg.model.path), cfg.model.revision, weights)
    rid = compute_run_id(cfg, listing, model_rows)
    urls = (cfg.input.url, cfg.model.path)
    if all(without_trailing_slash(u) == u for u in urls):
        return rid
    as_spelled = compute_run_id(cfg, listing, model_rows, canonical_urls=False)
    if not exists(join(cfg.output, rid, RUN_CONFIG)) \
            and exists(join(cfg.output, as_spelled, RUN_CONFIG)):
        return as_spelled  # made before trailing slashes left the id: resumed or up to date
    return rid


def run_job(cfg: JobConfig, address: str | None = None, progress: bool = True) -> JobResult:
    """Run (or resume, or skip as up to date) the concentration job described by ``cfg``."""
    started = time.time()
    check_selection_only(cfg, None)
    meta = read_prior_meta(cfg.model.path) if cfg.model.path else None
    listing = input_listing(cfg)
    rid = fingerprint(cfg, listing)
    # the prior as the run starts: every NoiseOptimizer checks its node's copy against it
    prior_digests = prior_files(cfg.model.path, file_digest)
    run_url = join(cfg.output, rid)
    index = _complete_index(run_url)
    if index and not latest_lags(cfg.output, rid, index):
        return _up_to_date(rid, run_url)
    if index:  # complete, but latest.json lags: repair it unless another run writes there
        try:
            with OutputLock(cfg.output, rid, cfg.execution.lease_seconds):
                if latest_lags(cfg.output, rid, index):
                    point_latest_at(cfg.output, rid, index)
        except LockHeld:
            pass  # that run moves latest.json itself when it completes
        return _up_to_date(rid, run_url)
    with OutputLock(cfg.output, rid, cfg.execution.lease_seconds) as lock:
        # checked again under the lock: a run that held it may have just finished this one
        if _complete_index(run_url):
            return _up_to_date(rid, run_url)
        return _run_locked(cfg, address, meta, listing, prior_digests, rid, run_url, started, lock,
                           progress)


def _embed_at_scale(cfg: JobConfig, listing: list[InputFile], tag: str,
                    lock: OutputLock) -> str:
    """Run the Ray Data embed stage (once per input, encoder and seed: ``tag``); return its
    URL."""
    # imported here: the stage fits psi in this process (torch), which other runs never load
    from cluster.embed import embed_with_ray_data

    url = join(cfg.output, CACHE, embed_stage_folder(tag))
    resources = ray.cluster_resources()
    use_gpus = cfg.execution.accelerator != "cpu" and resources.get("GPU", 0) > 0
    actors = int(resources.get("GPU", 0) if use_gpus else resources.get("CPU", 1))
    # a run whose lease lapsed while it embedded must not mark the entry complete: gc may
    # have cleared it meanwhile
    embed_with_ray_data(cfg.input.url, cfg.input.layout, listing, cfg.doping, cfg.seed, url,
                        use_gpus, actors, before_complete=lock.check)
    return url


def _complete_index(run_url: str) -> dict | None:
    """The run's index if the run is complete, else None."""
    index = read_json(join(run_url, "index.json"))
    return index if index and index.get("complete") else None


def _up_to_date(rid: str, run_url: str) -> JobResult:
    """The result of a rerun that finds its run complete."""
    return JobResult(rid, run_url, "up to date",
                     read_json(join(run_url, "report", "metrics.json")) or {})


def _run_locked(cfg: JobConfig, address: str | None, meta, listing: list[InputFile],
                prior_digests: list, rid: str, run_url: str, started: float, lock: OutputLock,
                progress: bool) -> JobResult:
    """The run itself, while this process holds the output's lock."""
    names = listed_class_names(cfg.input.url, cfg.input.layout, listing) if listing else None
    if names:  # before the input is read: a mismatch is found in seconds, not after the read
        check_class_names_align(cfg, meta, names)
    connect(address)
    io_options = io_actor_options(head_node_id())
    selector = None
    # the cache entries this run reads; recorded beside its config, so `dsco gc` keeps them
    tag = embedding_tag(listing, cfg.doping.encoder, cfg.seed) if cfg.uses_real_data() else None
    if cfg.uses_real_data():
        embeddings_url = _embed_at_scale(cfg, listing, tag, lock) \
            if cfg.doping.embed == "ray_data" else None
        selector = DopingSelector.options(**io_options).remote(
            cfg.input.url, cfg.input.layout, cfg.doping, cfg.seed, join(cfg.output, CACHE),
            listing, embeddings_url)
        summary = _get_or_raise_input_error(selector.prepare.remote())
        class_sizes, class_names = summary["class_sizes"], summary["class_names"]
        image_shape = summary["image_shape"]
        check_prior_fits(cfg, meta, len(class_sizes))
        check_class_names_align(cfg, meta, class_names)
    else:
        check_prior_fits(cfg, meta, None)
        class_names = data_free_classes(cfg, meta)
        class_sizes, image_shape = [0] * len(class_names), None
    plan = make_plan(cfg, class_sizes)
    if any(u.needs_nopt for u in plan.units):
        check_guidance(cfg, meta)
        if image_shape and not cfg.nopt.data_free:
            check_images_fit(cfg, meta, image_shape)
    # started once the input and the prior are checked: bad input leaves no run folder behind
    coordinator = Coordinator.options(**io_options).remote(
        cfg.output, rid, {**cfg.to_dict(), EMBEDDINGS_TAG: tag})
    ray.get(coordinator.start.remote(plan.num_shards))
    done = ray.get(coordinator.committed_units.remote())
    todo = [u for u in plan.units if u.unit_id not in done]
    by_node, spans = _run_units(cfg, todo, coordinator, selector, class_names, prior_digests,
                                progress, lock, _Hardness(join(run_url, HARDNESS_NETS),
                                                          plan.units))
    lock.check()
    metrics = ray.get(coordinator.finalize.remote(class_names, started))
    return JobResult(rid, run_url, "complete", metrics, dict(by_node), spans)


def _get_or_raise_input_error(ref):
    """ray.get, re-raising a DscoError from the actor as itself (a clean one-paragraph
    message for the CLI) rather than wrapped in Ray's task error."""
    try:
        return ray.get(ref)
    except RayTaskError as exc:
        if isinstance(exc.cause, DscoError):
            raise exc.cause from None
        raise


@dataclass
class _Hardness:
    """Where the run's hardness nets are saved, and every unit of its plan (the nets train
    on the first pass of all, committed or not)."""

    url: str
    plan_units: list[WorkUnit]


def _run_units(cfg: JobConfig, units: list[WorkUnit], coordinator, selector,
               class_names: list[str], prior_digests: list, progress: bool,
               lock: OutputLock, hardness: _Hardness) -> tuple[Counter, dict]:
    """Give units to free actors until all are committed or failed for good; return how many
    units each node optimised, and when each unit was optimised.

    A unit's doping and commit are submitted only once its NOpt output exists: the
    DopingSelector runs its calls in submission order, so a ``dope`` queued on an output still
    being optimised would hold back every later unit's ``references``, and with them all NOpt.
    Units whose classes are all real skip the NoiseOptimizers (a job of only such units starts
    none); they are doped once every NOpt unit has its references queued. With
    ``nopt.reweight_beta`` the hardness nets are trained first (:func:`_train_hardness`),
    unless ``hardness.url`` holds them from an earlier attempt, and every NOpt unit then
    runs its second pass before it is written.
    """
    by_node: Counter = Counter()
    spans: dict[int, tuple[float, float]] = {}
    if not units:
        return by_node, spans

    def start_actor(shape):
        return NoiseOptimizer.options(**shape.options()).remote(
            cfg.model.path, cfg.nopt, cfg.seed, class_names, shape.threads, cfg.model.class_map,
            progress, prior_digests)

    pool = OptimizerPool(
        lambda remaining: optimizer_shape(cfg.execution, ray.cluster_resources(), remaining),
        start_actor)
    pending = deque(u for u in units if u.needs_nopt)
    real_only = deque(u for u in units if not u.needs_nopt)
    running: dict = {}  # status ref -> (actor, unit, output ref)
    writing: dict = {}  # commit ref -> unit
    attempts: Counter = Counter()
    failed: dict[int, str] = {}
    optimised = tqdm(total=len(pending), desc="units optimised", unit="unit",
                     disable=not progress or not pending)
    written = tqdm(total=len(units), desc="units written", unit="unit", disable=not progress)

    def write(unit: WorkUnit, output) -> None:
        """Submit the unit's doping (where it has real samples) and its commit."""
        if selector is not None and any(b.real for b in unit.budgets):
            output = selector.dope.remote(unit, output)
        writing[coordinator.write_unit.remote(unit, output)] = unit

    try:
        first_passes, hardness_nets = {}, None
        if runs_second_pass(cfg) and pending:
            if exists(hardness.url):  # saved by an earlier attempt at this run
                hardness_nets = ray.put(read_bytes(hardness.url))
            else:
                first_passes, hardness_nets = _train_hardness(
                    cfg, hardness, pool, selector, len(class_names), lock, progress)
                todo = {u.unit_id for u in pending}  # committed units' passes only fed the nets
                first_passes = {u: ref for u, ref in first_passes.items() if u in todo}
        while pending or real_only or running or writing:
            lock.check()
            pool.top_up(len(pending) + len(running))
            while pool.has_idle() and pending:
                actor, unit = pool.lend(), pending.popleft()
                # a retry runs its first pass again: the kept one may have died with a node
                status, output = actor.run.remote(unit, _references(selector, unit, cfg),
                                                  hardness_nets,
                                                  first_passes.pop(unit.unit_id, None))
                running[status] = (actor, unit, output)
            while real_only and not pending:
                unit = real_only.popleft()
                write(unit, real_only_output(unit.unit_id, unit.labels))
            ready, _ = ray.wait(list(running) + list(writing) + pool.starting_refs(),
                                num_returns=1, timeout=pool.refresh_s)
            if not ready or pool.on_ready(ready[0]):
                continue
            ref = ready[0]
            if ref in running:
                actor, unit, output = running.pop(ref)
                try:
                    status = ray.get(ref)
                    optimised.update(int(status["ok"]))
                    by_node[status["node_id"]] += int(status["ok"])
                    spans[unit.unit_id] = status["span"]
                    pool.give_back(actor)
                except RayError as exc:  # the unit's commit fails too and is retried
                    _release(pool, actor, exc)
                write(unit, output)
                continue
            unit = writing.pop(ref)
            try:
                result = ray.get(ref)
            except RayError as exc:
                if isinstance(exc, RayActorError):
                    _require_alive(coordinator, selector)
                result = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
            if result["ok"]:
                written.update(1)
                continue
            attempts[unit.unit_id] += 1
            if attempts[unit.unit_id] <= cfg.execution.max_retries:
                (pending if unit.needs_nopt else real_only).append(unit)
            else:
                failed[unit.unit_id] = result["error"]
    except ActorsCannotStart as exc:
        raise JobFailed(f"{exc}. Committed units are kept; fix the cause and rerun the same "
                        "command to resume.") from None
    except LockLost as exc:
        raise JobFailed(str(exc)) from None
    finally:
        pool.shutdown()
        optimised.close()
        written.close()
    if failed:
        details = "; ".join(f"unit {u}: {e.splitlines()[0].rstrip('.')}"
                            for u, e in sorted(failed.items()))
        raise JobFailed(f"{len(failed)} work unit(s) failed after "
                        f"{cfg.execution.max_retries} retries: {details}. Committed units are "
                        "kept; rerun the same command to resume.")
    return by_node, spans


def _train_hardness(cfg: JobConfig, hardness: _Hardness, pool: OptimizerPool, selector,
                    num_classes: int, lock: OutputLock, progress: bool) -> tuple[dict, object]:
    """NOpt's first pass for every NOpt unit of the plan, then the hardness nets trained on
    all their synthetic images (on an idle NoiseOptimizer, whose device is free meanwhile)
    and saved at ``hardness.url``. Returns unit id -> first-pass output ref, from which the
    second pass continues, and the nets (an object ref to their bytes)."""
    units = [u for u in hardness.plan_units if u.needs_nopt]
    pending, running = deque(units), {}
    outputs: dict = {}
    attempts: Counter = Counter()
    bar = tqdm(total=len(units), desc="first pass (hardness)", unit="unit",
               disable=not progress)
    try:
        while pending or running:
            lock.check()
            pool.top_up(len(pending) + len(running))
            while pool.has_idle() and pending:
                actor, unit = pool.lend(), pending.popleft()
                status, output = actor.first_pass.remote(unit, _references(selector, unit, cfg))
                running[status] = (actor, unit, output)
            ready, _ = ray.wait(list(running) + pool.starting_refs(), num_returns=1,
                                timeout=pool.refresh_s)
            if not ready or pool.on_ready(ready[0]):
                continue
            actor, unit, output = running.pop(ready[0])
            try:
                error = ray.get(ready[0])["error"]
                pool.give_back(actor)
            except RayError as exc:
                _release(pool, actor, exc)
                _require_alive(selector)  # no retry gets references from a dead selector
                error = f"{type(exc).__name__}: {exc}"
            if error is None:
                outputs[unit.unit_id] = output
                bar.update(1)
                continue
            attempts[unit.unit_id] += 1
            if attempts[unit.unit_id] > cfg.execution.max_retries:
                raise JobFailed(f"work unit {unit.unit_id} failed after "
                                f"{cfg.execution.max_retries} retries in NOpt's first pass: "
                                f"{error.splitlines()[0].rstrip('.')}. Rerun the same command "
                                "to resume.")
            pending.append(unit)
    finally:
        bar.close()
    for _ in range(cfg.execution.max_retries + 1):
        trainer = _idle_actor(pool, lock)
        try:
            nets = ray.get(trainer.train_hardness.remote(num_classes, *outputs.values()))
            pool.give_back(trainer)
            break
        except RayError as exc:
            _release(pool, trainer, exc)
            error = f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1]}"
    else:
        raise JobFailed(f"training the hardness nets failed after {cfg.execution.max_retries} "
                        f"retries: {error.splitlines()[0]}. Rerun the same command to resume.")
    lock.check()  # a run whose lease lapsed must not write into the run folder
    write_bytes(hardness.url, nets)
    return outputs, ray.put(nets)


def _release(pool: OptimizerPool, actor, exc: RayError) -> None:
    """Return a NoiseOptimizer whose call failed with ``exc`` to the pool, or drop it if it
    died. Ray re-raises a call's failed input (a selector that died, an object lost with its
    node) as a task error of the input's type: that actor is alive, and keeps its device."""
    if isinstance(exc, RayActorError) and not isinstance(exc, RayTaskError):
        pool.drop(actor)
    else:
        pool.give_back(actor)


def _idle_actor(pool: OptimizerPool, lock: OutputLock):
    """An idle NoiseOptimizer, lent; waits for one to start when none is."""
    while not pool.has_idle():
        lock.check()
        pool.top_up(1)
        ready, _ = ray.wait(pool.starting_refs(), num_returns=1, timeout=pool.refresh_s)
        if ready:
            pool.on_ready(ready[0])
    return pool.lend()


def _require_alive(*io_actors) -> None:
    """Raise JobFailed if the Coordinator or DopingSelector died: no retry can succeed then."""
    for actor in filter(None, io_actors):
        try:
            ray.get(actor.__ray_ready__.remote(), timeout=60)
        except RayError as exc:
            raise JobFailed(f"an I/O actor of the job died ({type(exc).__name__}); committed "
                            "units are kept: rerun the same command to resume.") from None


def _references(selector, unit: WorkUnit, cfg: JobConfig):
    """The real reference images for a unit (an object ref; it resolves to the failed unit
    when the DopingSelector cannot read them), or None in data-free mode."""
    if selector is None or cfg.nopt.data_free:
        return None
    return selector.references.remote(unit)
