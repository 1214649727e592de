"""The command line: flags, and the `TrainConfig` they resolve to.

Layers, lowest first: TrainConfig's defaults (the reference recipe) < `--demo`'s settings <
flags given on the command line. Everything that can be checked before training starts is
checked here, so bad input costs one line (`UsageError`, exit 2) and not a half-started run.
Resuming with other hyperparameters is no conflict here: the trainer applies the flags given
now and reports the change (ConfigChanged), and config.json follows what is in effect.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time
from typing import Any, Callable

from core.config import TrainConfig

EXIT_USAGE = 2


class UsageError(Exception):
    """Bad input found by the CLI itself; printed as one line, exit 2."""


class OneLineParser(argparse.ArgumentParser):
    """argparse for every wvtui command: a bad argument is one line and exit 2, not a usage block."""

    def error(self, message: str) -> None:
        self.exit(EXIT_USAGE, f"wvtui: error: {message} (see {self.prog} --help)\n")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


_DEFAULTS = {f.name: f.default for f in dataclasses.fields(TrainConfig) if f.default is not dataclasses.MISSING}

EPILOG = """\
Commands:
  wvtui --root DIR ...            train (in the console, or headless)
  wvtui --root DIR ... --detach   train in the background; attach later
  wvtui attach [OUT]              the console of a live run (default: the newest under ./runs)
  wvtui ctl OUT COMMAND           pause|resume|checkpoint|evaluate|stop|status|lr VALUE
  wvtui ls [DIR]                  the runs under ./runs or DIR: live or how they ended
  wvtui report OUT...             compare finished runs
  wvtui noise OUT                 per-sample losses and clean probabilities

Options left out take the reference recipe's values (the demo's, with --demo).

The console is used when stdout is a terminal; --headless, or a pipe or file,
prints log lines instead. Both write OUT/config.json, OUT/metrics.jsonl and
OUT/checkpoints/{last,best}.pt.

