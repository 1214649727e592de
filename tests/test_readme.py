"""The README is executable truth: every command in its `sh` blocks runs as printed.

Each command has a plan below: run it as printed (a dataset path swapped for a tiny synthetic
tree, and tiny sizes appended where the real run takes hours), run it with `--help` or
`--collect-only` where running it for real would be the whole job, or skip it with the reason.
A command added to the README without a plan fails `test_every_readme_command_has_a_plan`.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess

import pytest

from core.synthetic import make_webvision
from wvtui_process import REPO, cli_env

README = os.path.join(REPO, "README.md")
TINY = "--num-classes 4 --epochs 1 --steps-per-epoch 2 --val-batches 1 --model resnet18 --image-size 32 " \
       "--batch-size 8 --workers 0"


def readme_commands() -> list[str]:
    """The commands of the README's ```sh blocks, in order: continuation lines joined, comments
    dropped, `a && b` as two commands."""
    with open(README, encoding="utf-8") as f:
        text = f.read()
    commands: list[str] = []
    for block in re.findall(r"^```sh\n(.*?)^```", text, re.S | re.M):
        for line in re.sub(r"\\\n\s*", "", block).splitlines():
            line = re.sub(r"(^|\s+)#.*$", "", line).strip()  # no command here holds a quoted '#'
            for part in line.split(" && "):
                if part.strip() and part.strip() not in commands:
                    commands.append(part.strip())
    return commands


def skip(reason: str):
    return ("skip", reason)


def run(shell: str, *, slow: bool = True, check=None):
    """Run `shell` (with {root}, {tmp}, {repo} filled in) in a fresh directory; `check(tmp, proc)`."""
    return ("run", shell, slow, check)


def _trained(out: str):
    def check(tmp, proc):
        from core.checkpoint import load_checkpoint

        assert load_checkpoint(os.path.join(tmp, out, "checkpoints", "last.pt"))["step"] >= 2

    return check


def _finished_in(log: str):
    def check(tmp, proc):
        with open(os.path.join(tmp, log)) as f:
            assert "Finished (completed)" in f.read()

    return check


def _scored_imagenet(out: str):
    def check(tmp, proc):
        from wvtui_process import records

        (ev,) = records(os.path.join(tmp, out), "eval")
        assert ev["imagenet_images"] == 4 and ev["imagenet_acc1"] is not None, ev

    return check


def _reported(tmp, proc):
    with open(os.path.join(tmp, "report.md")) as f:
        text = f.read()
    assert "| run | runs/mini | runs/other |" in text and "**0.01**" in text, text


def _collected(tmp, proc):
    assert re.search(r"\d+ tests? collected", proc.stdout) or re.search(r"\d+/\d+ tests? collected", proc.stdout), \
        proc.stdout[-500:]


def _deselects_slow(tmp, proc):
    m = re.search(r"(\d+)/(\d+) tests collected \((\d+) deselected\)", proc.stdout)
    assert m and int(m.group(3)) > 0, proc.stdout[-500:]


def part_of(command: str):
    """Run as printed inside `command`'s plan (which must contain it)."""
    return ("part", command)


DETACHED = "wvtui --root ~/data/webvision1.0 --out runs/mini --detach"
DETACHED_SEQUENCE = ["wvtui ls", "wvtui ctl runs/mini checkpoint", "wvtui ctl runs/mini lr 0.01",
                     "wvtui ctl runs/mini status", "wvtui ctl runs/mini stop"]


def _controlled(out: str):
    def check(tmp, proc):
        from helpers import wait_until
        from wvtui_process import records

        run = os.path.join(tmp, out)
        # ctl stop returns once the final checkpoint is written; the run's last records follow.
        wait_until(lambda: records(run, "finished"), timeout=60, what="the stopped run's finished record")
        applied = [r["command"] for r in records(run, "command")]
        assert applied == ["checkpoint", "lr", "stop"], applied
        assert [r["new"] for r in records(run, "lr_set")] == [0.01]
        assert records(run, "finished")[-1]["reason"] == "stopped"
        assert '"state": "running"' in proc.stdout or '"state":"running"' in proc.stdout, proc.stdout[-800:]
        assert "live" in proc.stdout and out in proc.stdout, proc.stdout[-800:]  # wvtui ls

    return check


