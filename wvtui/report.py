"""`wvtui report OUT [OUT ...]`: a run's results as one Markdown table, pasteable into a paper.

    wvtui report runs/a runs/b > results.md

One column per run: status, epochs done, best and last top-1/top-5 on WebVision val and on
ILSVRC12 val (ImageNet val of the same classes, when scored) with the epoch (counted from 1) of
each, the ILSVRC12 scores at the best WebVision epoch (the checkpoint best.pt holds: the best
is chosen on WebVision val), training images/s, wall time, and the recipe's key numbers. With
several runs, any other setting that differs gets a row, and differing settings are bold. The
published references follow.

Reads only OUT/config.json and OUT/metrics.jsonl, so it works on live, finished and failed
runs; a torn last line (a crash mid-write) is skipped. A resumed run's records are read as one
lineage: the records an earlier process wrote after the checkpoint it resumed from are left out.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from core.references import PROTOCOL_NOTE, REFERENCES
from core.runlog import epoch_of, read_metrics
from wvtui.eventtext import duration
from wvtui.options import OneLineParser

__all__ = ["main", "RunReport", "load_run", "render"]

EXIT_USAGE = 2
KEY_CONFIG = (("model", "model"), ("image size", "image_size"), ("batch", "batch_size"),
              ("lr", "lr"), ("epochs", "epochs"), ("milestones", "milestones"))
# Settings that say where or how fast a run went, not what it trained: never a difference row.
NOT_RECIPE = {"out", "resume", "workers", "device", "report_every", "report_interval_s",
              "nonfinite_patience", "demo"}
METRICS = (("WebVision top-1", "acc1"), ("WebVision top-5", "acc5"),
           ("ILSVRC12 top-1", "imagenet_acc1"), ("ILSVRC12 top-5", "imagenet_acc5"))
STATUS = {"completed": "finished", "stopped": "stopped", "error": "failed (error)",
          "nonfinite": "failed (non-finite loss)"}
DASH = "—"


class RunDirError(Exception):
    """OUT is not a run directory; printed as one line, exit 2."""


@dataclass
class RunReport:
    path: str
    config: dict[str, Any]
    status: str
    epochs_done: int
    best: dict[str, tuple[float, int]] = field(default_factory=dict)  # key -> (value, epoch)
    last: dict[str, tuple[float, int]] = field(default_factory=dict)
    imagenet_at_best: tuple[float, float] | None = None
    img_per_s: float | None = None
    wall_s: float | None = None


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _lineage(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Records of the run's one history: at each resume (a "started" record with start_step S)
    the earlier records after step S, which its checkpoint does not hold, are dropped."""
    kept: list[dict[str, Any]] = []
    for r in records:
        if r.get("event") == "started" and isinstance(r.get("start_step"), int) and kept:
            s = r["start_step"]
            kept = [k for k in kept if not (isinstance(k.get("step"), int) and k["step"] > s)]
        kept.append(r)
    return kept


def _segments_seconds(records: list[dict[str, Any]]) -> float | None:
    """Wall time summed over the processes of the run (each "started" record opens one)."""
    total, seen = 0.0, False
    segment: list[dict[str, Any]] = []
    for r in records + [{"event": "started"}]:
        if r.get("event") == "started" and segment:
            finished = [x["seconds"] for x in segment
                        if x.get("event") == "finished" and _finite(x.get("seconds"))]
            # A train record's elapsed_s includes the earlier segments its "started" names.
            head = segment[0] if segment[0].get("event") == "started" else {}
            before = head["elapsed_s"] if _finite(head.get("elapsed_s")) else 0.0
            elapsed = [x["elapsed_s"] - before for x in segment
                       if x.get("event") == "train" and _finite(x.get("elapsed_s"))]
            epochs = [x["seconds"] for x in segment
                      if x.get("event") == "epoch" and _finite(x.get("seconds"))]
            if finished or elapsed or epochs:
                seen = True
                total += finished[-1] if finished else max(elapsed) if elapsed else sum(epochs)
            segment = []
        segment.append(r)
    return total if seen else None


def _status(records: list[dict[str, Any]], metrics_path: str) -> str:
    last_start = max((i for i, r in enumerate(records) if r.get("event") == "started"), default=-1)
    finished = [(i, r) for i, r in enumerate(records) if r.get("event") == "finished"]
    if finished and finished[-1][0] > last_start:
        r = finished[-1][1]
        if r.get("checkpoint_failed"):
            return "failed (checkpoint not saved)"
        return STATUS.get(r.get("reason"), str(r.get("reason")))
    pid = records[last_start].get("pid") if last_start >= 0 else None
    if isinstance(pid, int) and pid > 0:
        try:
            os.kill(pid, 0)
            return f"running (pid {pid})"
        except ProcessLookupError:
            return f"ended without a finish record (pid {pid} is gone)"
        except PermissionError:
            return f"running (pid {pid}, another user)"
    try:
        age = time.time() - os.stat(metrics_path).st_mtime
        return f"running or unknown (last record {duration(age)} ago)"
    except OSError:
        return "not started"


