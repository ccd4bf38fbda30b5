"""How input classes meet the prior's classes: the checks before a run, and the prior class id
each input label is generated as (``model.class_map``, else the label itself)."""
from __future__ import annotations

from pipeline.config import JobConfig
from pipeline.errors import DscoError
from pipeline.prior_meta import PriorMeta


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


def prior_class(class_map: list[int] | None, label: int) -> int:
    """The prior class id that input class ``label`` is generated as."""
    return label if class_map is None else class_map[label]


def data_free_classes(cfg: JobConfig, meta: PriorMeta) -> list[str]:
    """Class names of a run without input data: the prior's, or those ``class_map`` picks."""
    if cfg.model.class_map is None:
        return list(meta.class_names)
    return [meta.class_names[c] for c in cfg.model.class_map]
