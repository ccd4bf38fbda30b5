"""What a saved prior is, read from its configs alone: the DsCo prior's ``dsco_prior.json`` or a
DiT pipeline's hub-layout configs. Light to import (no torch, no diffusers), so the job's
driver and `dsco plan` check a prior without loading any model code."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass

from pipeline.errors import DscoError
from pipeline.resnet_names import NOT_A_RESNET, misshapen_tensor, resnet_depth, \
    torchvision_name

PRIOR_META = "dsco_prior.json"
PIPELINE_INDEX = "model_index.json"
DIT_PIPELINE = "DiTPipeline"
SCHEDULER_CONFIG = os.path.join("scheduler", "scheduler_config.json")
WEIGHTS_SUFFIXES = (".safetensors", ".bin")


@dataclass(frozen=True)
class PriorMeta:
    """What the pipeline needs to know about a saved prior beyond the diffusers weights."""

    kind: str  # "pixel_unet" (dsco_prior.json) or "dit" (a DiT pipeline directory)
    num_classes: int
    null_class: int | None  # class id used for the unconditional branch (guidance)
    image_size: int
    channels: int
    class_names: list[str]


def read_prior_meta(model_dir: str) -> PriorMeta:
    """The prior's metadata, read without loading weights; a clear error when it is missing.

    A DsCo prior directory has ``dsco_prior.json``; a DiT pipeline in the hub layout is
    described by its own configs (:func:`dit_meta`; the backend is in :mod:`pipeline.latent_prior`).
    """
    if is_dit_pipeline(model_dir):
        meta = dit_meta(model_dir)
        check_model_files(model_dir, ("transformer", "vae"))
        return meta
    meta_path = os.path.join(model_dir, PRIOR_META)
    if not os.path.isfile(meta_path):
        raise DscoError(
            f"model.path {model_dir!r} is neither a DsCo prior directory (no {PRIOR_META}) nor "
            "a DiT pipeline in the hub layout (no model_index.json); train a prior with "
            f"`dsco train-prior --data DIR --out {model_dir}`, or point it at a DiT checkout.")
    try:
        with open(meta_path) as f:
            meta = PriorMeta(**json.load(f))
    except (ValueError, TypeError) as exc:  # not JSON, or not PriorMeta's fields
        raise DscoError(f"{meta_path} does not read as a DsCo prior's metadata ({exc}): it is "
                        "corrupt or from another tool. Copy the prior directory again, or "
                        f"retrain it with `dsco train-prior --data DIR --out {model_dir}`.") \
            from None
    if meta.kind != "pixel_unet":
        raise DscoError(f"prior kind {meta.kind!r} in {meta_path} is not supported; "
                        "supported kinds: 'pixel_unet'.")
    check_model_files(model_dir, ("unet",))
    return meta


def check_model_files(model_dir: str, components: tuple[str, ...]) -> None:
    """Fail with the missing or damaged file unless each component folder has its config and
    intact weights, and the scheduler its config: checked here, on the driver, so a prior
    copied in part fails the job at once instead of every NoiseOptimizer that loads it."""
    needed = [os.path.join(c, "config.json") for c in components] + [SCHEDULER_CONFIG]
    problems = [f"{name} is missing" for name in needed
                if not os.path.isfile(os.path.join(model_dir, name))]
    for component in components:
        folder = os.path.join(model_dir, component)
        weights = sorted(n for n in os.listdir(folder) if n.endswith(WEIGHTS_SUFFIXES)) \
            if os.path.isdir(folder) else []
        if not weights:
            problems.append(f"{component}/ has no weights file ({' or '.join(WEIGHTS_SUFFIXES)})")
        for name in weights:
            why = safetensors_problem(os.path.join(folder, name)) \
                if name.endswith(".safetensors") else None
            if why:
                problems.append(f"{component}/{name} {why}")
    if problems:
        raise DscoError(f"model.path {model_dir!r} is incomplete: {'; '.join(problems)}. Copy "
                        "the whole model directory again, or for a DsCo prior retrain it with "
                        f"`dsco train-prior --data DIR --out {model_dir}`.")


def safetensors_problem(path: str) -> str | None:
    """Why the safetensors file at ``path`` cannot load (cut off, or not safetensors), or None."""
    return _safetensors_header(path)[1]


def _safetensors_header(path: str) -> tuple[dict, str | None]:
    """A safetensors file's JSON header and why the file cannot load (None when it can).
    Reads the header only: 8 bytes of header length, the JSON header, then the tensors' bytes,
    which must end exactly at the file's end."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        length = int.from_bytes(f.read(8), "little")
        if size < 8 or length > size - 8:
            return {}, f"is cut off or not safetensors ({size} bytes)"
        try:
            header = json.loads(f.read(length))
            end = max((int(t["data_offsets"][1]) for k, t in header.items()
                       if k != "__metadata__"), default=0)
        except (ValueError, TypeError, KeyError, IndexError, AttributeError) as exc:
            return {}, f"has an unreadable header ({exc})"
    if 8 + length + end != size:
        return header, f"is {size} bytes where its header needs {8 + length + end}: cut off " \
            "or damaged"
    return header, None


