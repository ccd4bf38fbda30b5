"""The `dsco` command line."""
from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from functools import partial

from pipeline.config import INPUT_LAYOUTS
from pipeline.errors import DscoError, JobFailed


def _at_least(minimum: float, kind: type = int):
    """An argparse type: a number of ``kind`` no smaller than ``minimum``."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be {minimum} or more, got {text}")
        return value
    return parse


def _cmd_run(args: argparse.Namespace) -> int:
    from cluster.driver import run_job
    from pipeline.config import load_config

    cfg = load_config(args.config, args.set)
    result = run_job(cfg, address=args.address, progress=not args.quiet)
    if result.status == "up to date":
        print(f"run {result.run_id} is up to date: {result.run_url}")
    else:
        m = result.metrics
        print(f"run {result.run_id} complete: {m.get('samples')} samples "
              f"({m.get('synthetic')} synthetic, {m.get('real')} real) in {m.get('shards')} "
              f"shards at {result.run_url}")
    return 0


def _cmd_plan(args: argparse.Namespace) -> int:
    from cluster.plan_report import describe_plan
    from pipeline.config import load_config

    cfg = load_config(args.config, args.set)
    print(describe_plan(cfg, args.gpus, args.cpus, args.classes, args.samples_per_class))
    return 0


def _cmd_runs(args: argparse.Namespace) -> int:
    from pipeline.runs import list_runs

    runs = list_runs(args.output)
    if not runs:
        print(f"no runs under {args.output}")
    for run in runs:
        print(f"{run.run_id}  {run.state:<10} {run.samples:>8} samples {run.bytes / 2**20:>9.1f} "
              f"MiB  {run.updated or '-':<20}{'  latest' if run.latest else ''}")
    return 0


def _cmd_gc(args: argparse.Namespace) -> int:
    from pipeline.runs import gc

    collected = gc(args.output, args.keep, args.dry_run)
    verb = "would delete" if args.dry_run else "deleted"
    for run in collected.runs:
        print(f"{verb} {run.run_id} ({run.state}, {run.samples} samples)")
    for name in collected.cache:
        print(f"{verb} cache/{name} (no run left reads it)")
    print(f"{verb} {len(collected.runs)} run(s) and {len(collected.cache)} cache entries; kept "
          f"the newest {args.keep} complete, the latest, any being written, damaged ones, and "
          "incomplete runs newer than the newest complete one (every incomplete run, and the "
          "whole cache, while a run is being written)")
    return 0


def _cmd_follow(args: argparse.Namespace) -> int:
    from pipeline.follow import follow_run

    def waiting(run_url: str) -> None:
        print(f"waiting for the run at {run_url} to start (no index.json yet)", file=sys.stderr)

    try:
        for shard in follow_run(args.index_url, args.poll, args.timeout, not args.no_verify,
                                waiting):
            print(f"{shard.generation} {shard.url} {shard.size} {shard.sha256}", flush=True)
    except BrokenPipeError:  # the reader stopped (`dsco follow ... | head`): not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no error at exit
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from cluster.demo import format_table, run_demo

    started = time.time()
    evaluation = run_demo(args.out, args.ipc, args.doping_fraction, args.data_free,
                          args.shard_size, progress=not args.quiet)
    if evaluation["up_to_date"]:
        print("the run is up to date: job and evaluation skipped; saved results:")
    print(format_table(evaluation))
    run_url = evaluation["run_url"]
    print(f"\nrun: {run_url}\n  index:   {run_url}/index.json\n  shards:  {run_url}/shards/"
          f"\n  report:  {run_url}/report/ (metrics.json, report.md, grid.png)"
          f"\n  samples: {run_url}/samples.parquet\n({time.time() - started:.0f} s)")
    return 0


def _cmd_prepare_digits(args: argparse.Namespace) -> int:
    from pipeline.digits import prepare_digits

    counts = prepare_digits(args.out)
    print(f"digits written to {args.out}: train {counts['train']}, test {counts['test']}")
    return 0


def _cmd_train_prior(args: argparse.Namespace) -> int:
    from pipeline.datasets import read_dataset
    from pipeline.prior_training import PriorTrainingConfig, train_prior

    data = read_dataset(args.data, args.layout)
    steps = {} if args.steps is None else {"steps": args.steps}
    cfg = PriorTrainingConfig(seed=args.seed, **steps)
    train_prior(data, args.out, cfg, progress=not args.quiet, device=args.device)
    print(f"prior saved to {args.out}")
    return 0


def _cmd_bench_quality(args: argparse.Namespace) -> int:
    from benchmarks.quality import BenchSettings, markdown_tables, run_quality

    settings = BenchSettings.quick() if args.quick else \
        BenchSettings.full(ablations=not args.no_ablations)
    started = time.time()
    results = run_quality(args.out, settings, progress=not args.quiet)
    print(markdown_tables(results))
    print(f"results: {args.out}/results.json, results.md, accuracy_vs_size.png "
          f"({time.time() - started:.0f} s)")
    return 0


RESUMABLE = ("run", "demo", "bench")  # a rerun goes on from what these kept


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    parser = argparse.ArgumentParser(prog="dsco", description="DsCo dataset concentration.")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    # also after the subcommand; SUPPRESS keeps a --quiet given before it
    quiet = argparse.ArgumentParser(add_help=False)
    quiet.add_argument("--quiet", action="store_true", default=argparse.SUPPRESS,
                       help="no progress bars")
    sub = parser.add_subparsers(dest="command", required=True)
    add_parser = partial(sub.add_parser, parents=[quiet])

    run = add_parser("run", help="run the concentration job described by a YAML config")
    run.add_argument("config")
    run.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                     help="override a config key (dotted for nested keys); repeatable")
    run.add_argument("--address", help="Ray address to join (default: RAY_ADDRESS, else local)")
    run.set_defaults(func=_cmd_run)

    plan = add_parser("plan", help="print a job's work units, actors and cost estimate "
                      "without running it")
    plan.add_argument("config")
    plan.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    plan.add_argument("--gpus", type=_at_least(0, float), default=8,
                      help="GPUs of the target cluster (default 8)")
    plan.add_argument("--cpus", type=_at_least(0, float), default=64,
                      help="CPUs of the target cluster (default 64)")
    plan.add_argument("--classes", type=_at_least(1), help="class count when neither the "
                      "model nor the data is readable")
    plan.add_argument("--samples-per-class", type=_at_least(1), help="real samples per class "
                      "to assume when the data is not readable")
    plan.set_defaults(func=_cmd_plan)

    runs = add_parser("runs", help="list the runs under an output with state and size")
    runs.add_argument("output")
    runs.set_defaults(func=_cmd_runs)

    gc = add_parser("gc", help="delete old complete runs, abandoned incomplete ones and "
                    "the cache entries no run left reads")
    gc.add_argument("output")
    gc.add_argument("--keep", type=_at_least(0), required=True,
                    help="complete runs to keep (newest)")
    gc.add_argument("--dry-run", action="store_true")
    gc.set_defaults(func=_cmd_gc)

    follow = add_parser("follow", help="print each shard of a run as it is committed; "
                        "ends when the run completes")
    follow.add_argument("index_url", help="a run's index.json URL (or the run folder)")
    follow.add_argument("--poll", type=_at_least(0.01, float), default=2.0,
                        help="seconds between index reads (default 2)")
    follow.add_argument("--timeout", type=_at_least(0, float),
                        help="give up after this many seconds (default: wait until complete)")
    follow.add_argument("--no-verify", action="store_true", help="skip the sha256 check")
    follow.set_defaults(func=_cmd_follow)

    demo = add_parser("demo", help="digits end to end on local Ray, with evaluation")
    demo.add_argument("--out", required=True)
    demo.add_argument("--ipc", type=_at_least(1), default=10)
    demo.add_argument("--doping-fraction", type=float, default=0.0)
    demo.add_argument("--data-free", action="store_true")
    demo.add_argument("--shard-size", type=_at_least(1), default=1000, help="samples per shard")
    demo.set_defaults(func=_cmd_demo)

    prep = add_parser("prepare-digits", help="write scikit-learn digits as WebDataset shards")
    prep.add_argument("--out", required=True)
    prep.set_defaults(func=_cmd_prepare_digits)

    prior = add_parser("train-prior", help="train the tiny class-conditional DDPM prior")
    prior.add_argument("--data", required=True, help="dataset URL (e.g. DIR/train)")
    prior.add_argument("--layout", default="webdataset", choices=INPUT_LAYOUTS)
    prior.add_argument("--out", required=True)
    prior.add_argument("--steps", type=_at_least(1),
                       help="training steps (default 2500, the tuned length)")
    prior.add_argument("--seed", type=int, default=0)
    prior.add_argument("--device", default="cpu",
                       help="cpu (default) or cuda[:N]; on an H100 the digits prior trains in "
                            "about 1.5 min, against about 5 min on 2 CPU cores")
    prior.set_defaults(func=_cmd_train_prior)

    bench_parser = add_parser("bench", help="benchmarks")
    bench = bench_parser.add_subparsers(dest="bench", required=True)
    quality = bench.add_parser("quality", parents=[quiet],
                               help="DsCo vs every baseline on digits")
    quality.add_argument("--out", required=True)
    quality.add_argument("--quick", action="store_true",
                         help="CI smoke: IPC 10, one seed, a tiny prior, a few iterations")
    quality.add_argument("--no-ablations", action="store_true")
    quality.set_defaults(func=_cmd_bench_quality)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `dsco` console script; returns the exit code."""
    from pipeline.lock import LockHeld

    args = build_parser().parse_args(argv)
    terminated: list[int] = []

    def stop_like_ctrl_c(signum, frame) -> None:
        # KeyboardInterrupt is what Ray lets through a blocking ray.get / ray.wait; the
        # unwinding releases the output's lock (ray.init's own handler exited with 1)
        terminated.append(signum)
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, stop_like_ctrl_c) if args.command in RESUMABLE \
        else None
    try:
        return args.func(args)
    except LockHeld as exc:
        print(f"busy: {exc}", file=sys.stderr)
        return 3
    except DscoError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except JobFailed as exc:
        print(f"failed: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{'terminated (SIGTERM)' if terminated else 'interrupted'}"
              f"{_resumes(args.command)}", file=sys.stderr)
        return 143 if terminated else 130
    finally:
        if previous is not None:  # main() also runs inside tests and other programs
            signal.signal(signal.SIGTERM, previous)


def _resumes(command: str) -> str:
    """What a rerun of an interrupted ``command`` does, for the interruption message."""
    if command in ("run", "demo"):
        return "; a run keeps its committed units, and the same command resumes it"
    if command == "bench":
        return "; the cells built so far are kept, and the same command goes on from them"
    return ""


if __name__ == "__main__":
    sys.exit(main())
