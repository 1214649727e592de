"""Every check and benchmark that needs a GPU, in one run of a few minutes: one table of results.

    python -m bench.gpu_check                          # on a GPU: about 8 minutes, writes bench/RESULTS.md
    python -m bench.gpu_check --smoke                  # on CPU, tiny sizes: the same code paths in ~1-2 min
    python -m bench.gpu_check --only fp16 syncs        # some checks again
    python -m bench.gpu_check --results $OUT/RESULTS.md   # write the table elsewhere (a device run's $OUT)

Checks (issue 14): the CUDA tests a CPU run skips; an fp16 run whose first steps overflow (item 1);
CUDA contexts after a run on cuda:N (item 2); syncs per training step and per evaluation batch
(item 3); a 1-GPU torchrun run against a plain one; bench.step at InceptionResNetV2 299 px bf16,
with and without torch.compile, timed from a drained loader queue (item 4); bench.engine and
bench.console at the same size. The table (check, result, target, status, seconds) goes to stdout
and replaces the marked "GPU check" section of the results file after every check, so a run cut
short still leaves what it measured. Exit status 1 when a check fails, 0 otherwise.

With --smoke everything runs on CPU at tiny sizes (resnet18, 32 px, a few steps): the figures
mean nothing, targets are not applied ("smoke"), and what only CUDA can show is reported as
"skipped (no CUDA)"; it proves the script works before device time is spent on it. The smoke run
writes no results file unless --results is given.
"""

from __future__ import annotations

import argparse
import datetime
import glob
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

if __package__ in (None, ""):  # run as `python bench/gpu_check.py`: make the repository root importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from bench import gpu_probes  # noqa: E402
from bench.common import machine_line, table  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BEGIN, END = "<!-- gpu_check:begin -->", "<!-- gpu_check:end -->"
PASS, FAIL, INFO, SMOKE, NO_CUDA = "pass", "FAIL", "info", "smoke (target not applied)", "skipped (no CUDA)"


@dataclass
class Sizes:
    device: str
    model: str
    image_size: int
    batch: int
    workers: int
    warmup: int
    steps: int
    report: int
    amp: str
    compile: str  # bench.step --compile
    console_steps: int
    # the probes and the torchrun comparison: a small model; they count events, not speed
    probe_model: str
    probe_batch: int
    probe_image_size: int
    probe_lr: float
    sync_steps: int
    sync_val_batches: int
    fp16_steps: int
    fp16_report: int
    cli_batch: int
    cli_steps: int
    data_size: int  # short side of the probes' JPEGs


def sizes_for(smoke: bool) -> Sizes:
    if smoke:
        return Sizes(device="cpu", model="resnet18", image_size=32, batch=4, workers=1, warmup=2, steps=2,
                     report=2, amp="auto", compile="off", console_steps=4, probe_model="resnet18",
                     probe_batch=4, probe_image_size=32, probe_lr=0.01, sync_steps=4, sync_val_batches=3, fp16_steps=8,
                     fp16_report=2, cli_batch=4, cli_steps=6, data_size=40)
    from core.config import default_workers

    return Sizes(device="cuda", model="inception_resnet_v2", image_size=299, batch=128, workers=default_workers(),
                 warmup=10, steps=120, report=10, amp="auto", compile="both", console_steps=60,
                 probe_model="resnet18", probe_batch=32, probe_image_size=64, probe_lr=0.02, sync_steps=12, sync_val_batches=6,
                 fp16_steps=40, fp16_report=5, cli_batch=64, cli_steps=40, data_size=80)


class Run:
    """The rows so far, the clock, and where they are written."""

    def __init__(self, smoke: bool, results: str | None, budget_s: float | None) -> None:
        self.smoke, self.results, self.budget_s = smoke, results, budget_s
        self.rows: list[list[object]] = []
        self.t0 = time.perf_counter()
        self.machine = machine_line(torch.device("cuda") if torch.cuda.is_available() else None)

    def add(self, check: str, result: str, target: str, status: str, seconds: float) -> None:
        self.rows.append([check, result, target, status, f"{seconds:.0f}"])

    def failed(self) -> bool:
        return any(r[3] in (FAIL, "error") for r in self.rows)

    def markdown(self) -> str:
        mode = "smoke run on CPU (tiny sizes; figures mean nothing)" if self.smoke else "GPU run"
        head = (f"{mode}: `python -m bench.gpu_check{' --smoke' if self.smoke else ''}`, "
                f"{datetime.datetime.now().strftime('%Y-%m-%d %H:%M')}, "
                f"{time.perf_counter() - self.t0:.0f} s so far\n\nmachine: {self.machine}\n")
        return head + "\n" + table("GPU check", ["check", "result", "target", "status", "s"], self.rows)

    def write(self) -> None:
        if self.results:
            write_section(self.results, self.markdown())