def load_run(path: str) -> RunReport:
    if not os.path.exists(path):
        raise RunDirError(f"{path} does not exist")
    if not os.path.isdir(path):
        raise RunDirError(f"{path} is not a directory")
    config_path = os.path.join(path, "config.json")
    metrics_path = os.path.join(path, "metrics.jsonl")
    if not (os.path.isfile(config_path) or os.path.isfile(metrics_path)):
        raise RunDirError(f"{path} is not a run directory (no config.json or metrics.jsonl)")
    records: list[dict[str, Any]] = []
    if os.path.isfile(metrics_path):
        try:
            records = [r for r in read_metrics(metrics_path) if isinstance(r, dict)]
        except (OSError, UnicodeDecodeError) as e:
            raise RunDirError(f"cannot read {metrics_path}: {getattr(e, 'strerror', None) or e}") from None
    config: dict[str, Any] = {}
    try:
        with open(config_path, encoding="utf-8") as f:
            loaded = json.load(f)
        config = loaded if isinstance(loaded, dict) else {}
    except (OSError, ValueError):
        pass  # a run that died before writing it, or a damaged file: the started record has it
    started = [r for r in records if r.get("event") == "started"]
    if started:
        config = {**started[-1].get("config", {}), **config}
        config.setdefault("world_size", started[-1].get("world_size"))

    lineage = _lineage(records)
    evals = [r for r in lineage if r.get("event") == "eval"]
    epochs = {epoch_of(r): r for r in lineage if r.get("event") == "epoch" and epoch_of(r) is not None}
    report = RunReport(path=path, config=config, status=_status(records, metrics_path),
                       epochs_done=max(epochs, default=0), wall_s=_segments_seconds(records))
    for _, key in METRICS:
        scored = [(r[key], epoch_of(r) or 1) for r in evals if _finite(r.get(key))]
        if scored:
            report.best[key] = max(scored, key=lambda x: x[0])  # the first of equal values
            report.last[key] = scored[-1]
    best_evals = [r for r in evals if _finite(r.get("acc1"))]
    if best_evals:
        at_best = max(best_evals, key=lambda r: r["acc1"])
        if _finite(at_best.get("imagenet_acc1")) and _finite(at_best.get("imagenet_acc5")):
            report.imagenet_at_best = (at_best["imagenet_acc1"], at_best["imagenet_acc5"])
    rates = [r["img_per_s"] for r in epochs.values() if _finite(r.get("img_per_s")) and r["img_per_s"] > 0]
    if not rates:
        rates = [r["img_per_s"] for r in lineage
                 if r.get("event") == "train" and _finite(r.get("img_per_s")) and r["img_per_s"] > 0]
    report.img_per_s = sum(rates) / len(rates) if rates else None
    return report


def _value(v: Any) -> str:
    if v is None:
        return DASH
    if isinstance(v, (list, tuple)):
        return " ".join(str(x) for x in v) or DASH
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def _scored(pair: tuple[float, int] | None) -> str:
    return DASH if pair is None else f"{pair[0]:.2f} (epoch {pair[1]})"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(_cell(h) for h in header) + " |",
             "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def render(runs: Sequence[RunReport]) -> str:
    rows: list[list[str]] = [
        ["status"] + [r.status for r in runs],
        ["epochs done"] + [f"{r.epochs_done} / {_value(r.config.get('epochs'))}" for r in runs],
    ]
    for label, key in METRICS:
        rows.append([f"{label} best"] + [_scored(r.best.get(key)) for r in runs])
    for label, key in METRICS:
        rows.append([f"{label} last"] + [_scored(r.last.get(key)) for r in runs])
    rows.append(["ILSVRC12 top-1 / top-5 at best WebVision top-1"] + [
        DASH if r.imagenet_at_best is None else f"{r.imagenet_at_best[0]:.2f} / {r.imagenet_at_best[1]:.2f}"
        for r in runs])
    rows.append(["train images/s"] + [DASH if r.img_per_s is None else f"{r.img_per_s:.0f}" for r in runs])
    rows.append(["wall time"] + [duration(r.wall_s) if r.wall_s is not None else DASH for r in runs])

    config_rows = list(KEY_CONFIG)
    if len(runs) > 1:
        keys = sorted({k for r in runs for k in r.config} - NOT_RECIPE - {k for _, k in KEY_CONFIG})
        config_rows += [(k.replace("_", " "), k) for k in keys
                        if len({_value(r.config.get(k)) for r in runs}) > 1]
    for label, key in config_rows:
        values = [_value(r.config.get(key)) for r in runs]
        if len(runs) > 1 and len(set(values)) > 1:
            values = [f"**{v}**" for v in values]
        rows.append([label] + values)

    out = [_table(["run"] + [r.path for r in runs], rows), ""]
    out.append("Published mini-WebVision results (InceptionResNetV2):")
    out.append("")
    out.append(_table(["method", "WebVision top-1", "WebVision top-5", "ILSVRC12 top-1", "ILSVRC12 top-5"],
                      [[ref.method, f"{ref.webvision_top1:.2f}", f"{ref.webvision_top5:.2f}",
                        f"{ref.imagenet_top1:.2f}", f"{ref.imagenet_top5:.2f}"] for ref in REFERENCES]))
    out.append("")
    out.append(PROTOCOL_NOTE)
    out.append("")
    out += [f"- {ref.method}: {ref.citation}" for ref in REFERENCES]
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    parser = OneLineParser(prog="wvtui report", description=__doc__.split("\n", 1)[0])
    parser.add_argument("runs", nargs="+", metavar="OUT", help="run directories (--out of a run)")
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, or a usage error already printed as one line
        return e.code if isinstance(e.code, int) else EXIT_USAGE
    try:
        runs = [load_run(p) for p in args.runs]
    except RunDirError as e:
        print(f"wvtui: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    print(render(runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
