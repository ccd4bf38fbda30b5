"""Does one quality-benchmark run reproduce another? Cell by cell, seed by seed.

    python -m benchmarks.compare_runs NEW/results.json benchmarks/results/quality/results.json \\
        [--sigmas 3] [--floor 0.3] [--markdown FILE]

For every cell in both runs built with the same seeds, trainings per set and training recipe,
the difference NEW - OLD per evaluation architecture, training by training: its mean and
standard error. Set draws and trainings differ in their last bits between machines (and a
rebuilt trained psi picks other samples), so a rerun reproduces a cell within noise, not to
the digit: a cell *differs* when |mean| exceeds both ``sigmas`` standard errors and ``floor``
points. A cell of one set trained several times (the ablation rows) pairs trainings of two
different builds of that set, so its standard error leaves out how far the set itself moves
between builds (up to about 1 point on the MLP at IPC 10): such cells are marked but do not
set the exit status. Prints a markdown table (also written to FILE) with cells found in only
one run or not comparable listed under it, and exits 1 when a comparable cell of several sets
differs, or when a cell of OLD is missing from NEW or cannot be paired with it (the run does not
reproduce the whole table; ``--partial`` checks only the cells both have, as for a run still
going) or when no cell pairs at all, else 0; 2 when a results file cannot be read.
"""
from __future__ import annotations

import argparse
import sys
from typing import NoReturn

from benchmarks.paired_ablation import paired_difference
from benchmarks.quality import ARCHS
from pipeline.errors import DscoError
from pipeline.storage import read_json, write_bytes

PAIRED_KEYS = ("seeds", "trainings_per_set", "recipe")


def compare_cells(new: dict, old: dict, sigmas: float, floor: float) -> dict:
    """Paired differences of every comparable cell of two results.json dicts (``cells`` maps
    "method @ size" to a cell with per-architecture ``accuracies``), and the cells that cannot
    be paired: {"rows": [...], "only_new": [...], "only_old": [...], "not_comparable": [...]}."""
    new_cells, old_cells = new["cells"], old["cells"]
    rows, not_comparable = [], []
    for name in sorted(set(new_cells) & set(old_cells)):
        a, b = new_cells[name], old_cells[name]
        unequal = [key for key in PAIRED_KEYS if a.get(key) != b.get(key)]
        if unequal:
            not_comparable.append(f"{name} (different {', '.join(unequal)})")
            continue
        row = {"cell": name, "one_set": _one_set(a) and _one_set(b)}
        for arch in ARCHS:
            diff = paired_difference(a[arch]["accuracies"], b[arch]["accuracies"])
            bound = max(sigmas * (diff["stderr"] or 0.0), floor)
            row[arch] = {"new": a[arch]["mean"], "old": b[arch]["mean"], **diff,
                         "differs": abs(diff["mean"]) > bound}
        row["differs"] = any(row[arch]["differs"] for arch in ARCHS)
        rows.append(row)
    return {"rows": rows, "only_new": sorted(set(new_cells) - set(old_cells)),
            "only_old": sorted(set(old_cells) - set(new_cells)),
            "not_comparable": not_comparable}


def _one_set(cell: dict) -> bool:
    """One built set trained several times (an ablation row)."""
    return len(set(cell.get("run_ids", []))) == 1 and len(cell["convnet"]["accuracies"]) > 1


def failing(comparison: dict) -> list[str]:
    """Cells of several sets that differ: the ones that say a run does not reproduce."""
    return [row["cell"] for row in comparison["rows"] if row["differs"] and not row["one_set"]]


def unreproduced(comparison: dict) -> list[str]:
    """Cells of the old run the new one lacks or cannot be paired on."""
    return comparison["only_old"] + comparison["not_comparable"]


