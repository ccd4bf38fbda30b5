"""How input classes meet the prior's classes: the checks before a run, and the prior class id
each input label is generated as (``model.class_map``, else the label itself)."""
from __future__ import annotations

from pipeline.config import JobConfig
from pipeline.errors import DscoError
from pipeline.prior_meta import PriorMeta, prior_image_shape


def check_prior_fits(cfg: JobConfig, meta: PriorMeta | None, input_classes: int | None) -> None:
    """Raise DscoError if the prior is not the configured kind, or the input's classes (None
    in pure data-free runs) do not match ``input.num_classes`` or the prior's classes (``meta``
    None: no prior, a selection of real images only)."""
    expected = cfg.input.num_classes
    if input_classes is not None and expected is not None and input_classes != expected:
        raise DscoError(f"input.num_classes is {expected} but {cfg.input.url!r} has "
                        f"{input_classes} classes; check input.url (or the setting).")
    if meta is None:
        return
    path = cfg.model.path
    if cfg.model.kind not in ("auto", meta.kind):
        raise DscoError(f"model.kind is {cfg.model.kind!r} but {path!r} holds a {meta.kind!r} "
                        "prior; fix model.path or model.kind.")
    class_map = cfg.model.class_map
    if class_map is not None:
        if input_classes is not None and len(class_map) != input_classes:
            raise DscoError(f"model.class_map has {len(class_map)} entries but the input has "
                            f"{input_classes} classes; give one prior class per input class.")
        bad = [c for c in class_map if not 0 <= c < meta.num_classes]
        if bad:
            raise DscoError(f"model.class_map names classes {bad[:5]} that the prior in "
                            f"{path!r} does not have (it has 0..{meta.num_classes - 1}).")
    elif input_classes is not None and input_classes > meta.num_classes:
        raise DscoError(f"the input has {input_classes} classes but the prior in {path!r} "
                        f"knows {meta.num_classes}; train the prior on this dataset, or map "
                        "the input classes onto the prior's with model.class_map.")


def check_guidance(cfg: JobConfig, meta: PriorMeta) -> None:
    """Guidance other than 1 runs the prior's null class too: refuse a prior without one
    (called where the run has synthetic images to make)."""
    if cfg.nopt.guidance != 1.0 and meta.null_class is None:
        raise DscoError(f"nopt.guidance={cfg.nopt.guidance} needs a prior with a null class, "
                        f"but the prior in {cfg.model.path!r} has none; set nopt.guidance: 1.0 "
                        "or train the prior with label dropout.")


def check_images_fit(cfg: JobConfig, meta: PriorMeta, image_shape: list[int]) -> None:
    """NOpt matches the prior's images to the real ones: both must have one (C, H, W)."""
    if tuple(image_shape) != prior_image_shape(meta):
        raise DscoError(f"the real images in {cfg.input.url!r} are {tuple(image_shape)} (C, H, "
                        f"W) but the prior in {cfg.model.path!r} makes "
                        f"{prior_image_shape(meta)}; resize the dataset to the prior's image "
                        "size and channels, or point model.path at a prior of this data.")


def check_class_names_align(cfg: JobConfig, meta: PriorMeta | None,
                            input_names: list[str]) -> None:
    """Without model.class_map, input class i is generated as prior class i. Where every input
    class name is one of the prior's, but at another position (a class folder with no images,
    folders sorted as text: "10" before "2"), that would generate the wrong classes: refuse
    and give the class_map that matches them by name."""
    if meta is None or cfg.model.class_map is not None or not meta.class_names:
        return
    prior_names = list(meta.class_names)
    if not set(input_names) <= set(prior_names) or \
            input_names == prior_names[:len(input_names)] or \
            len(set(prior_names)) < len(prior_names):  # a name twice: no mapping by name
        return
    by_name = [prior_names.index(name) for name in input_names]
    first = next(i for i, c in enumerate(by_name) if c != i)
    raise DscoError(f"input class {first} is {input_names[first]!r}, but the prior in "
                    f"{cfg.model.path!r} calls its class {first} {prior_names[first]!r} "
                    f"(and {input_names[first]!r} is its class {by_name[first]}): input "
                    "classes are numbered in sorted order of their names. To generate each by "
                    f"its name set model.class_map: {by_name[:20]}"
                    f"{' ...' if len(by_name) > 20 else ''}, or relabel the input.")


def prior_class(class_map: list[int] | None, label: int) -> int:
    """The prior class id that input class ``label`` is generated as."""
    return label if class_map is None else class_map[label]


def data_free_classes(cfg: JobConfig, meta: PriorMeta) -> list[str]:
    """Class names of a run without input data: the prior's, or those ``class_map`` picks."""
    if cfg.model.class_map is None:
        return list(meta.class_names)
    return [meta.class_names[c] for c in cfg.model.class_map]
