"""The runs under one output: list them with their state, and delete old ones (gc) with the
cached embeddings no run left reads."""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timezone

from pipeline.cache_names import CACHE, EMBED_STAGE_META, ENTRY
from pipeline.errors import DscoError
from pipeline.lock import LockHeld, OutputLock, lock_holder
from pipeline.storage import delete, exists, filesystem, join, read_json, with_retries

RUN_CONFIG = "run_config.json"  # its presence makes a folder a run
NOT_RUNS = (CACHE,)
DAMAGED = "damaged"
# in run_config.json: the tag of the cache entries a run reads (None: it reads no real data)
EMBEDDINGS_TAG = "embeddings_tag"
# NOpt's second pass: the classifiers its weights come from, saved so a resumed run reuses them
HARDNESS_NETS = "hardness_nets.pt"
GC_LEASE_S = 60.0


@dataclass(frozen=True)
class RunInfo:
    """One run folder (a folder holding ``run_config.json``): ``state`` is complete, writing (a
    live run holds the output's lock for it), incomplete (abandoned, or waiting to be
    resumed) or damaged (its index.json does not read as JSON: left for a person to look at)."""

    run_id: str
    state: str
    samples: int
    bytes: int
    updated: str
    latest: bool


def list_runs(output_url: str) -> list[RunInfo]:
    """Every run folder under ``output_url``, newest first."""
    fs, root = filesystem(output_url)
    try:
        entries = with_retries(f"list {output_url}", lambda: fs.ls(root, detail=True))
    except FileNotFoundError:
        return []
    latest = (read_json(join(output_url, "latest.json")) or {}).get("run_id")
    holder = lock_holder(output_url)
    runs = []
    for entry in entries:
        run_id = entry["name"].rstrip("/").rsplit("/", 1)[-1]
        if entry["type"] != "directory" or run_id in NOT_RUNS:
            continue
        if not exists(join(output_url, run_id, RUN_CONFIG)):
            continue  # not a run (a prior, data or another output beside them): never touched
        try:
            index = read_json(join(output_url, run_id, "index.json")) or {}
        except DscoError:  # not JSON: one damaged run must not hide the others
            runs.append(RunInfo(run_id, DAMAGED, 0, 0, "", run_id == latest))
            continue
        state = "complete" if index.get("complete") else \
            "writing" if holder is not None and holder.run_id == run_id else "incomplete"
        shards = index.get("shards", [])
        runs.append(RunInfo(run_id, state, sum(s["nsamples"] for s in shards),
                            sum(s["bytes"] for s in shards), index.get("updated", ""),
                            run_id == latest))
    return sorted(runs, key=lambda r: (r.updated, r.run_id), reverse=True)


def plan_gc(runs: list[RunInfo], keep: int, locked: bool = True,
            holder: str | None = None) -> list[RunInfo]:
    """What gc deletes: complete runs beyond the newest ``keep``, and abandoned incomplete runs
    (last written before the newest complete run finished; a newer one may still be resumed),
    but never the latest run, one being written or a damaged one. Without the output's lock
    (``locked`` False: a live run holds it, ``holder`` its run_id where known) complete runs
    only, and never the holder's (it may be between marking its run complete and moving
    latest.json): once the live run ends, the next job may resume an incomplete one while gc
    deletes it."""
    complete = [r for r in runs if r.state == "complete"]
    kept = {r.run_id for r in complete[:keep]}
    newest_complete = max((r.updated for r in complete), default="")
    return [r for r in runs if not r.latest and r.run_id != holder and
            (r.run_id not in kept if r.state == "complete" else
             locked and r.state == "incomplete" and r.updated < newest_complete)]


@dataclass(frozen=True)
class Collected:
    """What gc deleted (or, in a dry run, would delete): runs, and entries under cache/."""

    runs: list[RunInfo] = field(default_factory=list)
    cache: list[str] = field(default_factory=list)


def stale_cache(output_url: str, runs_left: list[RunInfo]) -> list[str]:
    """The entries of ``<output>/cache`` that no run in ``runs_left`` reads (each run records
    its tag in run_config.json) and that were written before the newest complete run finished:
    a newer one may be a run's that stopped before its folder existed (bad input found after
    embedding) and is about to be rerun. Nothing when a run left has no record (made before
    runs recorded it, or unreadable): what it reads is unknown."""
    tags = set()
    for run in runs_left:
        try:
            config = read_json(join(output_url, run.run_id, RUN_CONFIG)) or {}
        except DscoError:
            return []
        if EMBEDDINGS_TAG not in config:
            return []
        tags.add(config[EMBEDDINGS_TAG])
    fs, root = filesystem(join(output_url, CACHE))
    try:
        names = with_retries(f"list {output_url}/{CACHE}", lambda: fs.ls(root, detail=False))
    except FileNotFoundError:
        return []
    newest_complete = max((r.updated for r in runs_left if r.state == "complete"), default="")
    return sorted(name for name in (n.rstrip("/").rsplit("/", 1)[-1] for n in names)
                  if (found := ENTRY.match(name)) and found[1] not in tags
                  and _written(fs, f"{root.rstrip('/')}/{name}") < newest_complete)


def _written(fs, path: str) -> str:
    """When a cache entry was written, as index.json's ``updated`` spells times (an embed
    stage's folder: its meta.json, written last); "~" (later than any time) when unknown, so
    the entry is kept."""
    if not path.endswith((".parquet", ".safetensors")):
        path = f"{path}/{EMBED_STAGE_META}"
    try:
        when = fs.modified(path)
    except (OSError, NotImplementedError):  # missing, unfinished, or a store that cannot say
        return "~"
    if when.tzinfo is not None:
        when = when.astimezone(timezone.utc)
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def gc(output_url: str, keep: int, dry_run: bool = False) -> Collected:
    """Delete what :func:`plan_gc` picks, then the cache entries no run left reads; return
    both. Holds the output's lock while deleting (so no run starts meanwhile) unless a live
    run holds it: then its run, every incomplete one and the cache (a starting run may be
    embedding into a new entry) are left alone. A dry run only reads (it takes no lock)."""
    if keep < 0:
        raise DscoError(f"gc --keep must be 0 or more (the complete runs to keep), got {keep}.")
    if not list_runs(output_url):
        return Collected()  # no lock file left in a folder that holds no runs
    lock = None if dry_run else OutputLock(output_url, "gc", GC_LEASE_S)
    refused = False
    if lock is not None:
        try:
            lock.acquire()
        except LockHeld:
            lock, refused = None, True  # a live run holds it
    live = None if lock is not None else lock_holder(output_url)
    # a dry run plans what a real one would: one without the lock while a live run holds it
    locked = not refused and live is None
    try:
        runs = list_runs(output_url)
        doomed = plan_gc(runs, keep, locked, live.run_id if live else None)
        gone = {r.run_id for r in doomed}
        stale = stale_cache(output_url, [r for r in runs if r.run_id not in gone]) \
            if locked else []
        if not dry_run:
            for run in doomed:
                delete(join(output_url, run.run_id))
            for name in stale:
                delete(join(output_url, CACHE, name))
        return Collected(doomed, stale)
    finally:
        if lock is not None:
            lock.release()