MULTINODE = skip("needs two machines with 8 GPUs each and the dataset; tests/test_distributed.py runs torchrun on CPUs")
PLAN = {
    "pip install -e '.[test]'": skip("installs into the environment other tests run in; .ci/run runs it on a fresh clone"),
    "wvtui --demo": run("wvtui --demo --headless --epochs 1 --steps-per-epoch 2 --val-batches 1 --batch-size 8 "
                        "--image-size 32 --workers 0 --out runs/demo", check=_trained("runs/demo")),
    "python -m pytest -q": run("cd {repo} && python -m pytest -q --collect-only -p no:cacheprovider", check=_collected),
    "pip install -e .": skip("installs into the environment other tests run in; .ci/run runs it on a fresh clone"),
    "wvtui --root ~/data/webvision1.0": run(f"wvtui --root {{root}} {TINY} --out runs/first",
                                            check=_trained("runs/first")),
    "wvtui --root ~/data/webvision1.0 --out runs/mini --headless > train.log":
        run(f"wvtui --root {{root}} --out runs/mini --headless {TINY} > train.log", check=_finished_in("train.log")),
    "wvtui --root ~/data/webvision1.0 --out runs/mini --resume auto":
        run(f"wvtui --root {{root}} --out runs/mini --headless {TINY} > /dev/null && "
            f"wvtui --root {{root}} --out runs/mini --resume auto {TINY.replace('--epochs 1', '--epochs 2')}",
            check=_trained("runs/mini")),
    # One detached run serves the whole sequence of the "Detach and attach" section, as printed.
    DETACHED: run(" && ".join([f"wvtui --root {{root}} --out runs/mini --detach {TINY.replace('--epochs 1', '--epochs 400')}",
                              *DETACHED_SEQUENCE]), check=_controlled("runs/mini")),
    **{command: part_of(DETACHED) for command in DETACHED_SEQUENCE},
    "wvtui attach runs/mini": skip("opens the console on a terminal; tests/test_attach.py attaches in a pty and "
                                   "under Pilot, tests/test_detach.py attaches after --detach"),
    "torchrun --nproc_per_node=4 -m wvtui --root /data/webvision --out runs/wv4 --headless":
        skip("needs 4 GPUs and the dataset; tests/test_distributed.py runs the same under torchrun on CPUs"),
    "torchrun --nnodes=2 --node_rank=0 --nproc_per_node=8 --rdzv_backend=c10d "
    "--rdzv_endpoint=node0.example.org:29500 --rdzv_id=wv-run-1 -m wvtui --root /data/webvision "
    "--out /shared/runs/wv16 --headless": MULTINODE,
    "torchrun --nnodes=2 --node_rank=1 --nproc_per_node=8 --rdzv_backend=c10d "
    "--rdzv_endpoint=node0.example.org:29500 --rdzv_id=wv-run-1 -m wvtui --root /data/webvision "
    "--out /shared/runs/wv16 --headless": MULTINODE,
    **{f"python bench/{name}.py": run(f"cd {{repo}} && python bench/{name}.py --help")
       for name in ("index", "loader", "memory", "step", "engine", "console", "noise")},
    "python -m core.synthetic OUT_DIR --classes 5 --queries-per-class 2 --images-per-query 20 --val-per-class 10 "
    "--size 96": run("python -m core.synthetic wv --classes 5 --queries-per-class 2 --images-per-query 20 "
                     "--val-per-class 10 --size 96 && test -f wv/info/val_filelist.txt"),
    'python -m pytest -m "not slow" -q': run('cd {repo} && python -m pytest -m "not slow" -q --collect-only -p no:cacheprovider',
                                             check=_deselects_slow),
    "python -m pytest tests/test_snapshots.py --snapshot-update":
        run("cd {repo} && python -m pytest tests/test_snapshots.py --snapshot-update --collect-only -q "
            "-p no:cacheprovider", check=_collected),
    "lint-imports": run("cd {repo} && lint-imports"),
    "wvtui --root ~/data/webvision1.0 --imagenet-val ~/data/imagenet/val":
        run(f"wvtui --root {{root}} --imagenet-val {{root}}/imagenet_val {TINY} --out runs/both --headless",
            check=_scored_imagenet("runs/both")),
    "wvtui report runs/mini runs/other":
        run(f"wvtui --root {{root}} --out runs/mini --headless {TINY} > /dev/null && "
            f"wvtui --root {{root}} --out runs/other --headless {TINY} --lr 0.01 > /dev/null && "
            "wvtui report runs/mini runs/other > report.md", check=_reported),
    "tensorboard --logdir runs --port 6006":
        skip("a server that runs until stopped; tests/test_results_sinks.py reads the event files with "
             "tensorboard's own reader"),
    "ssh -L 6006:localhost:6006 server": skip("runs on the user's own machine, towards the GPU server"),
    "wvtui noise runs/mini": run(f"wvtui --root {{root}} --out runs/mini --headless {TINY} > /dev/null && "
                                 "wvtui noise runs/mini > noise.md && grep -q '### Noisiest queries' noise.md"),
    "wvtui noise runs/mini --csv noise.csv":
        run(f"wvtui --root {{root}} --out runs/mini --headless {TINY} > /dev/null && "
            "wvtui noise runs/mini --csv noise.csv && "
            "head -1 noise.csv | grep -qx 'index,path,label,query,loss,predicted,clean_prob'"),
    "wvtui noise runs/mini --epoch 1 --csv -":
        run(f"wvtui --root {{root}} --out runs/mini --headless {TINY} > /dev/null && "
            "wvtui noise runs/mini --epoch 1 --csv - > rows.csv && test $(wc -l < rows.csv) -gt 1"),
    "python -m bench.gpu_check --smoke": skip("tests/test_gpu_check.py runs exactly this, into a temporary "
                                              "results file instead of bench/RESULTS.md"),
}