An --out that already holds checkpoints is refused unless --resume continues
that run; --overwrite starts a new run there instead, deleting the old
checkpoints/*.pt when training starts (metrics.jsonl keeps the old records,
followed by the new run's).

Signals: SIGINT, SIGTERM, SIGHUP stop after saving a checkpoint (a second
SIGINT exits at once); SIGUSR1 saves a checkpoint and goes on. A signal that
arrives before training has started ends the run at once (nothing to save yet),
except SIGUSR1, which then saves once training runs. In the console a hang-up
(SSH dropped) does not stop the run: it continues headless, logging to
OUT/console.log, and `wvtui attach OUT` brings the console back. Every run
serves its console on OUT/control/wvtui.sock (only to its own user).

Exit codes: 0 finished; 1 failed (an error, a non-finite latest loss, or a
final checkpoint that could not be written); 2 bad arguments, dataset or
checkpoint; 128+N stopped by signal N (with the checkpoint on disk once
training had started)."""


def build_parser() -> argparse.ArgumentParser:
    d = _DEFAULTS
    p = OneLineParser(
        prog="wvtui",
        description="Train an image classifier on WebVision in a terminal console, or headless.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=EPILOG,
    )
    # default=None everywhere: a flag the user did not give is absent, so --demo's settings
    # apply underneath and explicit flags still win.
    a = p.add_argument
    a("--root", metavar="DIR", help="WebVision root (holds info/, google/, val_images_256/); not needed with --demo")
    a("--num-classes", type=int, metavar="N", help=f"train on the first N classes (default {d['num_classes']})")
    a("--epochs", type=int, metavar="N", help=f"default {d['epochs']}")
    a("--batch-size", type=int, metavar="N", help=f"images per step per process (default {d['batch_size']})")
    a("--lr", type=float, metavar="LR", help=f"SGD learning rate (default {d['lr']})")
    a("--momentum", type=float, metavar="M", help=f"default {d['momentum']}")
    a("--weight-decay", type=float, metavar="WD", help=f"default {d['weight_decay']}")
    a("--milestones", type=int, nargs="*", metavar="EPOCH",
      help="epochs at which the learning rate is multiplied by --gamma (default "
      + " ".join(map(str, d["milestones"])) + ")")
    a("--gamma", type=float, help=f"default {d['gamma']}")
    a("--model", metavar="NAME",
      help=f"inception_resnet_v2 or a torchvision classification model, e.g. resnet50 (default {d['model']})")
    a("--image-size", type=int, metavar="PX", help=f"training crop size (default {d['image_size']})")
    a("--workers", type=int, metavar="N",
      help="DataLoader processes per rank (default: the cores per local rank, minus one, up to 16)")
    a("--device", metavar="auto|cpu|cuda", help="default auto (CUDA when available)")
    a("--amp", choices=("auto", "bf16", "fp16", "off"), help="mixed precision (default auto: bf16 on CUDA, off on CPU)")
    a("--seed", type=int, help=f"default {d['seed']}")
    a("--out", metavar="DIR", help="run directory (default runs/<YYYYmmdd-HHMMSS>/)")
    a("--resume", metavar="PATH|auto", help="continue from a checkpoint file, or 'auto': the newest one in --out")
    a("--overwrite", action="store_true",
      help="start a new run in an --out that holds an earlier run's checkpoints: they are deleted "
      "when training starts (without this flag such an --out is refused)")
    a("--headless", action="store_true", default=None, help="plain log lines instead of the console")
    a("--detach", action="store_true",
      help="run in the background in its own session (a dropped SSH connection does not stop it), output to "
      "OUT/console.log; prints the run directory and the commands to attach or control it, then attaches")
    a("--no-attach", dest="attach", action="store_false", help="with --detach: do not attach, return at once")
    a("--demo", action="store_true", help="train on a generated synthetic dataset (cached) that learns in minutes on a CPU")
    a("--compile", action="store_true", default=None, help="torch.compile the model")
    a("--imagenet-val", metavar="DIR",
      help="also score the ILSVRC2012 val images of the trained classes at every evaluation "
      "(DIR/<wnid>/*.JPEG, or the flat release with its ground-truth file)")
    a("--no-tb", dest="tensorboard", action="store_false", default=None,
      help="do not write TensorBoard event files in OUT/tb/")
    a("--no-samples", dest="record_samples", action="store_false", default=None,
      help="do not record per-sample training losses and predictions (OUT/samples/, the noise pane, "
      "wvtui noise)")
    a("--flickr", dest="use_flickr", action="store_true", default=None, help="also train on the Flickr images")
    a("--steps-per-epoch", dest="max_steps_per_epoch", type=_positive_int, metavar="N",
      help="cap the steps of each epoch (quick runs)")
    a("--val-batches", dest="max_val_batches", type=_positive_int, metavar="N",
      help="cap the batches of each evaluation (quick runs)")
    a("--report-every", type=_positive_int, metavar="N",
      help=f"report the loss every N steps (or ~{d['report_interval_s']}s, whichever is later; default {d['report_every']})")
    return p


# Flags that are CLI behaviour, not TrainConfig fields.
_NOT_CONFIG = {"headless", "demo", "overwrite", "detach", "attach"}


def _default_out() -> str:
    base = os.path.join("runs", time.strftime("%Y%m%d-%H%M%S"))
    out, n = base, 1
    while os.path.exists(out):  # two runs started in the same second
        out, n = f"{base}-{n}", n + 1
    return out


def _run_dir_of(checkpoint: str) -> str | None:
    """OUT for OUT/checkpoints/x.pt when OUT looks like a run directory."""
    ckdir = os.path.dirname(os.path.abspath(checkpoint))
    out = os.path.dirname(ckdir)
    if os.path.basename(ckdir) == "checkpoints" and os.path.isfile(os.path.join(out, "config.json")):
        return out
    return None


def existing_checkpoints(out: str) -> list[str]:
    """The checkpoint files an earlier run left in OUT/checkpoints (temp files of a save excluded)."""
    ckdir = os.path.join(out, "checkpoints")
    try:
        names = os.listdir(ckdir)
    except OSError:
        return []
    return sorted(os.path.join(ckdir, n) for n in names if n.endswith(".pt") and not n.startswith("."))


def resolve_config(args: argparse.Namespace, log: Callable[[str], None] | None = None) -> TrainConfig:
    """TrainConfig from TrainConfig defaults < demo settings < explicit flags."""
    values: dict[str, Any] = {}
    if args.demo:
        from wvtui import demo

        values.update(demo.CONFIG)
        values["demo"] = True
        if args.root is None:
            try:
                values["root"] = demo.ensure_dataset(log=log)
                values["imagenet_val"] = os.path.join(values["root"], "imagenet_val")
            except OSError as exc:
                raise UsageError(f"--demo: cannot prepare the demo dataset: {exc}") from None
    for key, value in vars(args).items():
        if key not in _NOT_CONFIG and value is not None:
            values[key] = value
    if "root" not in values:
        raise UsageError("--root DIR is required (or --demo for a generated dataset)")
    if "milestones" in values:
        values["milestones"] = tuple(values["milestones"])

    values["out"] = resolve_out(values.get("out"), values.get("resume"))

    cfg = TrainConfig(**values)  # ValueError -> exit 2
    check_out(cfg.out)
    check_not_live(cfg.out)
    _check_earlier_run(cfg, overwrite=bool(getattr(args, "overwrite", False)))
    _check_model(cfg.model, cfg.image_size)
    _check_device(cfg.device)
    return cfg


def resolve_out(out: str | None, resume: str | None) -> str:
    """The run directory: --out, else the one a --resume checkpoint belongs to, else a new
    runs/<date-time>. Decided once: `--detach` fixes it before it starts the run."""
    if resume not in (None, "auto"):
        if not os.path.exists(resume):
            raise UsageError(f"--resume: no such file: {resume}")
        if os.path.isdir(resume):
            raise UsageError(f"--resume: {resume} is a directory; give a checkpoint file, or --out {resume} --resume auto")
        # Continue in the run directory the checkpoint belongs to, unless told otherwise.
        out = out or _run_dir_of(resume)
    if resume == "auto" and not out:
        raise UsageError("--resume auto needs --out DIR (the run directory to continue)")
    if not out:
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise UsageError("--out DIR is required with several processes, so that all ranks write one run directory")
        out = _default_out()
    return out


def check_not_live(out: str) -> None:
    """EndpointError (exit 2) naming the pid when a live wvtui serves OUT: before anything else
    is said about the checkpoints there, which are that run's."""
    from core.endpoint import check_free

    check_free(out)


def check_out(out: str) -> None:
    """Fail now, not at the first write minutes later; and create nothing for a run that may not start."""
    existing = os.path.abspath(out)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise UsageError(f"--out {out}: {existing} is not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(f"--out {out}: {existing} is not writable")


def _check_earlier_run(cfg: TrainConfig, *, overwrite: bool) -> None:
    """A new run must not write over checkpoints it did not load: they may hold days of training."""
    found = existing_checkpoints(cfg.out)
    if not found or overwrite or cfg.resume == "auto":
        return
    names = ", ".join(os.path.basename(p) for p in found)
    if cfg.resume is None:
        raise UsageError(
            f"--out {cfg.out} already holds checkpoints ({names}): pass --resume auto to continue that run, "
            "another --out for a new one, or --overwrite to start over there"
        )
    if os.path.dirname(os.path.abspath(cfg.resume)) != os.path.abspath(os.path.join(cfg.out, "checkpoints")):
        raise UsageError(
            f"--out {cfg.out} already holds checkpoints of another run ({names}) and --resume {cfg.resume} is not "
            "one of them: pass another --out, or --overwrite to replace them"
        )


def _check_model(name: str, image_size: int) -> None:
    from core.model import available_models, check_input_size

    if name.strip().lower() not in available_models():
        raise UsageError(
            f"--model: unknown model {name!r}; use inception_resnet_v2, resnet18, resnet50, "
            "efficientnet_b0 or another torchvision classification model"
        )
    try:
        check_input_size(name, None, image_size)  # before anything is built or loaded
    except ValueError as e:
        raise UsageError(str(e)) from None


def _check_device(device: str) -> None:
    if not device.startswith("cuda"):
        return
    import torch

    if not torch.cuda.is_available():
        raise UsageError(f"--device {device}: CUDA is not available on this machine (use --device cpu or auto)")
    if ":" in device:
        try:
            index = int(device.split(":", 1)[1])
        except ValueError:
            raise UsageError(f"--device {device}: expected cuda:N") from None
        if not 0 <= index < torch.cuda.device_count():
            raise UsageError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s)")
