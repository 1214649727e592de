"""The `wvtui` command as a user meets it: bad input gets one line and exit 2 (numbers a run cannot
train with, an --out that holds another run, checkpoints none of which can be used); --demo;
a disk too full for the checkpoint is exit 1, said in words. Signals are test_signals.py's."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time

import pytest

from core.checkpoint import load_checkpoint
from wvtui.cli import main
from wvtui_process import QUICK, cli_env, run_wvtui


def assert_usage_error(code, err, *needles):
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("wvtui: error: ")
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], lines[0]


# --- bad input -----------------------------------------------------------------------------

@pytest.mark.parametrize("args, needle", [
    (["--root", "x", "--no-such-flag"], "--no-such-flag"),
    (["--root", "x", "--batch-size", "-4"], "--batch-size"),
    (["--root", "x", "--amp", "bogus"], "--amp"),
    (["--root", "x", "--epochs", "many"], "--epochs"),
    (["--root", "x", "--steps-per-epoch", "0"], "--steps-per-epoch"),
    (["--root", "x", "--milestones", "60", "30"], "--milestones"),
    (["--epochs", "3"], "--root"),
    (["--root", "x", "--resume", "auto"], "--out"),
])
def test_bad_arguments_exit_2_with_one_line(args, needle, capsys):
    code = main(args)
    assert_usage_error(code, capsys.readouterr().err, needle)


def test_bad_argument_in_a_real_process_has_no_traceback(tmp_path):
    proc = run_wvtui(tmp_path, "--root", str(tmp_path), "--amp", "bogus")
    assert_usage_error(proc.returncode, proc.stderr, "--amp", "bogus")
    assert proc.stdout == ""


def test_missing_root_names_the_path(tmp_path, capsys):
    missing = str(tmp_path / "nowhere")
    assert_usage_error(main(["--root", missing]), capsys.readouterr().err, missing)


def test_root_that_is_a_file_names_the_path(tmp_path, capsys):
    f = tmp_path / "afile"
    f.write_text("x")
    assert_usage_error(main(["--root", str(f)]), capsys.readouterr().err, str(f), "not a directory")


def test_root_without_an_info_file_names_it(synthetic_root, tmp_path, capsys):
    root = str(tmp_path / "root")
    shutil.copytree(os.path.join(synthetic_root, "info"), os.path.join(root, "info"))
    os.remove(os.path.join(root, "info", "val_filelist.txt"))
    assert_usage_error(main(["--root", root]), capsys.readouterr().err,
                       os.path.join(root, "info", "val_filelist.txt"))


def test_too_many_classes(synthetic_root, tmp_path, capsys):
    code = main(["--root", synthetic_root, "--num-classes", "50", "--out", str(tmp_path / "r")])
    assert_usage_error(code, capsys.readouterr().err, "num_classes 50")


def test_out_under_a_file(tmp_path, capsys):
    f = tmp_path / "afile"
    f.write_text("x")
    code = main(["--root", str(tmp_path), "--out", str(f / "run")])
    assert_usage_error(code, capsys.readouterr().err, "--out", "is not a directory")


def test_device_cuda_without_cuda(tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    code = main(["--root", str(tmp_path), "--out", str(tmp_path / "r"), "--device", "cuda"])
    assert_usage_error(code, capsys.readouterr().err, "--device cuda", "CUDA is not available")


def test_unknown_model(synthetic_root, tmp_path, capsys):
    code = main(["--root", synthetic_root, "--num-classes", "4", "--model", "resnet_9000", "--out", str(tmp_path)])
    assert_usage_error(code, capsys.readouterr().err, "resnet_9000")


def test_image_size_too_small_for_inception_resnet_v2(synthetic_root, tmp_path, capsys):
    code = main(["--root", synthetic_root, "--num-classes", "4", "--image-size", "64", "--workers", "0", "--batch-size", "8",
                 "--out", str(tmp_path)])
    assert_usage_error(code, capsys.readouterr().err, "--image-size 64", "75")


@pytest.mark.parametrize("model, size, says", [("vit_b_16", "96", "takes --image-size 224 only"),
                                              ("inception_v3", "64", "use 75 or more")])
def test_a_size_the_model_cannot_take_is_refused_before_anything_is_built(synthetic_root, tmp_path, capsys,
                                                                         model, size, says):
    code = main(["--root", synthetic_root, "--num-classes", "4", "--model", model, "--image-size", size,
                 "--out", str(tmp_path / "run")])
    assert_usage_error(code, capsys.readouterr().err, model, says)
    assert not os.path.exists(tmp_path / "run")


def test_resume_missing_file(synthetic_root, tmp_path, capsys):
    missing = str(tmp_path / "nope.pt")
    code = main(["--root", synthetic_root, "--num-classes", "4", "--resume", missing])
    assert_usage_error(code, capsys.readouterr().err, missing)


def test_help_works_as_a_module(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "wvtui", "--help"], cwd=tmp_path, env=cli_env(tmp_path),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0
    for flag in ("--root", "--num-classes", "--epochs", "--batch-size", "--lr", "--momentum", "--weight-decay",
                 "--milestones", "--gamma", "--model", "--image-size", "--workers", "--device", "--amp",
                 "--seed", "--out", "--resume", "--headless", "--demo"):
        assert flag in proc.stdout


@pytest.fixture(scope="module")
def short_run(synthetic_root, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("short")
    out = str(tmp / "run")
    proc = run_wvtui(tmp, "--root", synthetic_root, "--num-classes", "4", "--epochs", "1", "--steps-per-epoch", "2",
                     "--val-batches", "1", "--out", out, "--headless", *QUICK)
    assert proc.returncode == 0, proc.stderr
    return out


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("change, needle", [
    (["--num-classes", "3"], "class"),
    (["--model", "resnet34"], "model"),
])
def test_resume_from_another_model_or_class_count(short_run, synthetic_root, tmp_path, change, needle):
    args = ["--root", synthetic_root, "--num-classes", "4", "--epochs", "2", "--out", str(tmp_path / "r"),
            "--headless", *QUICK, "--resume", os.path.join(short_run, "checkpoints", "last.pt"), *change]
    proc = run_wvtui(tmp_path, *args)
    assert_usage_error(proc.returncode, proc.stderr, needle)


# --- --demo ---------------------------------------------------------------------------------------

TINY_DEMO = dict(classes=3, queries_per_class=1, images_per_query=6, val_per_class=2, size=40, seed=0,
                 imagenet_per_class=1)


def test_demo_dataset_is_generated_once_into_the_cache(tmp_path, monkeypatch):
    from wvtui import demo

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(demo, "DATASET", TINY_DEMO)
    # A half-written tree left by an interrupted first run is not trusted.
    os.makedirs(os.path.join(demo.cache_dir(), "info"))
    root = demo.ensure_dataset()
    assert root == str(tmp_path / "cache" / "wvtui" / demo.DEMO_VERSION)
    assert os.path.isfile(os.path.join(root, "synthetic.json"))
    assert os.listdir(os.path.dirname(root)) == [demo.DEMO_VERSION]  # no temp dirs left behind

    def must_not_generate(*a, **k):
        raise AssertionError("the cached dataset was generated again")

    monkeypatch.setattr("core.synthetic.make_webvision", must_not_generate)
    assert demo.ensure_dataset() == root


def test_demo_settings_apply_under_explicit_flags(tmp_path, monkeypatch):
    from wvtui import demo
    from wvtui.options import build_parser, resolve_config

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(demo, "DATASET", TINY_DEMO)
    cfg = resolve_config(build_parser().parse_args(["--demo", "--epochs", "1", "--lr", "0.01",
                                                    "--out", str(tmp_path / "r")]))
    assert cfg.demo is True and cfg.root == demo.cache_dir()
    assert (cfg.epochs, cfg.lr) == (1, 0.01)  # explicit flags win
    assert (cfg.model, cfg.image_size, cfg.batch_size, cfg.num_classes) == (
        demo.CONFIG["model"], demo.CONFIG["image_size"], demo.CONFIG["batch_size"], demo.CONFIG["num_classes"])
    plain = resolve_config(build_parser().parse_args(["--root", "x", "--out", str(tmp_path / "r")]))
    assert plain.demo is False and plain.model == "inception_resnet_v2" and plain.epochs == 80


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_demo_run_uses_the_cached_dataset_and_says_it_is_a_demo(tmp_path):
    from core.synthetic import make_webvision
    from wvtui import demo

    # Another process (this test) generated the cache: the run must reuse it, not regenerate.
    cached = tmp_path / "cache" / "wvtui" / demo.DEMO_VERSION
    make_webvision(str(cached), **dict(TINY_DEMO, classes=demo.CONFIG["num_classes"]))
    out = str(tmp_path / "run")
    proc = run_wvtui(tmp_path, "--demo", "--headless", "--epochs", "1", "--steps-per-epoch", "2", "--batch-size", "8",
                     "--image-size", "32", "--workers", "0", "--out", out)
    assert proc.returncode == 0, proc.stderr
    assert "Generating" not in proc.stderr
    assert proc.stdout.startswith("wvtui (demo): ")
    assert f"Dataset {cached}:" in proc.stdout
    assert re.search(r"Average Loss: .* Acc@1 ", proc.stdout)
    import json

    with open(os.path.join(out, "config.json")) as f:
        assert json.load(f)["demo"] is True


def test_default_out_and_the_run_dir_of_a_resumed_checkpoint(tmp_path, monkeypatch):
    from wvtui.options import build_parser, resolve_config

    monkeypatch.chdir(tmp_path)
    cfg = resolve_config(build_parser().parse_args(["--root", "data"]))
    assert re.fullmatch(r"runs/\d{8}-\d{6}", cfg.out)
    monkeypatch.setattr(time, "strftime", lambda fmt: "20260101-120000")
    os.makedirs("runs/20260101-120000")
    # Two runs started in the same second get two directories.
    assert resolve_config(build_parser().parse_args(["--root", "data"])).out == "runs/20260101-120000-1"

    # --resume OUT/checkpoints/last.pt continues writing OUT, unless --out says otherwise.
    run = tmp_path / "old"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.json").write_text("{}")
    (run / "checkpoints" / "last.pt").write_bytes(b"checked when the trainer loads it")
    resume = str(run / "checkpoints" / "last.pt")
    assert resolve_config(build_parser().parse_args(["--root", "data", "--resume", resume])).out == str(run)
    other = resolve_config(build_parser().parse_args(["--root", "data", "--resume", resume, "--out", "new"]))
    assert other.out == "new"


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_resume_from_a_file_that_is_not_a_checkpoint(synthetic_root, tmp_path, capsys):
    bogus = tmp_path / "last.pt"
    bogus.write_bytes(b"PK\x03\x04 this is no checkpoint")
    code = main(["--root", synthetic_root, "--num-classes", "4", "--out", str(tmp_path / "r"), "--resume", str(bogus),
                 *QUICK])
    assert_usage_error(code, capsys.readouterr().err, str(bogus))


# --- numbers that cannot train, an --out that holds another run, the workers default -----------------

@pytest.mark.parametrize("args, needle", [
    (["--lr", "nan"], "--lr"),
    (["--lr", "inf"], "--lr"),
    (["--lr", "-0.1"], "--lr"),
    (["--gamma", "-0.1"], "--gamma"),
    (["--gamma", "nan"], "--gamma"),
    (["--milestones", "-5", "10"], "--milestones"),
    (["--momentum", "nan"], "--momentum"),
    (["--weight-decay", "inf"], "--weight-decay"),
    (["--weight-decay", "nan"], "--weight-decay"),
])
def test_numbers_a_run_cannot_train_with_are_refused_up_front(args, needle, tmp_path, capsys):
    code = main(["--root", str(tmp_path), "--out", str(tmp_path / "r"), *args])
    assert_usage_error(code, capsys.readouterr().err, needle)


def _earlier_run(tmp_path):
    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    (out / "config.json").write_text("{}")
    (out / "checkpoints" / "last.pt").write_bytes(b"days of training")
    return out


def test_an_out_holding_checkpoints_is_refused_without_resume(synthetic_root, tmp_path, capsys):
    out = _earlier_run(tmp_path)
    code = main(["--root", synthetic_root, "--num-classes", "4", "--out", str(out), *QUICK])
    assert_usage_error(code, capsys.readouterr().err, str(out), "last.pt", "--resume auto", "another --out",
                       "--overwrite")
    assert (out / "checkpoints" / "last.pt").read_bytes() == b"days of training"


def test_resuming_a_checkpoint_of_another_run_into_an_out_with_checkpoints_is_refused(synthetic_root, tmp_path, capsys):
    out = _earlier_run(tmp_path)
    other = tmp_path / "other.pt"
    other.write_bytes(b"x")
    code = main(["--root", synthetic_root, "--num-classes", "4", "--out", str(out), "--resume", str(other), *QUICK])
    assert_usage_error(code, capsys.readouterr().err, str(out), "--overwrite")


def test_help_says_what_overwrite_does(capsys):
    from wvtui.options import build_parser

    text = " ".join(build_parser().format_help().split())
    assert "--overwrite" in text and "deleted when training starts" in text


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_overwrite_starts_a_new_run_over_the_old_checkpoints(synthetic_root, tmp_path):
    out = _earlier_run(tmp_path)
    proc = run_wvtui(tmp_path, "--root", synthetic_root, "--num-classes", "4", "--epochs", "1", "--steps-per-epoch", "2",
                     "--val-batches", "1", "--out", str(out), "--overwrite", "--headless", *QUICK)
    assert proc.returncode == 0, proc.stderr
    assert f"deleting the earlier run's checkpoints: {out / 'checkpoints' / 'last.pt'}" in proc.stderr
    assert load_checkpoint(str(out / "checkpoints" / "last.pt"))["step"] == 2


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_resume_auto_with_only_unusable_checkpoints_names_each_file(synthetic_root, tmp_path):
    out = _earlier_run(tmp_path)
    (out / "checkpoints" / "best.pt").write_bytes(b"PK\x03\x04 not a checkpoint either")
    proc = run_wvtui(tmp_path, "--root", synthetic_root, "--num-classes", "4", "--epochs", "1", "--steps-per-epoch", "1",
                     "--out", str(out), "--resume", "auto", "--headless", *QUICK, timeout=100)
    assert_usage_error(proc.returncode, proc.stderr, str(out / "checkpoints" / "last.pt"),
                       str(out / "checkpoints" / "best.pt"))
    assert (out / "checkpoints" / "last.pt").read_bytes() == b"days of training"


def test_default_workers_share_the_cores_among_local_ranks(monkeypatch):
    from core.config import default_workers

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(64)))
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert default_workers() == 16
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")
    assert default_workers() == 7
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "64")
    assert default_workers() == 1
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0})
    monkeypatch.delenv("LOCAL_WORLD_SIZE")
    assert default_workers() == 1


# --- a full disk ------------------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_full_disk_ends_with_exit_1_and_says_the_checkpoint_was_not_written(synthetic_root, tmp_path, small_disk):
    out = small_disk("8m") / "run"  # room for the logs, not for one 90 MB checkpoint
    proc = run_wvtui(tmp_path, "--root", synthetic_root, "--num-classes", "4", "--epochs", "1", "--steps-per-epoch", "2",
                     "--val-batches", "1", "--out", str(out), "--headless", *QUICK)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("wvtui: ") and "the checkpoint could not be written" in last, proc.stderr
    assert "no checkpoint of this run is on disk" in last
    assert not re.search(r"saved to .*\.pt", proc.stdout), proc.stdout  # no message claims a file that is not there
    assert not os.path.exists(out / "checkpoints" / "last.pt") and not os.path.exists(out / "checkpoints" / "best.pt")
    with open(out / "metrics.jsonl") as f:
        assert all(json.loads(line) for line in f)  # every line valid JSON, up to the end


# --- subcommands, and a run directory another wvtui serves ----------------------------------------

def test_help_lists_the_subcommands(capsys):
    assert main(["--help"]) == 0
    text = capsys.readouterr().out
    for command in ("wvtui attach", "wvtui ctl", "wvtui ls", "wvtui report", "wvtui noise", "--detach"):
        assert command in text


def test_an_out_that_a_live_wvtui_serves_is_refused_naming_its_pid(tmp_path, capsys):
    import socket

    out = tmp_path / "run"
    (out / "control").mkdir(parents=True)
    sock_path = str(out / "control" / "wvtui.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(sock_path)
    server.listen(4)
    (out / "control" / "endpoint.json").write_text(json.dumps({"protocol": 1, "pid": 4242, "socket": sock_path}))
    try:
        code = main(["--root", str(tmp_path), "--out", str(out), "--resume", "auto"])
    finally:
        server.close()
    assert_usage_error(code, capsys.readouterr().err, "pid 4242", str(out))
