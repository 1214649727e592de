"""`wvtui ls [DIR] [--json]`: the runs under ./runs (or DIR), newest first: live or how each
ended, pid, epoch, step, best Acc@1, when it started, its directory.

    wvtui ls                 # STATE  PID  EPOCH  STEP  BEST@1  STARTED  RUN
    wvtui ls runs/a          # that run alone
    wvtui ls /data/runs --json | jq '.[] | select(.state == "live") | .out_dir'

STATE: live (it serves its console: wvtui attach / wvtui ctl reach it), finished, stopped,
failed, crashed (killed or the machine went down: resume it with --resume auto), new.

Exit 0 (also when there are no runs); 2 when DIR is not a directory.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from collections.abc import Sequence

from core.runinfo import RunInfo, is_run_dir, list_runs, run_info
from wvtui.options import OneLineParser

__all__ = ["main", "render"]

EXIT_USAGE = 2
DASH = "-"
HEADER = ("STATE", "PID", "EPOCH", "STEP", "BEST@1", "STARTED", "RUN")


def _row(run: RunInfo) -> tuple[str, ...]:
    def num(v: object) -> str:
        return DASH if v is None else str(v)

    started = time.strftime("%Y-%m-%d %H:%M", time.localtime(run.started)) if run.started else DASH
    best = DASH if run.best_acc1 is None else f"{run.best_acc1:.2f}"
    return (run.state, num(run.pid), num(run.epoch), num(run.step), best, started, run.out_dir)


def render(runs: Sequence[RunInfo]) -> str:
    rows = [HEADER, *(_row(r) for r in runs)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(HEADER) - 1)]
    lines = []
    for row in rows:
        # Numbers right-aligned, words left; the run directory last and never padded.
        cells = [c.rjust(w) if i in (1, 2, 3, 4) else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))]
        lines.append("  ".join([*cells, row[-1]]))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = OneLineParser(prog="wvtui ls", description=__doc__.split(": ", 1)[1],
                      formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dir", nargs="?", default="runs", metavar="DIR", help="where the run directories are (default ./runs)")
    parser.add_argument("--json", action="store_true", help="one JSON list of objects, for scripts")
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, or a usage error already printed as one line
        return e.code if isinstance(e.code, int) else EXIT_USAGE
    if os.path.exists(args.dir) and not os.path.isdir(args.dir):
        print(f"wvtui: error: {args.dir} is not a directory", file=sys.stderr)
        return EXIT_USAGE
    if not os.path.exists(args.dir) and args.dir != "runs":
        print(f"wvtui: error: {args.dir}: no such directory", file=sys.stderr)
        return EXIT_USAGE
    # `wvtui ls runs/a` (a run directory itself): that run.
    runs = list_runs(args.dir) or ([run_info(args.dir)] if is_run_dir(args.dir) else [])
    if args.json:
        print(json.dumps([dataclasses.asdict(r) for r in runs]))
    elif not runs:
        print(f"no runs under {args.dir}")
    else:
        print(render(runs))
    return 0
