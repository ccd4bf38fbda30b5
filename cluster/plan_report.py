"""`dsco plan`: the work units a run will have, the actors it will ask Ray for, and an estimate
of its device-hours from measured costs, without starting Ray or touching the output."""
from __future__ import annotations

from dataclasses import dataclass

from cluster.costs import measured_batch_limit, measured_step_cost
from cluster.resources import optimizer_shape
from pipeline.class_mapping import check_guidance, check_prior_fits
from pipeline.config import JobConfig
from pipeline.datasets import count_per_class
from pipeline.errors import DscoError
from pipeline.planning import (Plan, check_selection_only, make_plan, pretrained_weights,
                               runs_second_pass)
from pipeline.prior_meta import PriorMeta, read_prior_meta, weights_file_problem

# With checkpointing an optimisation step costs about four forward passes (forward, recompute,
# backward ~ 2); plain sampling and data-free reference images need the forward pass only.
FORWARD_SHARE = 0.25
UNITS_SHOWN = 10
UNCOSTED = "doping and writing are not included"  # no measured cost to estimate them from


@dataclass
class ClassSizes:
    """Per-class real sample counts the plan uses, and how they were obtained."""

    sizes: list[int]
    kind: str | None  # the prior's kind: from its directory, else from model.kind
    notes: list[str]
    real_known: bool = True  # False: a size.fraction of data nobody could count
    meta: PriorMeta | None = None  # the prior's metadata, where model.path is readable


# Stands in for class sizes nobody could count under a size.fraction: large enough that every
# synthetic core is full, so the synthetic side of the plan (and its cost) is exact.
UNCOUNTED = 10 ** 9


def class_sizes(cfg: JobConfig, classes: int | None, samples_per_class: int | None) -> ClassSizes:
    """Count the classes in the data if it is readable, else take their number from the prior,
    ``input.num_classes``, ``model.class_map`` or ``classes``, noting whatever is missing
    instead of failing where the plan can go on."""
    notes: list[str] = []
    meta = None
    if not cfg.model.path:
        check_selection_only(cfg, None)
        notes.append("no model (model.path is empty): a selection of real images only")
    else:
        try:
            meta = read_prior_meta(cfg.model.path)
        except DscoError as exc:
            notes.append(f"model missing: {exc}")
    kind = meta.kind if meta else (None if cfg.model.kind == "auto" else cfg.model.kind)
    if cfg.uses_real_data():
        try:
            sizes = count_per_class(cfg.input.url, cfg.input.layout)
        except DscoError as exc:
            notes.append(f"input missing: {exc}")
        else:
            if meta is not None:  # the run's own check: a mismatch fails the plan as it would
                check_prior_fits(cfg, meta, len(sizes))
            notes.append(f"class sizes counted in {cfg.input.url} ({sum(sizes)} samples)")
            return ClassSizes(sizes, kind, notes, meta=meta)
    count = next((n for n in (cfg.input.num_classes, len(cfg.model.class_map or []) or None,
                              meta.num_classes if meta else None, classes) if n), None)
    if count is None:
        raise DscoError("dsco plan cannot tell how many classes the job has: neither model.path "
                        f"({cfg.model.path!r}) nor input.url ({cfg.input.url!r}) is readable "
                        "and input.num_classes is not set. Pass --classes N (for example 1000 "
                        "for ImageNet-1K, 10 for digits), or make the data readable here (for "
                        "digits: `dsco prepare-digits --out data/digits`).")
    if not cfg.uses_real_data():
        return ClassSizes([0] * count, kind, notes, meta=meta)
    if samples_per_class is not None:
        notes.append(f"assumed {samples_per_class} real samples per class")
        return ClassSizes([samples_per_class] * count, kind, notes, meta=meta)
    if cfg.size.fraction is not None:
        notes.append("real sample counts unknown (size.fraction of data not readable here); "
                     "pass --samples-per-class N for them (ImageNet-1K averages 1281)")
        return ClassSizes([UNCOUNTED] * count, kind, notes, real_known=False, meta=meta)
    notes.append(f"assumed every class has at least size.ipc = {cfg.size.ipc} real samples")
    return ClassSizes([cfg.size.ipc] * count, kind, notes, meta=meta)


