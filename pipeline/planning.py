"""Planning: per-class budgets (synthetic core + doped real remainder) and work units."""
from __future__ import annotations

from dataclasses import dataclass, field

from pipeline.config import PRETRAINED, JobConfig
from pipeline.errors import DscoError


@dataclass(frozen=True)
class ClassBudget:
    """How many synthetic and real images class ``label`` gets."""

    label: int
    synthetic: int
    real: int


@dataclass(frozen=True)
class WorkUnit:
    """A few classes optimised together by one actor; its shards have fixed numbers."""

    unit_id: int
    budgets: tuple[ClassBudget, ...]
    first_shard: int
    num_shards: int

    @property
    def labels(self) -> list[int]:
        return [b.label for b in self.budgets]

    @property
    def num_samples(self) -> int:
        return sum(b.synthetic + b.real for b in self.budgets)

    @property
    def needs_nopt(self) -> bool:
        """Whether any class of the unit has synthetic images to optimise."""
        return any(b.synthetic for b in self.budgets)


@dataclass
class Plan:
    """Every work unit of a run, in order."""

    units: list[WorkUnit] = field(default_factory=list)

    @property
    def num_shards(self) -> int:
        return sum(u.num_shards for u in self.units)

    @property
    def num_samples(self) -> int:
        return sum(u.num_samples for u in self.units)


def class_budgets(cfg: JobConfig, class_sizes: list[int]) -> list[ClassBudget]:
    """Split each class's budget into a synthetic core and a real remainder.

    ``class_sizes`` are the real sample counts per class (all zero in pure data-free mode).
    First ``doping_fraction`` of the budget goes to real samples; then the synthetic core is
    capped by ``synthetic_cap`` if set, else dropped to zero when the budget exceeds
    ``crossover_ipc``. The real part never exceeds what the class has; whatever it cannot
    fill stays synthetic, so the budget always holds (pure data-free runs are all synthetic).
    """
    size = cfg.size
    budgets = []
    for label, available in enumerate(class_sizes):
        total = size.ipc if size.ipc is not None else max(1, round(size.fraction * available))
        synthetic = total - round(size.doping_fraction * total)
        if size.synthetic_cap is not None:
            synthetic = min(synthetic, size.synthetic_cap)
        elif size.crossover_ipc is not None and total > size.crossover_ipc:
            synthetic = 0
        real = min(total - synthetic, available)
        budgets.append(ClassBudget(label, total - real, real))
    return budgets


def check_selection_only(cfg: JobConfig, class_sizes: list[int] | None) -> None:
    """Without a prior (``model.path`` empty) a run can only select real images: raise naming
    the first class whose budget still holds synthetic ones. ``class_sizes`` None checks a
    class with all the real images it could want (before the data is counted)."""
    if cfg.model.path:
        return
    sizes = class_sizes if class_sizes is not None else [10 ** 9]
    for budget, available in zip(class_budgets(cfg, sizes), sizes):
        if budget.synthetic:
            which = ("every class" if class_sizes is None else
                     f"class {budget.label} (it has {available} real images)")
            raise DscoError(
                f"config key 'model.path' is empty, so the job can only select real images, "
                f"but {which} gets {budget.synthetic} synthetic of its "
                f"{budget.synthetic + budget.real} (size.ipc={cfg.size.ipc}, size.fraction="
                f"{cfg.size.fraction}, size.doping_fraction={cfg.size.doping_fraction}). "
                "Point model.path at a prior (train one with `dsco train-prior`), or select "
                "real images only: size.doping_fraction: 1 and a size every class can fill.")


def may_dope(cfg: JobConfig) -> bool:
    """False when no class can get real samples, so the doping settings cannot change the
    output: pure data-free, or an IPC budget the planner keeps all synthetic. True when unsure
    (fraction budgets depend on the class sizes)."""
    if not cfg.uses_real_data():
        return False
    if cfg.size.ipc is None:
        return True
    return class_budgets(cfg, [cfg.size.ipc])[0].real > 0  # a class with enough samples


def runs_second_pass(cfg: JobConfig) -> bool:
    """Whether NOpt's second pass runs: switched on (``NoptConfig.reweights``) for a budget that
    keeps a synthetic core. Not for a budget the planner fills with real images (doping_fraction
    1, a synthetic cap of 0, an IPC budget past the crossover), even where a class has fewer
    real images than that and is filled up with synthetic ones: the run_id, which holds the
    pass's settings only where it runs, cannot see class sizes. Fraction budgets count as
    keeping a core (whether they do depends on the class sizes)."""
    if not (cfg.nopt.reweights and cfg.model.path):
        return False
    if cfg.size.ipc is None:
        return cfg.size.doping_fraction < 1 and cfg.size.synthetic_cap != 0
    return class_budgets(cfg, [cfg.size.ipc])[0].synthetic > 0


def pretrained_weights(cfg: JobConfig) -> list[str]:
    """The local weight files the job's ``pretrained:<path>`` feature maps read (NOpt's phi,
    and doping's psi where the run can dope), sorted."""
    encoders = (cfg.nopt.feature_map, cfg.doping.encoder) if may_dope(cfg) else \
        (cfg.nopt.feature_map,)
    return sorted({name[len(PRETRAINED):] for name in encoders if name.startswith(PRETRAINED)})


def make_plan(cfg: JobConfig, class_sizes: list[int]) -> Plan:
    """Group classes into work units and give each unit its range of shard numbers."""
    if not class_sizes:
        raise DscoError("the dataset has no classes; check input.url.")
    check_selection_only(cfg, class_sizes)
    budgets = class_budgets(cfg, class_sizes)
    per_unit = cfg.execution.classes_per_unit
    plan = Plan()
    next_shard = 0
    for unit_id, start in enumerate(range(0, len(budgets), per_unit)):
        group = tuple(budgets[start:start + per_unit])
        samples = sum(b.synthetic + b.real for b in group)
        shards = max(1, -(-samples // cfg.write.shard_size))
        plan.units.append(WorkUnit(unit_id, group, next_shard, shards))
        next_shard += shards
    return plan
