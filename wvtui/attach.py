"""`wvtui attach [OUT]`: the console of a live run, from any terminal, over its control socket.

    wvtui attach runs/2026-11-30_0347     # that run
    wvtui attach                          # the newest live run under ./runs; a list when several

The console is the one `wvtui --root ...` shows, started complete from the run's history.
`d` detaches (the run goes on); `q` asks: stop the run after a checkpoint, detach, or cancel.
Killing this process (or its terminal hanging up) never touches the run.

Exit codes: 0 after detaching or once the run has ended; 1 no live run there, or the console
failed; 2 bad arguments, no terminal, or several live runs and no terminal to ask on.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from wvtui.options import OneLineParser

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
RUNS = "runs"


def _say(message: str) -> None:
    print(f"wvtui: {message}", file=sys.stderr, flush=True)


def build_parser() -> OneLineParser:
    p = OneLineParser(prog="wvtui attach",
                      description="Open the console of a live run (one started by wvtui, console or headless).",
                      epilog="In the console: d detaches (the run goes on); q asks: stop the run after a "
                             "checkpoint, detach, or cancel. Exit status: 0 detached or the run ended; 1 no "
                             "live run there; 2 bad arguments, or several live runs and no terminal to ask on.")
    p.add_argument("out", nargs="?", metavar="OUT",
                   help=f"the run directory; default: the newest live run under ./{RUNS}")
    return p


def _describe(info) -> str:
    where = f"epoch {info.epoch} step {info.step:,}" if info.epoch is not None and info.step is not None else "starting"
    best = f"best Acc@1 {info.best_acc1:.2f}" if info.best_acc1 is not None else "no evaluation yet"
    return f"{info.out_dir}  ({where}, {best}, pid {info.pid})"


def choose_run(root: str = RUNS, *, interactive: bool | None = None) -> str | int:
    """The live run to attach to: the only one, or the user's pick; else an exit code (said why)."""
    from core.runinfo import list_runs

    live = [r for r in list_runs(root) if r.state == "live"]
    if not live:
        _say(f"no live run under ./{root} (wvtui ls lists every run; wvtui attach OUT attaches to one elsewhere)")
        return EXIT_FAILED
    if len(live) == 1:
        return live[0].out_dir
    if interactive is None:
        interactive = sys.stdin.isatty() and sys.stdout.isatty()
    for i, info in enumerate(live, 1):
        print(f"{i:>3}  {_describe(info)}", flush=True)
    if not interactive:
        _say(f"{len(live)} live runs under ./{root}: say which, wvtui attach OUT")
        return EXIT_USAGE
    try:
        answer = input(f"attach to which run? [1-{len(live)}, enter: 1] ").strip()
    except (EOFError, KeyboardInterrupt):
        print(file=sys.stderr)
        return EXIT_USAGE
    if not answer:
        return live[0].out_dir
    if not answer.isdigit() or not 1 <= int(answer) <= len(live):
        _say(f"{answer!r} is not a number from 1 to {len(live)}")
        return EXIT_USAGE
    return live[int(answer) - 1].out_dir


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    except SystemExit as exc:  # --help, or the parser's one-line error (already printed)
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    out = args.out if args.out is not None else choose_run()
    if isinstance(out, int):
        return out

    from core.client import ControlClient, NotLive

    try:
        client = ControlClient(out)
    except NotLive as exc:
        _say(str(exc))
        return EXIT_FAILED
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        client.close()
        _say(f"wvtui attach needs a terminal; from a script: wvtui ctl {out} status")
        return EXIT_USAGE

    from wvtui.app import TrainingApp
    from wvtui.transport import SocketTransport

    transport = SocketTransport(client)
    app = TrainingApp(transport=transport)
    try:
        app.run()
    except Exception as exc:  # noqa: BLE001 - one line, and the run is untouched either way
        _say(f"error: the console failed: {type(exc).__name__}: {exc}")
        return EXIT_FAILED
    finally:
        transport.close()
    for line in app.summary_lines():
        print(line, flush=True)
    return EXIT_FAILED if app.return_code else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