def write_section(path: str, body: str) -> None:
    """Replace the text between the markers in `path` (or append a section with them)."""
    text = open(path).read() if os.path.exists(path) else "# Benchmark results\n"
    block = f"{BEGIN}\n{body}\n{END}"
    if BEGIN in text and END in text:
        a, b = text.index(BEGIN), text.index(END) + len(END)
        text = text[:a] + block + text[b:]
    else:
        text = text.rstrip("\n") + f"\n\n## GPU check: `python -m bench.gpu_check`\n\n{block}\n"
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def verdict(run: Run, ok: bool) -> str:
    return SMOKE if run.smoke else (PASS if ok else FAIL)


def _tail(text: str, n: int = 160) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return (lines[-1] if lines else "")[-n:]


# -- the checks: each adds its rows ---------------------------------------------------------------

def check_cuda_tests(run: Run, s: Sizes, tmp: str) -> None:
    t = time.perf_counter()
    # Only the test files that mention CUDA are collected: importing every test module costs time
    # (and some need packages a GPU image may lack, such as the snapshot plugin).
    files = [f for f in sorted(glob.glob(os.path.join(REPO, "tests", "test_*.py"))) if "cuda" in open(f).read().lower()]
    cmd = [sys.executable, "-m", "pytest", "-p", "bench.cuda_tests", "-q", "-p", "no:cacheprovider", *files]
    if run.smoke:
        cmd.append("--collect-only")
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    if run.smoke:
        found = sum(1 for ln in out.stdout.splitlines() if "::" in ln)
        status = NO_CUDA if out.returncode == 0 and found else FAIL
        run.add("CUDA tests (pytest -p bench.cuda_tests)", f"{found} selected in {len(files)} files; "
                f"collect exit {out.returncode}: {_tail(out.stdout)}", "all pass", status, time.perf_counter() - t)
        return
    status = PASS if out.returncode == 0 else FAIL
    run.add("CUDA tests (pytest -p bench.cuda_tests)", f"exit {out.returncode}: {_tail(out.stdout)}",
            "all pass", status, time.perf_counter() - t)


def check_fp16(run: Run, s: Sizes, tmp: str) -> None:
    t = time.perf_counter()
    root = probe_root(s, tmp)
    r = gpu_probes.fp16_overflow(root, os.path.join(tmp, "fp16"), s, steps=s.fp16_steps, report_every=s.fp16_report)
    losses = " ".join(f"{x:.2f}" for x in r["losses"])
    ok = r["reason"] == "completed" and r["skipped"] >= 1 and r["buffers_finite"] and r["finite_losses"]
    # A few steps at batch 4 are too noisy to judge the trend: at smoke sizes the loss is shown only.
    ok = ok and (run.smoke or r["falling"])
    run.add("fp16, first steps overflow (item 1)",
            f"{r['skipped']} steps skipped, momentum buffers {'finite' if r['buffers_finite'] else 'NOT finite'}, "
            f"{'fused' if r['fused'] else 'unfused'} SGD, loss by window {losses} ({r['reason']})",
            ">= 1 skipped, finite buffers, loss falls" + (" (trend not judged in smoke)" if run.smoke else ""),
            PASS if ok else FAIL, time.perf_counter() - t)


def check_syncs(run: Run, s: Sizes, tmp: str) -> None:
    t = time.perf_counter()
    root = probe_root(s, tmp)
    r = gpu_probes.sync_counts(root, os.path.join(tmp, "syncs"), s, steps=s.sync_steps,
                               val_batches=s.sync_val_batches)
    seconds = time.perf_counter() - t
    where = "; ".join(f"{w} x{n}" for w, n in r["where"]) or "none"

    def status(count: float) -> str:
        if not r["counted"]:
            return NO_CUDA  # the same run went through; CPU has no sync debug mode to count with
        return PASS if r["reason"] == "completed" and count == 0 else FAIL

    run.add("syncs per training step (item 3)", f"{r['per_step']:.2f} over steps 2..{r['steps']}; "
            f"{r['total']} in the run, at {where} ({r['reason']})", "0", status(r["per_step"]), seconds)
    run.add("syncs per evaluation batch (item 3)", f"{r['per_eval_batch']:.2f} over {r['eval_batches']} batches",
            "0", status(r["per_eval_batch"]), 0)


