"""Mutation score of the headless core from a seeded uniform random sample of its mutants (mutmut 3).

All mutants of ``src/napari_hrdv2/core/`` (about 14 000) take days on a small machine; a uniform random
sample of a few hundred gives an unbiased estimate of the score with a confidence interval. The sample is a
prefix of one seeded shuffle of all mutant names, so a larger ``--size`` with the same ``--seed`` extends an
earlier sample (the first mutants are the same, and mutmut keeps their results in ``mutants/``).

Run from the repository root with ``PYTHONPATH`` unset (mutmut must import the mutated copy in ``mutants/``);
the test selection is ``[tool.mutmut]`` in ``pyproject.toml`` (the headless suite: no Qt, no ``gui`` marker)::

    python benchmarks/mutation_sample.py list                     # generate mutants/, write their names
    python benchmarks/mutation_sample.py sample --seed 13 --size 150      # print the sampled names
    python benchmarks/mutation_sample.py run --seed 13 --size 150         # nice -n 19, one mutmut child (--children N)
    python benchmarks/mutation_sample.py table --seed 13 --size 150       # per-module table, Wilson 95 % CI
    python benchmarks/mutation_sample.py survivors --seed 13 --size 150   # diffs of the surviving mutants

Mutant names depend on the source: a sample is reproducible for one commit (``list`` prints it). Counted as
killed: "killed" and "timeout" (a mutant that makes a test hang). "no tests" (no headless test calls the
mutated function) counts as checked and not killed. Mutants never run ("not checked") are left out of the
score and listed, so a stopped run still gives an unbiased score of the part that ran.
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import random
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NAMES_FILE = REPO / "mutants" / "all_mutant_names.txt"
PACKAGE = "napari_hrdv2.core."
KILLED = {"killed", "timeout"}
NOT_KILLED = {"survived", "no tests", "suspicious", "skipped", "segfault"}


def _check_environment() -> None:
    if os.environ.get("PYTHONPATH"):
        sys.exit("Unset PYTHONPATH first (env -u PYTHONPATH ...): mutmut must import the mutated copy in mutants/.")
    os.chdir(REPO)


def generate_names() -> list[str]:
    """Generate (or update) ``mutants/`` and return the sorted names of all mutants of the core."""
    from mutmut.__main__ import (
        collect_source_file_mutation_data,
        copy_also_copy_files,
        copy_src_dir,
        create_mutants,
        setup_source_paths,
        store_lines_covered_by_tests,
    )

    (REPO / "mutants").mkdir(exist_ok=True)
    copy_src_dir()
    copy_also_copy_files()
    setup_source_paths()
    store_lines_covered_by_tests()
    create_mutants(1)
    mutants, _ = collect_source_file_mutation_data(mutant_names=[])
    names = sorted(name for _, name, _ in mutants if name.startswith(PACKAGE))
    NAMES_FILE.write_text("\n".join(names) + "\n", encoding="utf-8")
    return names


def all_names() -> list[str]:
    if not NAMES_FILE.is_file():
        sys.exit(f"{NAMES_FILE.relative_to(REPO)} is missing: run `python benchmarks/mutation_sample.py list` first.")
    return NAMES_FILE.read_text(encoding="utf-8").split()


def draw_sample(names: list[str], seed: int, size: int) -> list[str]:
    """The first ``size`` names of one seeded shuffle of ``names`` (sorted first, so the order is reproducible)."""
    order = sorted(names)
    random.Random(seed).shuffle(order)
    return order[:size]


def run_mutmut(names: list[str], *, debug: bool, clean_run: bool = True, children: int = 1) -> None:
    """``mutmut run --max-children CHILDREN NAMES``, without its clean run when the statistics are collected afresh.

    A fresh statistics run already runs the whole test selection unmutated and stops on any failure, so mutmut's
    second, clean run of the same tests only costs time (a quarter of an hour here); ``clean_run=False`` skips it
    for later batches at the same commit. ``debug`` prints pytest's
    output (one line per test) so that a failing statistics run says which test failed.
    """
    import mutmut.__main__ as mutmut_main
    from mutmut.configuration import config

    config().debug = debug
    if not clean_run or not (REPO / "mutants" / "mutmut-stats.json").is_file():
        make_runner = mutmut_main.get_mutant_runner

        def runner_without_clean_run(max_children: int):  # noqa: ANN202 (mutmut's private runner type)
            runner = make_runner(max_children)
            runner.run_clean_tests = lambda tests: 0
            return runner

        mutmut_main.get_mutant_runner = runner_without_clean_run
    mutmut_main._run(names, children)


def module_of(name: str) -> str:
    """``napari_hrdv2.core.features.tiling.x_plan_tiles__mutmut_3`` -> ``tiling``."""
    return name[len(PACKAGE) :].split(".", 1)[0]


def wilson_interval(killed: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score interval of a proportion ``killed / n`` (95 % for the default ``z``)."""
    if n == 0:
        return 0.0, 1.0
    p = killed / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def statuses() -> dict[str, str]:
    """Status of every mutant as ``mutmut results --all true`` prints it."""
    text = subprocess.run(
        [sys.executable, "-m", "mutmut", "results", "--all", "true"], capture_output=True, text=True, check=True
    ).stdout
    out = {}
    for line in text.splitlines():
        name, sep, status = line.strip().rpartition(": ")
        if sep and name.startswith(PACKAGE):
            out[name] = status
    return out


