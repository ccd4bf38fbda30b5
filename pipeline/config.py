"""The job config: YAML -> validated dataclasses; unknown keys and bad values fail by name."""
from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Any

import yaml

from pipeline.errors import DscoError


@dataclass
class InputConfig:
    """The real dataset (ignored in data-free mode unless doping asks for real samples)."""

    url: str = ""
    layout: str = "webdataset"  # webdataset | folders
    # the class count the data must have: checked when the job runs; `dsco plan` uses it when
    # the data is not readable from where it runs
    num_classes: int | None = None


@dataclass
class ModelConfig:
    """The diffusion prior: a local directory saved with ``save_pretrained``."""

    path: str = ""  # empty: no prior, so the job may only select real images
    revision: str = ""  # recorded in the fingerprint; bump it when the weights change in place
    # auto (from the directory) | pixel_unet | dit: checked against the directory when the
    # job runs; `dsco plan` uses it when the directory is not readable
    kind: str = "auto"
    # the prior's class id for each input label (e.g. Imagewoof's 10 dogs in an ImageNet
    # DiT); null: input label = prior class id
    class_map: list[int] | None = None


@dataclass
class SizeConfig:
    """How big the concentrated set is: ``ipc`` images per class, or ``fraction`` of the data."""

    ipc: int | None = 10
    fraction: float | None = None
    doping_fraction: float = 0.0  # share of each class's budget filled with selected real images
    # The volume planner: a class whose budget exceeds ``crossover_ipc`` gets no synthetic core
    # (real samples are worth more per slot there); ``synthetic_cap`` instead caps the core
    # explicitly. See docs/method.md for the measurement behind the default.
    crossover_ipc: int | None = 20
    synthetic_cap: int | None = None


@dataclass
class NoptConfig:
    """Noise optimisation (METHOD.md, NOpt)."""

    data_free: bool = False
    iterations: int = 100  # T; 0 gives plain sampling
    # the noise NOpt starts from: "inverted" (DDIM inversions of the class's most representative
    # reference images, by kernel herding) or "noise" (seeded Gaussian); T = 0 always uses noise
    init: str = "inverted"
    # where kernel herding picks the inverted start's references: "random_conv" (psi: a fixed
    # random ConvNet, its blocks scaled to unit RMS on the class's reference) or "latent"
    # (the model's latent; pixels for a pixel prior)
    init_space: str = "random_conv"
    # Adam steps fitting the inverted start so the sampler reproduces its herded references
    # (DDIM inversion at few steps is approximate); 0 keeps the plain inversion
    start_fit_steps: int = 0
    # where along the sampler the inverted start sits, as a share of its K steps: 0 inverts the
    # references to pure noise; f inverts them only to step k = floor(f K), and NOpt optimises
    # that point through the last K - k steps (cheaper, and the set stays nearer its
    # references' layout). The Gaussian-shell penalty (prior_weight) applies at k = 0 only: a
    # partly denoised point is not N(0, I) noise. Like init_space, unused where nothing is
    # inverted (init: noise, T = 0). 0.5 since the eleventh benchmark run (docs/method.md)
    start_fraction: float = 0.5
    ddim_steps: int = 10  # K
    learning_rate: float = 0.05
    prior_weight: float = 0.1  # lambda of the Gaussian-shell penalty
    guidance: float = 1.0
    feature_map: str = "random_conv"  # phi: random_conv | pixels | latent | pretrained:<path>
    # MMD^2 estimator of the loss: "biased" (V-statistic: each set's own pairs include i = j)
    # or "unbiased" (each set's within-set term over distinct pairs only)
    mmd_estimator: str = "unbiased"
    batch_size: int = 256  # real minibatch per iteration
    reference_multiplier: int = 8  # data-free: M = multiplier * N model samples per class
    checkpointing: bool = True
    # NOpt's second pass (docs/method.md, "Reweighting the target toward the set's own
    # errors"): once every class is optimised, the evaluation ConvNet and MLP are trained on
    # the whole synthetic set, each real reference is weighted by exp(beta * z), z its
    # class-standardised log cross-entropy under them, and every class runs
    # reweight_iterations more iterations against the weighted target. 0 turns it off; runs
    # without real references (data-free, T = 0) never do it
    reweight_beta: float = 0.5
    reweight_iterations: int = 50

    @property
    def unbiased_mmd(self) -> bool:
        """Whether NOpt's loss uses the unbiased MMD^2 estimator."""
        return self.mmd_estimator == "unbiased"

    @property
    def starts_from_references(self) -> bool:
        """Whether NOpt starts from inverted herded references (so ``init_space`` matters):
        not for the noise start, nor for T = 0, which samples plain noise."""
        return self.init != "noise" and self.iterations > 0

    @property
    def reweights(self) -> bool:
        """Whether NOpt runs its second, reweighted pass (on real references only)."""
        return self.reweight_beta > 0 and self.reweight_iterations > 0 \
            and self.iterations > 0 and not self.data_free

    @property
    def first_sampler_step(self) -> int:
        """The sampler step NOpt's z enters at: floor(``start_fraction`` x K) for an inverted
        start, else 0 (the noise start and plain sampling begin at pure noise)."""
        if not self.starts_from_references:
            return 0
        return math.floor(self.start_fraction * self.ddim_steps + 1e-9)  # 0.29 x 100 is 29