def check_contexts(run: Run, s: Sizes, tmp: str) -> None:
    t = time.perf_counter()
    root = probe_root(s, tmp)
    cuda = not run.smoke and torch.cuda.is_available()
    # On CPU the probe still runs (the wiring, the subprocess, its report): only the facts need CUDA.
    devices = [f"cuda:{n}" for n in sorted({0, torch.cuda.device_count() - 1})] if cuda else ["cpu"]
    for device in devices:
        check, telemetry = f"CUDA contexts after a run on {device}", f"telemetry after a run on {device}"
        if not cuda:
            check, telemetry = "CUDA contexts after a run on cuda:N", "telemetry after a run on cuda:N"
        check, telemetry = check + " (item 2)", telemetry + " (item 7)"
        cmd = [sys.executable, "-m", "bench.gpu_probes", "context", device, root, os.path.join(tmp, f"ctx-{device}")]
        out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
        if out.returncode != 0:
            run.add(check, f"probe exit {out.returncode}: {_tail(out.stderr)}", "only the run's GPU", FAIL,
                    time.perf_counter() - t)
            continue
        r = json.loads(out.stdout.strip().splitlines()[-1])
        tel = r["telemetry"]
        if not cuda:
            run.add(check, f"probe ran on CPU ({r['reason']}), {len(r['contexts'])} CUDA devices", "only cuda:N",
                    NO_CUDA if r["reason"] == "completed" else FAIL, time.perf_counter() - t)
            run.add(telemetry, f"probe ran: {tel['reason'] or 'figures'} (tests/test_telemetry.py covers the "
                    "matching with a stand-in NVML)", "the run's GPU only; peak per window", NO_CUDA, 0)
            continue
        n = int(device.split(":")[1])
        holding = [i for i, (c, m) in enumerate(zip(r["contexts"], r["reserved"])) if c or m]
        run.add(check, f"context/memory on {holding} of {len(r['contexts'])} GPUs ({r['reason']})", f"only [{n}]",
                PASS if holding == [n] and r["reason"] == "completed" else FAIL, time.perf_counter() - t)
        t = time.perf_counter()
        if tel["reason"] is not None:
            run.add(telemetry, tel["reason"], "real NVML figures", FAIL, 0)
            continue
        peaks = tel["peaks"]
        # The 256 MiB freed just before the first sample is in its peak, and gone from the next.
        ok = (tel["with_torch"] == [tel["expected"]] and len(peaks[0]) == len(peaks[1]) == 1
              and peaks[1][0] < peaks[0][0])
        run.add(telemetry, f"torch figures on NVML GPUs {tel['with_torch']} (NVML says {device} is "
                f"{tel['expected']}), N/A elsewhere; peak {peaks[0]} then {peaks[1]} bytes",
                "the run's GPU only; peak per window", PASS if ok else FAIL, 0)


