"""The `wvtui` command: install the signal handlers, resolve the flags, set up the run, then
train in the console (a terminal on stdout) or headless (`--headless`, or stdout is a file or
pipe), and exit with the run's status.

    flags            -> wvtui.options   (parser, config resolution, up-front checks)
    signals          -> wvtui.signals   (from the first line of main())
    the run          -> wvtui.session   (trainer, run log, relay, runner, exit status)
    showing it       -> wvtui.frontends (console with its hang-up, or plain lines)
    --detach         -> wvtui.detach    (the same run in the background, then attach)

Subcommands, each its own module's main(argv): attach (wvtui.attach), ctl (wvtui.ctl), ls
(wvtui.ls), report (wvtui.report), noise (wvtui.noise_cmd).

Exit codes: 0 finished; 1 failed (an error, a non-finite latest loss, a final checkpoint that
could not be written); 2 bad arguments, dataset or checkpoint (one line on stderr, no
traceback; also when another live wvtui serves this --out); 128+N stopped by signal N (once
training runs: after the checkpoint is on disk).
"""

from __future__ import annotations

import os
import sys
from typing import Sequence

# Only the standard library and wvtui.signals above this line's callers: main() installs the
# handlers before anything slow (torch) is imported.
from wvtui.signals import SignalBridge, StartupInterrupted

EXIT_USAGE = 2


def _say(message: str) -> None:
    print(f"wvtui: {message}", file=sys.stderr, flush=True)


def _one_line(exc: BaseException) -> str:
    # A message naming several files (one per line) still makes one line.
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return "; ".join(lines) if lines else type(exc).__name__


def _bad_input(exc: Exception) -> int:
    """One line for bad arguments, dataset or checkpoint; exit 2."""
    if os.environ.get("WVTUI_DEBUG"):
        raise exc
    if isinstance(exc, OSError) and exc.strerror:  # e.g. an --out that cannot be created
        where = f": {exc.filename}" if exc.filename else ""
        print(f"wvtui: error: {exc.strerror}{where}", file=sys.stderr)
    else:
        print(f"wvtui: error: {_one_line(exc)}", file=sys.stderr)
    return EXIT_USAGE


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["report"]:
        from wvtui import report

        return report.main(args[1:])
    if args[:1] == ["noise"]:
        from wvtui import noise_cmd

        return noise_cmd.main(args[1:])
    if args[:1] == ["attach"]:
        from wvtui import attach

        return attach.main(args[1:])
    if args[:1] == ["ctl"]:
        from wvtui import ctl

        return ctl.main(args[1:])
    if args[:1] == ["ls"]:
        from wvtui import ls

        return ls.main(args[1:])
    bridge = SignalBridge()
    bridge.install()
    try:
        return _main(args, bridge)
    except StartupInterrupted as exc:
        _say(f"{exc.name} before training started: exiting (nothing was trained, nothing to save)")
        return 128 + exc.signum
    finally:
        bridge.restore()


def _main(argv: Sequence[str], bridge: SignalBridge) -> int:
    from wvtui.options import UsageError, build_parser, existing_checkpoints, resolve_config

    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # --help, or argparse's one-line error (already printed)
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    if args.detach:
        from wvtui import detach

        return detach.main(args, argv, bridge)

    from core.endpoint import EndpointError

    try:
        # Before torch is imported (seconds): a bad number or --out costs its line at once.
        cfg = resolve_config(args, log=_say)
    except (UsageError, EndpointError, ValueError, OSError) as exc:
        return _bad_input(exc)

    from core.checkpoint import CheckpointError
    from core.distributed import DistContext
    from core.webvision import DatasetError
    from wvtui.session import Session

    try:
        dist = DistContext.from_env(cfg.device)
        headless = bool(args.headless) or not sys.stdout.isatty() or not dist.is_main
        session = Session(cfg, dist=dist, nonfinite_action="stop" if headless else "pause")
        session.prepare()
    except (UsageError, DatasetError, CheckpointError, EndpointError, ValueError, OSError) as exc:
        return _bad_input(exc)
    if bridge.startup_signal is not None:  # raised, but swallowed by something on the way
        raise StartupInterrupted(bridge.startup_signal)

    if args.overwrite and dist.is_main:
        old = existing_checkpoints(cfg.out)
        if old:
            _say(f"--overwrite: deleting the earlier run's checkpoints: {', '.join(old)}")
            for path in old:
                os.unlink(path)

    from wvtui.frontends import Console, Headless

    front = Headless(session) if headless else Console(session)
    session.front = front
    bridge.attach(session.on_signal, urgent=front.urgent)
    front.run()
    code, line = session.exit_status()
    if code != 0:
        _say(line)
    return code