@dataclass
class DopingConfig:
    """Selecting real samples to add beside the synthetic ones."""

    # kcenter | mmd | facility_location | herding | random. k-center in the trained psi is the
    # best real-only selection past the crossover (docs/method.md, "A trained psi")
    selector: str = "kcenter"
    # psi: trained_convnet (the evaluation ConvNet trained on the input) | random_conv | pixels
    # | pretrained:<path>. trained_convnet needs embed: memory; large inputs use pretrained
    encoder: str = "trained_convnet"
    # memory: one actor reads and embeds the whole input (small data); ray_data: the Ray Data
    # embed stage writes Parquet by class and doping loads one class at a time (large data)
    embed: str = "memory"
    knn: int = 20
    exact_max: int = 50000  # classes larger than this use an HNSW index
    # mmd only: how strongly its target leans toward samples near other classes when the whole
    # class is kept; scaled by the share kept (0: not at all)
    boundary_weight: float = 1.5


@dataclass
class WriteConfig:
    """Output shards."""

    shard_size: int = 1000  # samples per shard


@dataclass
class ExecutionConfig:
    """How the work is spread over Ray."""

    classes_per_unit: int = 5
    max_retries: int = 2
    actors: int = 0  # 0: as many as the cluster fits now, growing as nodes join
    accelerator: str = "auto"  # auto: GPUs when the cluster has any; gpu; cpu
    cpus_per_actor: int = 1
    gpus_per_actor: float = 1.0
    lease_seconds: float = 60.0  # the output lock's lease, renewed every third of it