def check_torchrun(run: Run, s: Sizes, tmp: str) -> None:
    t = time.perf_counter()
    root = gpu_probes.make_root(os.path.join(tmp, "cli-data"), train_images=s.cli_batch * s.cli_steps,
                                val_images=s.cli_batch, size=max(s.image_size + 8, round(s.image_size * 256 / 299)))
    flags = ["--headless", "--root", root, "--num-classes", str(gpu_probes.CLASSES), "--epochs", "1",
             "--steps-per-epoch", str(s.cli_steps), "--val-batches", "1", "--batch-size", str(s.cli_batch),
             "--model", s.model, "--image-size", str(s.image_size), "--workers", str(s.workers),
             "--device", s.device, "--amp", s.amp, "--report-every", str(s.report)]
    plain = [sys.executable, "-m", "wvtui"]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1", "--module", "wvtui"]
    figures = {}
    for name, launcher in (("plain", plain), ("torchrun", torchrun)):
        out_dir = os.path.join(tmp, f"cli-{name}")
        out = subprocess.run([*launcher, *flags, "--out", out_dir], cwd=REPO, capture_output=True, text=True,
                             timeout=600)
        if out.returncode != 0:
            run.add("torchrun --nproc_per_node=1 against a plain run", f"{name} exit {out.returncode}: "
                    f"{_tail(out.stderr) or _tail(out.stdout)}", ">= 95% of plain", FAIL, time.perf_counter() - t)
            return
        figures[name] = train_rate(os.path.join(out_dir, "metrics.jsonl"))
    ratio = figures["torchrun"] / figures["plain"]
    run.add("torchrun --nproc_per_node=1 against a plain run",
            f"torchrun {figures['torchrun']:.1f} img/s, plain {figures['plain']:.1f} img/s ({ratio * 100:.1f}%)",
            ">= 95% of plain", verdict(run, ratio >= 0.95), time.perf_counter() - t)


def train_rate(metrics: str) -> float:
    """Median img/s of a run's "train" records, the first (warm-up) left out when there are more."""
    with open(metrics) as f:
        rates = [r["img_per_s"] for r in map(json.loads, f) if r.get("event") == "train"]
    if not rates:
        raise RuntimeError(f"no train records in {metrics}")
    return statistics.median(rates[1:] or rates)


def bench_argv(s: Sizes) -> list[str]:
    return ["--device", s.device, "--model", s.model, "--image-size", str(s.image_size), "--batch-size",
            str(s.batch), "--workers", str(s.workers), "--warmup", str(s.warmup), "--steps", str(s.steps),
            "--report-every", str(s.report), "--amp", s.amp, "--repeats", "1"]


def check_step(run: Run, s: Sizes, tmp: str, compile_mode: str) -> None:
    from bench import step

    t = time.perf_counter()
    if compile_mode == "on" and run.smoke:
        run.add("bench.step, compile on", "not run", "as compile off", "skipped (smoke: compiling takes minutes on CPU)", 0)
        return
    args, device = step.parse_args([*bench_argv(s), "--compile", compile_mode])
    for r in step.measure(args, device):
        name = f"bench.step, compile {'on' if r['compile'] else 'off'}"
        seconds, t = time.perf_counter() - t, time.perf_counter()
        m, loop = r["model"], r["loop"]
        run.add(f"{name}: full loop / model only", f"{loop['img_s']:.1f} / {m['img_s']:.1f} img/s "
                f"({r['ratio'] * 100:.1f}%)", ">= 95%", verdict(run, r["ratio"] >= step.TARGET), seconds)
        run.add(f"{name}: data-wait", f"{loop['data_wait'] * 100:.1f}% over {s.steps} steps after "
                f"{r['drain']} drained batches", "< 5%", verdict(run, loop["data_wait"] < 0.05), 0)
        peak = (lambda x: "n/a" if x is None else f"{x:.2f} GiB")
        run.add(f"{name}: peak memory, timed window", f"model only {peak(m['peak_gib'])}, loop {peak(loop['peak_gib'])}",
                "same window", INFO, 0)
        run.add(f"{name}: cudnn.benchmark / TF32", " ".join(f"{k}={v}" for k, v in m["flags"].items()),
                "same in both", PASS if r["same_flags"] else FAIL, 0)


def check_engine(run: Run, s: Sizes, tmp: str) -> None:
    from bench import engine

    t = time.perf_counter()
    args, device = engine.parse_args(bench_argv(s))
    m = engine.measure(args, device)
    run.add("bench.engine: Trainer overhead against a bare loop",
            f"{m['overhead'] * 100:+.1f}% ({m['best']['trainer']:.1f} vs {m['best']['bare']:.1f} img/s), "
            f"CPU {m['cpu_overhead'] * 100:+.1f}%", "< 3%", verdict(run, m["overhead"] < engine.TARGET),
            time.perf_counter() - t)


