"""The run_id: a hash of what determines a run's output (config without the output URL, the
input listing with sizes and versions, the model files and revision)."""
from __future__ import annotations

import hashlib
import json
import os

from pipeline.config import JobConfig
from pipeline.datasets import InputFile
from pipeline.planning import may_dope, runs_second_pass

HASH_CONTENT_LIMIT = 256 * 2 ** 20  # hash model files up to this size; larger ones by mtime
DIGEST_EDGE = 4 * 2 ** 20  # what file_digest hashes of each end of a larger file
# Settings added after outputs were made are left out of the run_id at the value that gives
# the output those runs had without them, so those runs keep their ids and are not redone.
LEGACY_VALUES = {("nopt", "mmd_estimator"): "biased", ("nopt", "init_space"): "latent",
                 ("nopt", "start_fit_steps"): 0, ("nopt", "start_fraction"): 0.0}
RANDOM_PICKS_ENCODER = "random_conv"


def file_version(path: str) -> list:
    """[size, sha256] of a file (its mtime instead of the hash when it is very large)."""
    size = os.path.getsize(path)
    if size > HASH_CONTENT_LIMIT:
        return [size, str(os.path.getmtime(path))]
    with open(path, "rb") as f:
        return [size, hashlib.sha256(f.read()).hexdigest()]


def model_fingerprint(prior_rows: list, revision: str, extra_files: list[str] = ()) -> list:
    """The model's part of the run_id: the revision, the prior's files (``prior_files``) and
    every extra file (pretrained feature-map weights) with its size and sha256-or-mtime."""
    return [["revision", revision], *prior_rows,
            *([path, *file_version(path)] for path in extra_files)]


def file_digest(path: str) -> list:
    """[size, sha256] of a file; past ``HASH_CONTENT_LIMIT``, of its first and last
    ``DIGEST_EDGE`` bytes (weights retrained in place differ there too; an mtime would differ
    between two copies of the same file)."""
    size = os.path.getsize(path)
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        if size <= HASH_CONTENT_LIMIT:
            digest.update(f.read())
        else:
            digest.update(f.read(DIGEST_EDGE))
            f.seek(size - DIGEST_EDGE)
            digest.update(f.read())
    return [size, digest.hexdigest()]


def prior_files(model_dir: str, version=file_version) -> list:
    """(name, *``version``) for every file of the prior's directory: size and sha256-or-mtime
    for the run_id, or ``file_digest`` for ``prior_files_difference``."""
    rows = []
    for root, _, files in sorted(os.walk(model_dir)):
        for name in sorted(files):
            path = os.path.join(root, name)
            rows.append([os.path.relpath(path, model_dir), *version(path)])
    return rows


def prior_files_difference(model_dir: str, expected: list) -> str:
    """How the prior's files at ``model_dir`` differ from ``expected`` (``prior_files`` with
    ``file_digest``, taken by the driver when the run started), or ''."""
    if expected and not os.path.isdir(model_dir):
        return "there is no folder there"
    here = {name: (size, digest) for name, size, digest in prior_files(model_dir, file_digest)}
    there = {name: (size, digest) for name, size, digest in expected}
    for name in sorted(here.keys() | there.keys()):
        if name not in here:
            return f"{name} is missing"
        if name not in there:
            return f"{name} is there and was not when the run started"
        if here[name] != there[name]:
            return (f"{name} has other contents than when the run started (a copy that "
                    "differs, or the prior changed in place since)")
    return ""


def drop_idle_second_pass(cfg: JobConfig, settings: dict) -> None:
    """Take NOpt's second-pass settings out of ``settings`` (``cfg.to_dict()``) where the pass
    does not run (``runs_second_pass``): added after runs were made, they keep those runs' ids
    (and draws recorded under the default config, ``benchmarks.more_draws``)."""
    if not runs_second_pass(cfg):
        settings["nopt"].pop("reweight_beta")
        settings["nopt"].pop("reweight_iterations")


def without_trailing_slash(url: str) -> str:
    """``url`` without trailing slashes, except where they are all it has past the scheme
    (``/``, ``s3://``)."""
    stripped = url.rstrip("/")
    return stripped if stripped and not stripped.endswith(":") else url


def run_id(cfg: JobConfig, listing: list[InputFile], model_rows: list,
           canonical_urls: bool = True) -> str:
    """Return a 16-hex-digit id; equal inputs give equal ids, whatever the output URL.
    ``canonical_urls`` False: input.url and model.path as spelled, the id runs had before
    trailing slashes were dropped from it."""
    settings = cfg.to_dict()
    settings.pop("output")
    if canonical_urls:  # the same folder with a trailing slash is the same input and prior
        settings["input"]["url"] = without_trailing_slash(cfg.input.url)
        settings["model"]["path"] = without_trailing_slash(cfg.model.path)
    for (section, key), legacy in LEGACY_VALUES.items():
        if settings[section].get(key) == legacy:
            settings[section].pop(key)
    # added after runs were made: kept out where no sample starts from herded references.
    # (An all-real budget still is not such a case: a class smaller than its budget gets
    # synthetic samples to fill it, and the run_id cannot see class sizes.)
    if not cfg.nopt.starts_from_references:
        settings["nopt"].pop("init_space", None)
        settings["nopt"].pop("start_fit_steps", None)
        settings["nopt"].pop("start_fraction", None)
    drop_idle_second_pass(cfg, settings)
    # how work is spread over actors does not change what is written; the grouping does, and
    # so does NOpt's CPU thread count where it runs on CPUs (torch's reductions, so the last
    # bits of every image); left out at 1, the count every run had before it was hashed
    settings["execution"] = {"classes_per_unit": cfg.execution.classes_per_unit}
    if cfg.execution.cpus_per_actor != 1 and cfg.execution.accelerator != "gpu":
        settings["execution"]["cpus_per_actor"] = cfg.execution.cpus_per_actor
    if not may_dope(cfg):  # a pure NOpt run: changing the doping settings reuses its output
        settings.pop("doping")
    else:
        if cfg.doping.selector != "mmd":  # only the mmd selector reads it
            settings["doping"].pop("boundary_weight")
        if cfg.doping.selector == "random":
            # random picks read no psi: every encoder gives the output of the one such runs
            # were made with before the trained psi existed, so they keep that id
            settings["doping"]["encoder"] = RANDOM_PICKS_ENCODER
    payload = json.dumps({"config": settings, "input": [f.__dict__ for f in listing],
                          "model": model_rows}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]