def describe_plan(cfg: JobConfig, gpus: float, cpus: float, classes: int | None = None,
                  samples_per_class: int | None = None) -> str:
    """The plan as text: sizes, units, actors and the estimate, plus what was assumed."""
    counted = class_sizes(cfg, classes, samples_per_class)
    plan = make_plan(cfg, counted.sizes)
    synthetic = sum(b.synthetic for u in plan.units for b in u.budgets)
    if synthetic and counted.meta is not None:  # the run's own check
        check_guidance(cfg, counted.meta)

    def real(count: int) -> str:
        return str(count) if counted.real_known else "?"

    shards = plan.num_shards if counted.real_known else "?"
    lines = [f"classes: {len(counted.sizes)}; samples: {real(plan.num_samples)} ({synthetic} "
             f"synthetic, {real(plan.num_samples - synthetic)} real) in {shards} shards",
             f"work units: {len(plan.units)}, up to {cfg.execution.classes_per_unit} "
             f"class{'es' if cfg.execution.classes_per_unit > 1 else ''} each"]
    lines += [f"  unit {u.unit_id}: {_span('class', 'classes', u.labels[0], u.labels[-1])}, "
              f"{sum(b.synthetic for b in u.budgets)} synthetic + "
              f"{real(sum(b.real for b in u.budgets))} real" +
              (f", {_span('shard', 'shards', u.first_shard, u.first_shard + u.num_shards - 1)}"
               if counted.real_known else "") for u in plan.units[:UNITS_SHOWN]]
    if len(plan.units) > UNITS_SHOWN:
        lines.append(f"  ... {len(plan.units) - UNITS_SHOWN} more units")
    nopt_units = sum(u.needs_nopt for u in plan.units)  # the driver starts actors for these
    shape = optimizer_shape(cfg.execution, {"GPU": gpus, "CPU": cpus}, max(1, nopt_units))
    device = "gpu" if shape.num_gpus else "cpu"
    optimizers = (f"{shape.count} NoiseOptimizer (num_gpus={shape.num_gpus}, "
                  f"num_cpus={shape.num_cpus} each; on a cluster with {gpus:g} GPUs and "
                  f"{cpus:g} CPUs; more start as nodes join), plus" if nopt_units else
                  "no NoiseOptimizer (no unit runs NOpt), only")
    io_actors = "a Coordinator and a DopingSelector" if cfg.uses_real_data() else \
        "a Coordinator (no DopingSelector: nothing real to read)"
    lines.append(f"actors: {optimizers} {io_actors} (0 CPUs, 0 GPUs, on the head)")
    lines.append(_estimate(cfg, plan, synthetic, counted.kind, device, shape.count))
    if device == "gpu" and synthetic and counted.kind is not None and cfg.nopt.checkpointing:
        lines += _memory_notes(plan, counted.kind)  # measured with checkpointing on
    if cfg.uses_real_data():
        lines.append(_doping(cfg, plan.num_samples - synthetic, counted.real_known))
    lines += [f"note: {n}" for n in counted.notes]
    if cfg.size.ipc is not None and counted.real_known and cfg.uses_real_data() \
            and counted.sizes and max(counted.sizes) < cfg.size.ipc:
        lines.append(f"note: size.ipc {cfg.size.ipc} is above every class's real samples "
                     f"(largest {max(counted.sizes)}): the set is larger than the data, and "
                     "what the real samples cannot fill is synthetic")
    if cfg.nopt.data_free and counted.real_known and not synthetic:
        lines.append("note: nopt.data_free is set, but every class's budget is real samples "
                     "(past size.crossover_ipc, or size.doping_fraction 1): no image is "
                     "generated and the real data is read; set size.synthetic_cap for a "
                     "synthetic core")
    lines += [f"note: pretrained weights {w} {problem} (a pretrained:<path> feature map); the "
              "run needs a readable copy at that path on the driver's node and every worker"
              for w in pretrained_weights(cfg) if (problem := weights_file_problem(w))]
    return "\n".join(lines)