def check_console(run: Run, s: Sizes, tmp: str) -> None:
    from bench import console

    t = time.perf_counter()
    args = console.parse_args(["--device", s.device, "--model", s.model, "--image-size", str(s.image_size),
                               "--batch-size", str(s.batch), "--workers", str(s.workers), "--amp", s.amp,
                               "--steps", str(s.console_steps), "--report-every", str(s.report),
                               "--repeats", "1", "--report-interval-s", "0"])
    m = console.measure(args, log=lambda line: None)
    run.add("bench.console: console cost against headless",
            f"{m['cost_pct']:+.1f}% ({m['console']:.2f} vs {m['headless']:.2f} steps/s), UI thread "
            f"{m['ui_load'] * 100:.0f}% of a core", "< 3%", verdict(run, m["cost_pct"] < 3.0), time.perf_counter() - t)


def probe_root(s: Sizes, tmp: str) -> str:
    return gpu_probes.make_root(os.path.join(tmp, "probe-data"),
                                train_images=s.probe_batch * max(s.fp16_steps, s.sync_steps),
                                val_images=s.probe_batch * s.sync_val_batches, size=s.data_size)


CHECKS = {
    "cuda-tests": check_cuda_tests,
    "fp16": check_fp16,
    "syncs": check_syncs,
    "contexts": check_contexts,
    "torchrun": check_torchrun,
    "step": lambda run, s, tmp: check_step(run, s, tmp, "off"),
    "engine": check_engine,
    "console": check_console,
    "step-compile": lambda run, s, tmp: check_step(run, s, tmp, "on"),  # last: compiling takes longest
}
# Guesses of each check's seconds on one H200 (no GPU has run them yet): a check whose guess
# would end past the budget is not started, so the table is written inside the device's limit.
ESTIMATE_S = {"cuda-tests": 60, "fp16": 30, "syncs": 30, "contexts": 40, "torchrun": 70, "step": 50,
              "engine": 60, "console": 50, "step-compile": 180}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="CPU, tiny sizes: the same code paths, no real figures")
    p.add_argument("--results", metavar="FILE", default=None,
                   help="Markdown file whose marked GPU-check section is replaced (default: bench/RESULTS.md, "
                        "none with --smoke)")
    p.add_argument("--only", nargs="+", choices=list(CHECKS), metavar="CHECK",
                   help="run only these checks: " + " ".join(CHECKS))
    p.add_argument("--budget-s", type=float, default=None,
                   help="do not start a check that would end (by its estimate) after this many seconds "
                        "(default 480 on a GPU, none with --smoke)")
    args = p.parse_args(argv)
    if not args.smoke and not torch.cuda.is_available():
        p.exit(2, "gpu_check: error: CUDA is not available on this machine; use --smoke for the CPU run\n")
    results = args.results if args.results is not None else (None if args.smoke else os.path.join(REPO, "bench", "RESULTS.md"))
    if results is not None and not os.path.isdir(os.path.dirname(os.path.abspath(results))):
        p.exit(2, f"gpu_check: error: --results {results}: no such directory\n")
    budget = args.budget_s if args.budget_s is not None else (None if args.smoke else 480.0)
    run = Run(args.smoke, results, budget)
    s = sizes_for(args.smoke)
    if args.smoke:
        # A few cores shared with DataLoader workers: more torch threads than free cores stall
        # each other (bench/RESULTS.md); the CLI subprocesses inherit the same through the env.
        torch.set_num_threads(1)
        os.environ["OMP_NUM_THREADS"] = "1"
    with tempfile.TemporaryDirectory(prefix="wvtui-gpu-check-") as tmp:
        for name in args.only or list(CHECKS):
            t = time.perf_counter()
            if run.budget_s is not None and t - run.t0 + ESTIMATE_S[name] > run.budget_s:
                run.add(name, f"not started at {t - run.t0:.0f} s (takes ~{ESTIMATE_S[name]} s)", "",
                        f"skipped (time budget {run.budget_s:.0f} s)", 0)
            else:
                try:
                    CHECKS[name](run, s, tmp)
                except Exception as exc:  # one broken check must not hide the others' figures
                    run.add(name, f"{type(exc).__name__}: {_tail(str(exc), 200)}", "", "error",
                            time.perf_counter() - t)
            print(f"[{time.perf_counter() - run.t0:5.0f} s] {name}: {' | '.join(str(c) for c in run.rows[-1][1:4])}",
                  file=sys.stderr, flush=True)
            run.write()
    print(run.markdown())
    if results:
        print(f"\nwritten to {results}")
    return 1 if run.failed() else 0


if __name__ == "__main__":
    sys.exit(main())