def weights_file_problem(path: str) -> str | None:
    """Why a ``pretrained:<path>`` weights file cannot load, or None: missing, a damaged
    safetensors file, or one whose tensor names or shapes are no ResNet-18/34/50 (read
    without torch; a torch file is only checked when loaded)."""
    if not os.path.isfile(path):
        return "does not exist here"
    if not path.endswith(".safetensors"):
        return None
    try:
        header, problem = _safetensors_header(path)
    except OSError as exc:  # unreadable (permissions, a dead mount)
        return f"cannot be read ({exc})"
    if problem:
        return problem
    try:
        shapes = {name: tuple(entry["shape"]) for key, entry in header.items()
                  if key != "__metadata__" and (name := torchvision_name(key)) is not None}
    except (TypeError, KeyError) as exc:
        return f"has an unreadable header (a tensor without a shape: {exc!r})"
    depth = resnet_depth(list(shapes))
    return NOT_A_RESNET if depth is None else misshapen_tensor(depth, shapes)


def prior_image_shape(meta: PriorMeta) -> tuple[int, int, int]:
    """(C, H, W) of the images the prior makes, which NOpt's real references must share."""
    return (meta.channels, meta.image_size, meta.image_size)


def is_dit_pipeline(model_dir: str) -> bool:
    """Whether ``model_dir`` holds a DiT pipeline in the hub layout."""
    path = os.path.join(model_dir, PIPELINE_INDEX)
    if not os.path.isfile(path):
        return False
    with open(path) as f:
        return json.load(f).get("_class_name") == DIT_PIPELINE


def dit_meta(model_dir: str) -> PriorMeta:
    """The prior metadata of a DiT pipeline directory, read from its configs (no weights).

    The null class (for classifier-free guidance) is the extra label embedding DiT keeps at
    index ``num_embeds_ada_norm``; class names come from ``id2label`` when the index has it.
    """
    try:
        with open(os.path.join(model_dir, PIPELINE_INDEX)) as f:
            index = json.load(f)
        with open(os.path.join(model_dir, "transformer", "config.json")) as f:
            transformer = json.load(f)
        with open(os.path.join(model_dir, "vae", "config.json")) as f:
            vae = json.load(f)
    except (OSError, json.JSONDecodeError) as exc:
        raise DscoError(f"model.path {model_dir!r} looks like a DiT pipeline but its configs "
                        f"do not read ({exc}); it needs model_index.json, transformer/config.json "
                        "and vae/config.json as in a hub checkpoint.") from None
    num_classes = int(transformer["num_embeds_ada_norm"])
    scale = 2 ** (len(vae["block_out_channels"]) - 1)
    id2label = index.get("id2label") or {}
    names = [str(id2label.get(str(i), i)).split(",")[0] for i in range(num_classes)]
    return PriorMeta("dit", num_classes, num_classes, int(transformer["sample_size"]) * scale,
                     int(vae.get("in_channels", 3)), names)