def _memory_notes(plan: Plan, kind: str) -> list[str]:
    """A unit optimises all its synthetic images in one batch: say when the largest is at or
    past a batch the GPU benchmark saw run out of memory, or past the largest it saw fit."""
    limit = measured_batch_limit(kind)
    largest = max(sum(b.synthetic for b in u.budgets) for u in plan.units)
    if limit is None or (limit.fits is None and limit.fails is None):
        return []
    over_fits = limit.fits is not None and largest > limit.fits
    at_fails = limit.fails is not None and largest >= limit.fails
    if not (over_fits or at_fails):
        return []
    largest_class = max(b.synthetic for u in plan.units for b in u.budgets)
    most = limit.fits if limit.fits is not None else limit.fails - 1
    fix = (f"lower execution.classes_per_unit so a unit holds at most {most}"
           if largest_class <= most else f"one class's synthetic budget ({largest_class}) is "
           "more than that alone: use GPUs with more memory, or cap it with size.synthetic_cap")
    fit = (f"a {kind} batch of {limit.fits} fit ({limit.fits_gib} GiB peak)"
           if limit.fits is not None else f"no {kind} batch measured fit")
    measured = f"on an {limit.device} {fit}"
    if at_fails:
        return [f"note: a unit optimises up to {largest} synthetic images together, and "
                f"{measured} while {limit.fails} ran out of memory: {fix} (a unit that runs "
                "out of memory fails the job after its retries)"]
    return [f"note: a unit optimises up to {largest} synthetic images together, more than the "
            f"largest batch measured to fit ({measured}); if the GPUs have less memory, {fix}"]


def _span(one: str, many: str, first: int, last: int) -> str:
    """``class 3`` or ``classes 0-4``."""
    return f"{one} {first}" if first == last else f"{many} {first}-{last}"


def _doping(cfg: JobConfig, real: int, real_known: bool) -> str:
    """What doping will do: how many real samples it adds, and the psi it embeds the input in."""
    if real_known and real == 0:
        return ("doping: none (every budget is synthetic; the real data only gives NOpt its "
                "references)")
    trained = (" (trained on the whole input first, with the evaluation ConvNet's recipe)"
               if cfg.doping.encoder == "trained_convnet" else "")
    return (f"doping: {real if real_known else '?'} real samples picked by "
            f"{cfg.doping.selector} in psi = {cfg.doping.encoder}{trained}, after embedding "
            f"every real sample of the input once (doping.embed: {cfg.doping.embed})")


def _estimate(cfg: JobConfig, plan: Plan, synthetic: int, kind: str | None, device: str,
              actors: int) -> str:
    if synthetic == 0:  # real-only budgets: the prior is never run, so its kind does not matter
        return f"estimate: no NOpt (every class's budget is real samples); {UNCOSTED}"
    if kind is None:
        return ("estimate: unavailable (the prior's kind is unknown: model.path is missing; "
                "set model.kind)")
    guided = cfg.nopt.guidance != 1.0
    cost = measured_step_cost(kind, device, guided)
    if cost is None:
        return f"estimate: unavailable (no measured NOpt cost for a {kind!r} prior on {device})"
    steps = cfg.nopt.ddim_steps
    # fitting the inverted start costs what an iteration does (an upper bound: only samples
    # with a reference to invert are fitted)
    fit_steps = cfg.nopt.start_fit_steps if cfg.nopt.starts_from_references else 0
    # an inverted start part way along the sampler optimises through its last steps only
    optimised_steps = steps - cfg.nopt.first_sampler_step
    # the second pass's iterations cost what the first's do (its classifiers are left out)
    second_pass = cfg.nopt.reweight_iterations if runs_second_pass(cfg) else 0
    optimised = synthetic * (cfg.nopt.iterations + fit_steps + second_pass) * optimised_steps
    forward_only = synthetic * steps if cfg.nopt.iterations == 0 else 0
    if cfg.nopt.data_free and synthetic:
        forward_only += cfg.nopt.reference_multiplier * synthetic * steps
    # classifier-free guidance runs the network twice per step, unless measured with it
    passes = 2 if guided and not cost.guided else 1
    hours = passes * (optimised + FORWARD_SHARE * forward_only) * cost.seconds / 3600
    unit = "GPU-hours" if device == "gpu" else "CPU-slot-hours"
    return (f"estimate: {hours:.3g} {unit} of NOpt ({hours / max(1, actors):.3g} h wall on "
            f"{actors} actor(s)), at {cost.seconds:.3g} s per image-iteration-step measured on "
            f"{cost.device} ({cost.source}); {UNCOSTED}"
            + (", nor is training the second pass's classifiers" if second_pass else ""))