@dataclass
class JobConfig:
    """One concentration job."""

    output: str = ""
    seed: int = 0
    input: InputConfig = field(default_factory=InputConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    size: SizeConfig = field(default_factory=SizeConfig)
    nopt: NoptConfig = field(default_factory=NoptConfig)
    doping: DopingConfig = field(default_factory=DopingConfig)
    write: WriteConfig = field(default_factory=WriteConfig)
    execution: ExecutionConfig = field(default_factory=ExecutionConfig)

    def uses_real_data(self) -> bool:
        """True unless the job is pure data-free (NOpt without data, no doping, an IPC size)."""
        return (not self.nopt.data_free or self.size.doping_fraction > 0
                or self.size.fraction is not None)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of every setting (the config holds no secrets by construction)."""
        return dataclasses.asdict(self)


FEATURE_MAPS = ("random_conv", "pixels", "latent", "pretrained:<path>")
PRETRAINED = "pretrained:"
TRAINED_ENCODER = "trained_convnet"  # doping only: psi trained on the run's real data


def check_feature_map(name: str, key: str, latent_allowed: bool = True,
                      extra: tuple[str, ...] = ()) -> None:
    """Raise DscoError unless ``name`` is a feature map this project knows, or one of
    ``extra`` (``key`` names the config setting in the message)."""
    known = name in ("random_conv", "pixels", *extra) or (name == "latent" and latent_allowed) \
        or (name.startswith(PRETRAINED) and len(name) > len(PRETRAINED))
    if not known:
        names = [n for n in (*FEATURE_MAPS, *extra) if latent_allowed or n != "latent"]
        raise DscoError(f"{key} {name!r} is unknown; use one of {names} (pretrained:<path> "
                        "loads a local ResNet-18/34/50 weights file).")


def check_encoder(name: str) -> None:
    """Raise DscoError unless ``name`` is a doping encoder psi (a feature map but the latent,
    or the trained ConvNet)."""
    check_feature_map(name, "doping.encoder", latent_allowed=False, extra=(TRAINED_ENCODER,))


NOPT_INITS = ("inverted", "noise")
INIT_SPACES = ("latent", "random_conv")
MMD_ESTIMATORS = ("biased", "unbiased")
SELECTORS = ("mmd", "facility_location", "herding", "kcenter", "random")
PRIOR_KINDS = ("auto", "pixel_unet", "dit")
INPUT_LAYOUTS = ("webdataset", "folders")
ACCELERATORS = ("auto", "gpu", "cpu")


def load_config(path: str | None, overrides: list[str] | None = None,
                base: dict[str, Any] | None = None) -> JobConfig:
    """Read ``path`` (YAML), apply ``key=value`` overrides (dotted keys), validate."""
    raw: dict[str, Any] = dict(base or {})
    if path is not None:
        try:
            with open(path) as f:
                loaded = yaml.safe_load(f) or {}
        except FileNotFoundError:
            raise DscoError(f"config file {path!r} does not exist; pass the path of a YAML "
                            "config such as configs/digits.yaml.") from None
        except (IsADirectoryError, UnicodeDecodeError):
            raise DscoError(f"config file {path!r} is a folder or not a text file; pass the "
                            "path of a YAML config such as configs/digits.yaml (the data and "
                            "output go in its input.url and output).") from None
        except yaml.YAMLError as exc:
            raise DscoError(f"config file {path!r} is not valid YAML: {exc}") from None
        if not isinstance(loaded, dict):
            raise DscoError(f"config file {path!r} must hold a mapping of settings at the top.")
        raw.update(loaded)
    for item in overrides or []:
        _apply_override(raw, item)
    cfg = _build(JobConfig, raw, "")
    validate(cfg)
    return cfg


def _apply_override(raw: dict[str, Any], item: str) -> None:
    if "=" not in item:
        raise DscoError(f"--set {item!r} must look like key=value (e.g. nopt.iterations=50).")
    key, value = item.split("=", 1)
    node = raw
    parts = key.strip().split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise DscoError(f"--set {item!r}: {part!r} is a value, not a section.")
    node[parts[-1]] = yaml.safe_load(value) if value != "" else ""


def _build(cls: type, raw: Any, prefix: str) -> Any:
    if not isinstance(raw, dict):
        raise DscoError(f"config section {prefix.rstrip('.') or 'top level'!r} must be a "
                        f"mapping, got {raw!r}.")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in raw.items():
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f" Did you mean '{prefix}{close[0]}'?" if close else ""
            raise DscoError(f"unknown config key '{prefix}{key}'.{hint} Known keys here: "
                            f"{sorted(known)}.")
        kwargs[key] = _coerce(hints[key], value, f"{prefix}{key}")
    return cls(**kwargs)


def _coerce(hint: Any, value: Any, name: str) -> Any:
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, name + ".")
    allowed = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    if value is None and type(None) in allowed:
        return None
    for typ in allowed:
        if typ is float and isinstance(value, str):  # YAML 1.1 reads 1e-3 as a string
            try:
                value = float(value)
            except ValueError:
                continue
        if typ is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value):
                raise DscoError(f"config key {name!r} must be a finite number, got {value!r}.")
            return float(value)
        if typing.get_origin(typ) is list and isinstance(value, list):
            [item] = typing.get_args(typ)
            if all(type(v) is item for v in value):
                return value
        if typ is not type(None) and type(value) is typ:
            return value
    names = " or ".join(str(t) if typing.get_origin(t) else getattr(t, "__name__", str(t))
                        for t in allowed)
    raise DscoError(f"config key {name!r} must be {names}, got {value!r}.")


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise DscoError(message)


def validate(cfg: JobConfig) -> None:
    """Check values and their combinations; raise DscoError naming the first bad one."""
    size, nopt = cfg.size, cfg.nopt
    _require(bool(cfg.output), "config key 'output' is empty: set the output URL (a local "
             "folder, s3://bucket/prefix or gs://bucket/prefix), e.g. --set output=runs/x.")
    _require(cfg.model.kind in PRIOR_KINDS, f"model.kind {cfg.model.kind!r} is unknown; use "
             f"one of {list(PRIOR_KINDS)}.")
    _require(cfg.input.layout in INPUT_LAYOUTS, f"input.layout {cfg.input.layout!r} is "
             f"unknown; use one of {list(INPUT_LAYOUTS)}.")
    _require(cfg.input.num_classes is None or cfg.input.num_classes >= 1,
             f"input.num_classes must be >= 1 or null, got {cfg.input.num_classes}.")
    _require(cfg.model.class_map is None or cfg.input.num_classes in (None,
                                                                      len(cfg.model.class_map)),
             f"model.class_map has {len(cfg.model.class_map or [])} entries but "
             f"input.num_classes is {cfg.input.num_classes}; give one prior class per input "
             "class.")
    # an empty model.path is a selection of real images only (planning.check_selection_only)
    _require(bool(cfg.model.path) or not cfg.nopt.data_free, "config key 'model.path' is "
             "empty, but a data-free job generates every image: point it at a prior directory "
             "(train one with `dsco train-prior`).")
    _require(bool(cfg.model.path) or cfg.model.class_map is None, "model.class_map maps the "
             "input's classes onto a prior's, but model.path is empty: set model.path, or drop "
             "model.class_map.")
    _require((size.ipc is None) != (size.fraction is None),
             f"set exactly one of size.ipc and size.fraction (got ipc={size.ipc}, "
             f"fraction={size.fraction}); "
             + ("for a fraction, clear the IPC (it defaults to 10) with --set size.ipc=null; "
                "for an IPC, --set size.fraction=null." if size.ipc is not None else
                "set one, e.g. --set size.ipc=10."))
    _require(size.ipc is None or size.ipc >= 1, f"size.ipc must be >= 1, got {size.ipc}.")
    _require(size.fraction is None or 0 < size.fraction <= 1,
             f"size.fraction must be in (0, 1], got {size.fraction}.")
    _require(0 <= size.doping_fraction <= 1,
             f"size.doping_fraction must be in [0, 1], got {size.doping_fraction}.")
    _require(size.synthetic_cap is None or size.synthetic_cap >= 0,
             f"size.synthetic_cap must be >= 0 or null, got {size.synthetic_cap}.")
    _require(size.crossover_ipc is None or size.crossover_ipc >= 0,
             f"size.crossover_ipc must be >= 0 or null, got {size.crossover_ipc}.")
    _require(not cfg.uses_real_data() or bool(cfg.input.url),
             "config key 'input.url' is empty, but this job needs the real data (NOpt with "
             "data, doping or a size fraction); set it, or use nopt.data_free: true with "
             "size.ipc and size.doping_fraction: 0.")
    _require(nopt.iterations >= 0, f"nopt.iterations must be >= 0, got {nopt.iterations}.")
    _require(nopt.init in NOPT_INITS, f"nopt.init {nopt.init!r} is unknown; use one of "
             f"{list(NOPT_INITS)}.")
    _require(nopt.init_space in INIT_SPACES, f"nopt.init_space {nopt.init_space!r} is "
             f"unknown; use one of {list(INIT_SPACES)}.")
    _require(nopt.start_fit_steps >= 0, f"nopt.start_fit_steps must be >= 0, got "
             f"{nopt.start_fit_steps}.")
    _require(0 <= nopt.start_fraction < 1, "nopt.start_fraction must be in [0, 1) (the share "
             f"of the sampler's steps the inverted start skips), got {nopt.start_fraction}.")
    _require(nopt.mmd_estimator in MMD_ESTIMATORS, f"nopt.mmd_estimator "
             f"{nopt.mmd_estimator!r} is unknown; use one of {list(MMD_ESTIMATORS)}.")
    _require(nopt.ddim_steps >= 1, f"nopt.ddim_steps must be >= 1, got {nopt.ddim_steps}.")
    _require(nopt.first_sampler_step < nopt.ddim_steps, f"nopt.start_fraction "
             f"{nopt.start_fraction} of {nopt.ddim_steps} DDIM steps leaves no sampler step to "
             "optimise through. Lower it (0.5 is the default).")
    _require(nopt.learning_rate > 0, f"nopt.learning_rate must be > 0, got "
             f"{nopt.learning_rate}.")
    _require(nopt.prior_weight >= 0, f"nopt.prior_weight must be >= 0, got "
             f"{nopt.prior_weight}.")
    _require(nopt.guidance >= 0, f"nopt.guidance must be >= 0, got {nopt.guidance}.")
    _require(nopt.batch_size >= 1, f"nopt.batch_size must be >= 1, got {nopt.batch_size}.")
    _require(nopt.reference_multiplier >= 1, "nopt.reference_multiplier must be >= 1, got "
             f"{nopt.reference_multiplier}.")
    _require(nopt.reweight_beta >= 0, f"nopt.reweight_beta must be >= 0 (0 turns the "
             f"reweighted second pass off), got {nopt.reweight_beta}.")
    _require(nopt.reweight_iterations >= 0, f"nopt.reweight_iterations must be >= 0, got "
             f"{nopt.reweight_iterations}.")
    check_feature_map(nopt.feature_map, "nopt.feature_map")
    check_encoder(cfg.doping.encoder)
    _require(cfg.doping.embed in ("memory", "ray_data"), f"doping.embed "
             f"{cfg.doping.embed!r} is unknown; use 'memory' or 'ray_data'.")
    _require(cfg.doping.encoder != TRAINED_ENCODER or cfg.doping.embed == "memory",
             f"doping.encoder {TRAINED_ENCODER!r} (the default) trains a ConvNet on the whole "
             "input in the doping actor, which the Ray Data embed stage (doping.embed: "
             "ray_data) does not hold; use doping.embed: memory for an input that fits in "
             "memory, or with ray_data set doping.encoder: pretrained:<path> (a ResNet) or "
             "random_conv.")
    _require(cfg.doping.selector in SELECTORS, f"doping.selector {cfg.doping.selector!r} is "
             f"unknown; use one of {list(SELECTORS)}.")
    _require(cfg.doping.knn >= 1, f"doping.knn must be >= 1, got {cfg.doping.knn}.")
    _require(cfg.doping.boundary_weight >= 0,
             f"doping.boundary_weight must be a number >= 0 (0 turns the boundary lean off), "
             f"got {cfg.doping.boundary_weight}.")
    _require(cfg.write.shard_size >= 1, f"write.shard_size must be >= 1, got "
             f"{cfg.write.shard_size}.")
    ex = cfg.execution
    _require(ex.classes_per_unit >= 1, "execution.classes_per_unit must be >= 1, got "
             f"{ex.classes_per_unit}.")
    _require(ex.max_retries >= 0, f"execution.max_retries must be >= 0, got {ex.max_retries}.")
    _require(ex.actors >= 0, f"execution.actors must be >= 0, got {ex.actors}.")
    _require(ex.accelerator in ACCELERATORS, f"execution.accelerator {ex.accelerator!r} is "
             f"unknown; use one of {list(ACCELERATORS)} (gpu on an autoscaling cluster whose "
             "GPU nodes start on demand).")
    _require(ex.cpus_per_actor >= 1, f"execution.cpus_per_actor must be >= 1, got "
             f"{ex.cpus_per_actor}.")
    _require(ex.lease_seconds >= 1, f"execution.lease_seconds must be >= 1, got "
             f"{ex.lease_seconds}.")
    _require(0 < ex.gpus_per_actor <= 1, "execution.gpus_per_actor must be in (0, 1], got "
             f"{ex.gpus_per_actor}.")