def print_table(sample: list[str]) -> None:
    status_of = statuses()
    per_module: dict[str, Counter] = defaultdict(Counter)
    for name in sample:
        per_module[module_of(name)][status_of.get(name, "not checked")] += 1
    columns = ["killed", "timeout", "survived", "no tests", "other", "not checked"]
    print("| module | sampled | killed | timeout | survived | no tests | other | not checked | score (checked) |")
    print("|---|---|---|---|---|---|---|---|---|")
    total: Counter = Counter()
    for module in sorted(per_module, key=lambda m: (-sum(per_module[m].values()), m)):
        counts = per_module[module]
        total.update(counts)
        print(_row(module, counts, columns))
    print(_row("**all**", total, columns))
    killed = sum(total[s] for s in KILLED)
    checked = killed + sum(total[s] for s in NOT_KILLED)
    low, high = wilson_interval(killed, checked)
    print()
    if checked:
        print(
            f"Score: {killed} killed (incl. timeout) of {checked} checked = {killed / checked:.1%}, "
            f"Wilson 95 % interval {low:.1%} .. {high:.1%}; {total['not checked']} of {len(sample)} not checked."
        )
        with_tests = checked - total["no tests"]
        if with_tests:
            low_t, high_t = wilson_interval(killed, with_tests)
            print(
                f"Without the {total['no tests']} 'no tests' mutants: {killed} / {with_tests} = "
                f"{killed / with_tests:.1%} ({low_t:.1%} .. {high_t:.1%})."
            )


def _row(module: str, counts: Counter, columns: list[str]) -> str:
    other = sum(v for k, v in counts.items() if k not in columns)
    cells = [str(counts[c]) if c != "other" else str(other) for c in columns]
    killed = counts["killed"] + counts["timeout"]
    checked = sum(counts.values()) - counts["not checked"]
    score = f"{killed}/{checked} = {killed / checked:.0%}" if checked else "-"
    return f"| {module} | {sum(counts.values())} | " + " | ".join(cells) + f" | {score} |"


def _deadline(until: str) -> datetime.datetime:
    """The next ``HH:MM`` UTC from now (tomorrow's when today's has passed: a run may cross midnight)."""
    now = datetime.datetime.now(datetime.UTC)
    hours, minutes = (int(part) for part in until.split(":"))
    deadline = now.replace(hour=hours, minute=minutes, second=0, microsecond=0)
    return deadline if deadline > now else deadline + datetime.timedelta(days=1)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["list", "sample", "run", "table", "survivors", "_mutmut"])
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--size", type=int, default=150)
    parser.add_argument("--start", type=int, default=0, help="skip the first START names of the sample (run only)")
    parser.add_argument("--batch", type=int, default=0, help="run: mutmut runs of BATCH mutants, in sample order")
    parser.add_argument("--until", help="run: start no batch after this UTC time (HH:MM, the next one: may be tomorrow)")
    parser.add_argument("--no-clean-run", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--children", type=int, default=1, help="run: mutants tested at once (default 1)")
    parser.add_argument("--debug", action="store_true", help="show every pytest run of mutmut (-vv) in the output")
    parser.add_argument("names", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_intermixed_args(argv)
    _check_environment()

    if args.command == "list":
        names = generate_names()
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
        counts = Counter(module_of(n) for n in names)
        print(f"{len(names)} mutants of the core at commit {commit} -> {NAMES_FILE.relative_to(REPO)}")
        print(", ".join(f"{m} {c}" for m, c in counts.most_common()))
        return
    sample = draw_sample(all_names(), args.seed, args.size)
    if args.command == "sample":
        print("\n".join(sample))
    elif args.command == "run":
        todo = sample[args.start :]
        size = args.batch or len(todo)
        deadline = _deadline(args.until) if args.until else None
        for first in range(0, len(todo), size):
            if deadline is not None and datetime.datetime.now(datetime.UTC) >= deadline:
                print(f"{args.until} UTC reached: sample names {args.start + first}.. not started.", flush=True)
                break
            print(f"batch: sample names {args.start + first}..{args.start + first + size - 1}", flush=True)
            options = ["--debug"] if args.debug else []
            options += ["--children", str(args.children)]
            options += ["--no-clean-run"] if first else []  # the statistics were collected by the first batch
            command = ["nice", "-n", "19", sys.executable, __file__, "_mutmut", *options, *todo[first : first + size]]
            done = subprocess.run(command, env={**os.environ, "HF_HUB_OFFLINE": "1"})
            if done.returncode:
                sys.exit(done.returncode)
    elif args.command == "_mutmut":
        run_mutmut(args.names, debug=args.debug, clean_run=not args.no_clean_run, children=args.children)
    elif args.command == "table":
        print(f"sample: seed {args.seed}, first {len(sample)} of {len(all_names())} mutants")
        print_table(sample)
    else:
        status_of = statuses()
        for name in sample:
            if status_of.get(name, "not checked") in NOT_KILLED:
                print(f"## {name}: {status_of[name]}", flush=True)
                subprocess.run([sys.executable, "-m", "mutmut", "show", name], check=False)


if __name__ == "__main__":
    main()
