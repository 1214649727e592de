"""`wvtui --root ... --detach [--no-attach]`: start the run in the background, then attach.

The run is `python -m wvtui <the same flags> --headless --out OUT`, started in a session of its
own (no controlling terminal: a dropped SSH connection sends it no SIGHUP), with stdin from
/dev/null and stdout and stderr appended to OUT/console.log. OUT is decided here first, so the
default runs/<date-time> is the directory the run writes and this command names.

This command waits until the run serves its control socket (then prints the run directory, the
pid and the commands to attach or control it, and attaches, unless --no-attach or stdout is not
a terminal), or until the run exits first: then the last lines of console.log are shown and its
exit code is this command's (bad flags: 2 and their one line, as without --detach).
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence

from core.runinfo import live_pid

__all__ = ["main", "child_argv"]

LOG_NAME = "console.log"
TAIL_LINES = 20
POLL_S = 0.1


def _say(message: str) -> None:
    print(f"wvtui: {message}", file=sys.stderr, flush=True)


def _is_flag(token: str, flag: str, shortest: int) -> bool:
    # argparse takes unique prefixes of long flags (--det for --detach).
    return len(token) >= shortest and flag.startswith(token)


def child_argv(argv: Sequence[str], out: str, *, out_given: bool) -> list[str]:
    """The run's own flags: these without --detach/--no-attach, headless, with OUT fixed."""
    kept: list[str] = []
    for i, token in enumerate(argv):
        if token == "--":
            kept.extend(argv[i:])
            break
        if _is_flag(token, "--detach", 5) or _is_flag(token, "--no-attach", 6):
            continue
        kept.append(token)
    kept.append("--headless")
    if not out_given:
        kept += ["--out", out]
    return kept


def _tail(path: str, start: int, n: int = TAIL_LINES) -> list[str]:
    """The last `n` lines written to `path` after byte `start` (an earlier segment's log stays out)."""
    try:
        with open(path, "rb") as f:
            f.seek(start)
            text = f.read().decode("utf-8", errors="replace")
    except OSError:
        return []
    return text.splitlines()[-n:]


def _wait_live(proc: subprocess.Popen, out: str) -> bool:
    """True once the run serves OUT (its own endpoint, not one another process left), False
    when it exited first."""
    while proc.poll() is None:
        if live_pid(out) == proc.pid:
            return True
        time.sleep(POLL_S)
    return False


def main(args, argv: Sequence[str], bridge=None) -> int:
    """`args`: the parsed flags (args.detach is set); `argv`: the flags as given; `bridge`: the
    CLI's SignalBridge, handed back before attaching (the console has its own signal handling)."""
    from core.endpoint import EndpointError
    from wvtui.options import UsageError, check_not_live, check_out, resolve_out

    try:
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise UsageError("--detach starts one process: under torchrun, run the ranks with --headless instead")
        out = resolve_out(args.out, args.resume)
        check_out(out)
        check_not_live(out)  # before its console.log is touched
        created = not os.path.exists(out)
        os.makedirs(out, exist_ok=True)
        log_path = os.path.join(out, LOG_NAME)
        log = open(log_path, "ab")
        start = log.seek(0, os.SEEK_END)
    except (UsageError, EndpointError) as exc:
        print(f"wvtui: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        where = f": {exc.filename}" if exc.filename else ""
        print(f"wvtui: error: {exc.strerror or exc}{where}", file=sys.stderr)
        return 2

    cmd = [sys.executable, "-m", "wvtui", *child_argv(argv, out, out_given=bool(args.out))]
    with log, open(os.devnull, "rb") as devnull:
        proc = subprocess.Popen(cmd, stdin=devnull, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True, close_fds=True)
    q = shlex.quote(out)
    print(f"wvtui: starting the run in the background: pid {proc.pid}, output to {log_path}", flush=True)
    from wvtui.signals import StartupInterrupted

    try:
        live = _wait_live(proc, out)
    except StartupInterrupted as exc:  # Ctrl-C while waiting: this command stops, the run goes on
        _say(f"{exc.name}: stopped waiting; the run (pid {proc.pid}) goes on: wvtui ctl {q} stop ends it")
        return 128 + exc.signum
    if not live:
        code = proc.returncode if proc.returncode >= 0 else 128 - proc.returncode
        for line in _tail(log_path, start):
            print(line, file=sys.stderr if code else sys.stdout)
        if code and created and set(os.listdir(out)) <= {LOG_NAME}:
            # A run that never started leaves no directory behind (its lines were just shown).
            try:
                os.unlink(log_path)
                os.rmdir(out)
            except OSError:
                pass
        return code

    print(f"run directory: {out}\n"
          f"pid:           {proc.pid} (in its own session; output to {log_path})\n"
          f"attach:        wvtui attach {q}\n"
          f"control:       wvtui ctl {q} pause|resume|checkpoint|evaluate|stop|status|lr VALUE", flush=True)
    if not args.attach or not sys.stdout.isatty():
        return 0
    if bridge is not None:
        bridge.restore()
    from wvtui.attach import main as attach

    return attach([out])
