"""`wvtui ctl OUT COMMAND [VALUE]`: control a live run from a script, through its control socket.

    wvtui ctl runs/a checkpoint          # waits until the checkpoint is on disk
    wvtui ctl runs/a lr 0.01             # from the next step on
    wvtui ctl runs/a pause | resume | evaluate | stop
    wvtui ctl runs/a status | jq .step   # one JSON object: state, epoch, step, lr, best Acc@1, ...

Each command is applied by the trainer at its next step boundary; ctl waits for that (as long
as it takes, or --timeout S) and prints one line: what was applied, at which epoch and step.

Exit codes: 0 applied (status: printed); 1 the run is not alive (nothing serves OUT, or the run
ended before applying the command), or --timeout passed; 2 a bad command or value (checked
before connecting), or the run refused it.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from typing import Any

from wvtui.options import OneLineParser

__all__ = ["main", "status_of", "COMMANDS"]

EXIT_OK, EXIT_NOT_LIVE, EXIT_USAGE = 0, 1, 2
COMMANDS = ("pause", "resume", "checkpoint", "evaluate", "stop", "status", "lr")
CONNECT_TIMEOUT = 10.0
ENDED = "the run has ended"  # core.endpoint's refusal once the run finished


class _Bad(Exception):
    pass


def _parse(argv: Sequence[str] | None):
    p = OneLineParser(prog="wvtui ctl", description=__doc__.split(": ", 1)[1],
                      formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", metavar="OUT", help="the run directory (--out of the run)")
    p.add_argument("command", metavar="COMMAND", help="pause | resume | checkpoint | evaluate | stop | status | lr VALUE")
    p.add_argument("value", nargs="?", metavar="VALUE", help="the new learning rate (lr only)")
    p.add_argument("--timeout", type=float, metavar="S", help="give up after S seconds (default: wait until applied)")
    args = p.parse_args(argv)
    if args.command not in COMMANDS:
        raise _Bad(f"unknown command {args.command!r}: use one of {', '.join(COMMANDS[:-1])} or lr VALUE")
    if args.command == "lr":
        if args.value is None:
            raise _Bad("lr needs a VALUE, the new learning rate (e.g. wvtui ctl OUT lr 0.01)")
        try:
            value = float(args.value)
        except ValueError:
            raise _Bad(f"lr: expected a number, got {args.value!r}") from None
        if not math.isfinite(value) or value <= 0:
            raise _Bad(f"lr must be a finite number > 0, got {args.value}")
        args.value = value
    elif args.value is not None:
        raise _Bad(f"{args.command} takes no value, got {args.value!r}")
    if args.timeout is not None and not (math.isfinite(args.timeout) and args.timeout > 0):
        raise _Bad(f"--timeout must be a number of seconds > 0, got {args.timeout}")
    return args


def status_of(hello: dict[str, Any]) -> dict[str, Any]:
    """The one JSON object `ctl status` prints, from the server's hello."""
    config = hello.get("config") or {}
    s: dict[str, Any] = {
        "pid": hello.get("pid"), "state": hello.get("state"), "epoch": None, "step": None,
        "steps_per_epoch": None, "epochs": config.get("epochs"), "lr": config.get("lr"), "img_per_s": None,
        "best_acc1": None, "best_acc5": None, "elapsed_s": None, "last_checkpoint": None,
        "out_dir": hello.get("out_dir"), "clients": hello.get("clients"),
    }
    for r in hello.get("history") or ():
        kind = r.get("event")
        if kind == "started":
            spe, done, at = r.get("steps_per_epoch"), r.get("start_epoch"), r.get("start_step")
            s["steps_per_epoch"], s["step"] = spe, at
            s["elapsed_s"] = r.get("elapsed_s", s["elapsed_s"])
            s["epochs"] = (r.get("config") or {}).get("epochs", s["epochs"])
            if isinstance(done, int) and isinstance(at, int) and isinstance(spe, int):
                # As the trainer counts: the epoch in progress, or the one just finished at its boundary.
                s["epoch"] = done + 1 if done == 0 or at > done * spe else done
            continue
        # Every record with a position is newer than the ones before it (a pause, a checkpoint
        # between two reported steps included).
        if isinstance(r.get("step"), int) and isinstance(r.get("epoch"), int):
            s["epoch"], s["step"] = r["epoch"], r["step"]
        if kind == "train":
            for key in ("steps_per_epoch", "lr", "img_per_s", "elapsed_s"):
                s[key] = r.get(key, s[key])
        elif kind in ("eval", "finished"):
            s["best_acc1"], s["best_acc5"] = r.get("best_acc1"), r.get("best_acc5")
        elif kind == "checkpoint":
            s["last_checkpoint"] = r.get("path")
        elif kind == "lr_set":
            s["lr"] = r.get("new", s["lr"])
        elif kind == "config_change" and "epochs" in (r.get("changes") or {}):
            s["epochs"] = r["changes"]["epochs"][1]
    return s


def _say(message: str) -> None:
    print(f"wvtui: {message}", file=sys.stderr, flush=True)


def _applied_line(done: dict[str, Any], value: float | None) -> str:
    what = done.get("command", "?") + (f" {value:g}" if value is not None else "")
    line = f"{what}: applied at epoch {done.get('epoch')} step {done.get('step')}"
    detail = str(done.get("detail") or "").strip()
    return f"{line} ({detail})" if detail else line


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = _parse(argv)
    except SystemExit as e:  # --help, or a usage error already printed as one line
        return e.code if isinstance(e.code, int) else EXIT_USAGE
    except _Bad as e:
        print(f"wvtui: error: {e}", file=sys.stderr)
        return EXIT_USAGE

    from core.client import CommandRefused, ControlClient, NotLive, Refused

    connect = min(CONNECT_TIMEOUT, args.timeout) if args.timeout is not None else CONNECT_TIMEOUT
    try:
        client = ControlClient(args.out, timeout=connect)
    except Refused as e:  # live, but not for us (another uid, too many clients, another protocol)
        _say(str(e))
        return EXIT_USAGE
    except NotLive as e:
        _say(str(e))
        return EXIT_NOT_LIVE
    try:
        if args.command == "status":
            print(json.dumps(status_of(client.hello)))
            return EXIT_OK
        try:
            done = client.command(args.command, args.value, timeout=args.timeout)
        except CommandRefused as e:
            if str(e).startswith(ENDED):  # between the run's end and its socket's close
                _say(f"{args.command} not applied: {e}")
                return EXIT_NOT_LIVE
            _say(f"{args.command} refused: {e}")
            return EXIT_USAGE
        except NotLive as e:
            _say(f"{args.command} not applied: the run at {args.out} ended ({e})")
            return EXIT_NOT_LIVE
        except TimeoutError:
            _say(f"{args.command} not applied within --timeout {args.timeout:g}s (a run that accepted it still "
                 "applies it at its next step boundary)")
            return EXIT_NOT_LIVE
        except OSError as e:
            _say(f"{args.command} not applied: lost the connection to {args.out} ({e})")
            return EXIT_NOT_LIVE
        print(_applied_line(done, args.value), flush=True)
        return EXIT_OK
    finally:
        client.close()