def markdown(comparison: dict, sigmas: float, floor: float) -> str:
    """The comparison as a markdown table, then the cells it could not pair."""
    def fmt(part: dict) -> str:
        stderr = "" if part["stderr"] is None else f" ± {part['stderr']:.2f}"
        mark = " **differs**" if part["differs"] else ""
        return f"{part['new']:.2f} / {part['old']:.2f} ({part['mean']:+.2f}{stderr}){mark}"

    lines = [f"| cell | {' | '.join(f'{arch}: new / old (paired difference)' for arch in ARCHS)} |",
             "|---|" + "---|" * len(ARCHS)]
    lines += [f"| {row['cell']}{' (one set)' if row['one_set'] else ''} | "
              f"{' | '.join(fmt(row[arch]) for arch in ARCHS)} |" for row in comparison["rows"]]
    differing = failing(comparison)
    one_set = [row["cell"] for row in comparison["rows"] if row["differs"] and row["one_set"]]
    lines += ["", f"{len(comparison['rows'])} cells paired; {len(differing)} of several sets "
              f"differ by more than {sigmas:g} standard errors and {floor:g} points"
              + (f": {', '.join(differing)}." if differing else ".")]
    if one_set:
        lines.append(f"One-set cells marked (not counted: a rebuild redraws the set): "
                     f"{', '.join(one_set)}.")
    for key, title in (("only_new", "only in the new run"), ("only_old", "only in the old run"),
                       ("not_comparable", "not comparable")):
        if comparison[key]:
            lines.append(f"Cells {title}: {', '.join(comparison[key])}.")
    return "\n".join(lines) + "\n"


def load_results(path: str) -> dict:
    """A benchmark's results.json; exits with a message naming the path when it is missing,
    not JSON (a copy cut short, say) or not a benchmark's result."""
    fix = "pass the results.json that `dsco bench quality --out DIR` wrote in DIR."
    try:
        results = read_json(path)
    except DscoError as err:  # unreadable or not JSON: the message names the path and the fix
        _bad_input(str(err))
    if results is None:
        _bad_input(f"{path} does not exist: {fix}")
    if not isinstance(results, dict) or "cells" not in results:
        _bad_input(f"{path} is not a quality benchmark's results.json (no 'cells'): {fix}")
    return results


def _bad_input(message: str) -> NoReturn:
    """Exit 2 with ``message``, as `dsco` does for bad input (1 means the runs differ)."""
    print(message, file=sys.stderr)
    raise SystemExit(2)


def main(argv: list[str] | None = None) -> int:
    """Compare two runs; exit status 1 when a comparable cell of several sets differs, 2 when
    a results file cannot be read."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("new", help="results.json of the run to check")
    parser.add_argument("old", help="results.json to check it against (e.g. the committed one)")
    parser.add_argument("--sigmas", type=float, default=3.0,
                        help="standard errors of the paired difference allowed (default 3)")
    parser.add_argument("--floor", type=float, default=0.3,
                        help="accuracy points always allowed (default 0.3)")
    parser.add_argument("--markdown", help="also write the table to this file")
    parser.add_argument("--partial", action="store_true",
                        help="check only the cells both runs have (a run still going); by "
                             "default a cell of OLD missing from NEW fails the check")
    args = parser.parse_args(argv)
    old = load_results(args.old)
    comparison = compare_cells(load_results(args.new), old, args.sigmas, args.floor)
    text = markdown(comparison, args.sigmas, args.floor)
    missing = unreproduced(comparison)
    if missing and not args.partial:
        text += (f"Not a full reproduction: the new run lacks or cannot pair {len(missing)} of "
                 f"the old run's {len(old['cells'])} cells (listed above); --partial checks only "
                 "the cells both runs have.\n")
    if not comparison["rows"]:
        text += "No cell of the two runs could be paired: nothing was checked.\n"
    print(text, end="")
    if args.markdown:
        write_bytes(args.markdown, text.encode())
    return int(bool(failing(comparison)) or (bool(missing) and not args.partial)
               or not comparison["rows"])


if __name__ == "__main__":
    sys.exit(main())