def test_every_readme_command_has_a_plan():
    commands = readme_commands()
    assert "wvtui --demo" in commands and "python -m pytest -q" in commands  # the extraction works
    assert [c for c in commands if c not in PLAN] == [], "README commands without a plan in this test"
    assert [c for c in PLAN if c not in commands] == [], "plans for commands the README no longer prints"
    for command, plan in PLAN.items():
        if plan[0] == "part":
            assert PLAN[plan[1]][0] == "run" and command in PLAN[plan[1]][1], f"{command!r} is not run in {plan[1]!r}"


def test_the_first_two_commands_stay_as_they_are():
    with open(README, encoding="utf-8") as f:
        head = f.read().split("```sh\n", 1)[1].split("```", 1)[0]
    assert head.splitlines() == ["pip install -e '.[test]' && wvtui --demo",
                                 "pip install -e '.[test]' && python -m pytest -q"]


def test_ci_runs_exactly_the_readme_test_command():
    with open(os.path.join(REPO, ".ci", "run"), encoding="utf-8") as f:
        lines = [line.strip() for line in f if line.strip() and not line.startswith("#")]
    assert lines[-1] == "python -m pytest -q"
    assert "python -m pytest -q" in readme_commands()


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory):
    return make_webvision(str(tmp_path_factory.mktemp("readme") / "wv"),
                          classes=4, queries_per_class=1, images_per_query=16, val_per_class=2, size=40, seed=0,
                          imagenet_per_class=1)


def _runnable():
    for command, plan in PLAN.items():
        marks = [pytest.mark.slow] if plan[0] == "run" and plan[2] else []
        if plan[0] == "skip":
            marks = [pytest.mark.skip(reason=plan[1])]
        if plan[0] == "part":
            continue  # runs in the plan that holds it
        yield pytest.param(command, marks=marks, id=command[:60])


def _kill_live_runs(root) -> None:
    import signal

    from core.runinfo import list_runs

    for info in list_runs(str(root)):
        if info.state == "live" and info.pid:
            os.kill(info.pid, signal.SIGKILL)


@pytest.mark.timeout(600)
@pytest.mark.parametrize("command", list(_runnable()))
def test_readme_command_runs(command, tiny_root, tmp_path):
    _, shell, _, check = PLAN[command]
    from wvtui import demo

    if "--demo" in shell:  # it finds a (tiny) demo dataset in its cache instead of generating the real one
        make_webvision(str(tmp_path / "cache" / "wvtui" / demo.DEMO_VERSION), classes=demo.CONFIG["num_classes"],
                       queries_per_class=1, images_per_query=6, val_per_class=2, size=40, seed=0,
                       imagenet_per_class=1)
    shell = shell.format(root=shlex.quote(tiny_root), repo=shlex.quote(REPO), tmp=shlex.quote(str(tmp_path)))
    try:
        proc = subprocess.run(["bash", "-c", f"set -e; {shell}"], cwd=tmp_path, env=cli_env(tmp_path),
                              capture_output=True, text=True, timeout=540)
    finally:
        _kill_live_runs(tmp_path / "runs")  # a detached run outlives its shell when a step failed
    assert proc.returncode == 0, f"{shell}\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
    assert "Traceback" not in proc.stderr
    if check is not None:
        check(str(tmp_path), proc)
