"""``edged run | check | classify`` — and the one place exceptions become exit codes."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from edged import __version__
from edged.errors import ConfigError, EdgedError, ExitStatus, UsageError

if TYPE_CHECKING:
    from edged.model.autothreads import Plan

log = logging.getLogger("edged")

_SYSLOG_PRIORITY = {"DEBUG": 7, "INFO": 6, "WARNING": 4, "ERROR": 3, "CRITICAL": 2}


class _JournalFormatter(logging.Formatter):
    """``<6>edged.mqtt: connected`` — journald reads the priority prefix and adds the time."""

    def format(self, record: logging.LogRecord) -> str:
        prio = _SYSLOG_PRIORITY.get(record.levelname, 6)
        msg = super().format(record).replace("\n", " ")
        return f"<{prio}>{msg}"


def setup_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if os.environ.get("JOURNAL_STREAM"):
        handler.setFormatter(_JournalFormatter("%(name)s: %(message)s"))
    else:
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S")
        )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def _config_path(args: argparse.Namespace) -> Path:
    path = args.config or os.environ.get("EDGED_CONFIG")
    if not path:
        raise UsageError("no config file: pass -c FILE or set EDGED_CONFIG")
    return Path(path)


def cmd_run(args: argparse.Namespace) -> int:
    from edged.app.lifecycle import Signals

    signals = Signals()  # first: no moment of startup leaves a signal its default action
    signals.install()

    from edged.app.compose import production_daemon
    from edged.config import check_files, load_config

    path = _config_path(args)
    cfg = load_config(path)
    problems = check_files(cfg)
    if problems:
        raise ConfigError(problems)
    setup_logging(args.log_level or cfg.log_level)
    daemon = production_daemon(cfg, config_path=path)
    signals.attach(daemon)
    status = daemon.run()
    if daemon.reexec:  # SIGHUP: the same process, from the start, on the new config
        for handler in logging.getLogger().handlers:
            handler.flush()
        argv = list(getattr(sys, "orig_argv", None) or [sys.executable, *sys.argv])
        try:
            os.execv(sys.executable, argv)
        except OSError as err:
            raise EdgedError(f"reload: cannot execute {sys.executable}: {err}") from None
    return status


def cmd_check(args: argparse.Namespace) -> int:
    from edged.config import check_files, load_config
    from edged.model.classifier import Classifier
    from edged.publish.mqtt import check_broker

    path = _config_path(args)
    cfg = load_config(path)
    problems = check_files(cfg)
    if problems:
        raise ConfigError(problems)
    src = cfg.source
    print(f"config: {path} OK (device_id={cfg.device_id}, source={src.type})")
    clf = Classifier.from_config(cfg.model)
    i = clf.info
    print(
        f"model: {i.name} v{i.version} sha256={i.sha256[:12]} input={i.width}x{i.height}x"
        f"{i.channels} {i.dtype} {i.layout}, {i.num_classes} classes, backend {i.backend}"
    )
    if args.no_broker:
        return ExitStatus.OK
    print(f"broker: {check_broker(cfg.mqtt, cfg.device_id, cfg.mqtt.connect_timeout_s)}")
    return ExitStatus.OK


def cmd_classify(args: argparse.Namespace) -> int:
    from edged.errors import FrameRejected
    from edged.model.classifier import Classifier
    from edged.sources.base import safe_name
    from edged.sources.images import read_image

    clf = Classifier.load(
        Path(args.model),
        labels=Path(args.labels) if args.labels else None,
        threads=args.threads,
    )
    failed = 0
    for name in args.images:
        # The daemon's files source decodes the same way (bounds, modes, EXIF orientation).
        try:
            rgb = read_image(name)
        except FrameRejected as err:
            failed += 1
            print(f"edged: error: {safe_name(name)}: cannot read image ({err})", file=sys.stderr)
            continue
        pred = clf.classify(rgb, args.top_k)
        top = [{"label": lab, "score": round(s, 5)} for lab, s in pred.top]
        line = {"image": safe_name(name), "label": pred.label, "score": round(pred.score, 5)}
        line["top"] = top
        print(json.dumps(line), flush=True)
    return ExitStatus.USAGE if failed else ExitStatus.OK


def cmd_bench(args: argparse.Namespace) -> int:
    from edged.bench.run import BenchOptions, run, table

    host, _, port = (args.broker or "").partition(":")
    opts = BenchOptions(
        model=Path(args.model),
        seconds=args.seconds,
        plans=_plans(args.plans) if args.plans else None,
        backend=args.backend,
        host=host or None,
        port=int(port or 1883),
        qos=args.qos,
        camera_fps=args.camera_fps,
        rounds=args.rounds,
        frame=_frame_size(args.frame),
    )
    report = run(opts)
    print(table(report), file=sys.stderr)
    text = json.dumps(report, indent=2)
    if args.json:
        Path(args.json).write_text(text + "\n")
    print(text)
    return ExitStatus.OK


def _frame_size(text: str) -> tuple[int, int] | None:
    """``--frame``: WIDTHxHEIGHT (each 1..8192), or ``model`` (the model's input size)."""
    if text == "model":
        return None
    w, sep, h = text.partition("x")
    digits = [n for n in (w, h) if n.isascii() and n.isdigit() and len(n) <= 4]
    if sep and len(digits) == 2 and all(0 < int(n) <= 8192 for n in digits):
        return int(w), int(h)
    raise UsageError(f"--frame: {text[:20]!r} is not WIDTHxHEIGHT (up to 8192x8192) or 'model'")


def _plans(text: str) -> list[Plan]:
    from edged.model.autothreads import Plan

    plans = []
    for part in text.split(","):
        part = part.strip()
        digits = part.isascii() and part.isdigit() and len(part) <= 2  # not "²": no int
        plan = Plan(1, int(part)) if digits and int(part) > 0 else Plan.parse(part)
        if plan is None or plan.interpreters > 16:
            raise UsageError(
                f"--plans: {part[:20]!r} is no plan (like 2x1, at most 16 interpreters) "
                "or thread count"
            )
        plans.append(plan)
    return plans


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edged", description=__doc__)
    p.add_argument("--version", action="version", version=f"edged {__version__}")
    p.add_argument("--debug", action="store_true", help="show tracebacks for internal errors")
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the daemon")
    run.add_argument("-c", "--config", help="TOML config (default: $EDGED_CONFIG)")
    run.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    run.set_defaults(func=cmd_run)

    check = sub.add_parser("check", help="validate config, load the model, try the broker")
    check.add_argument("-c", "--config", help="TOML config (default: $EDGED_CONFIG)")
    check.add_argument("--no-broker", action="store_true", help="skip the broker connection")
    check.set_defaults(func=cmd_check)

    cls = sub.add_parser("classify", help="classify image files, one JSON line per image")
    cls.add_argument("model", help=".tflite model or .edgb bundle")
    cls.add_argument("images", nargs="+", help="image files")
    cls.add_argument("--labels", help="label file (default: bundle or embedded labels)")
    cls.add_argument("--top-k", type=_positive_int, default=3, help="classes per line (default 3)")
    cls.add_argument("--threads", type=int, default=0, help="interpreter threads (0 = auto)")
    cls.set_defaults(func=cmd_classify)

    bench = sub.add_parser(
        "bench", help="measure the default config against the bare interpreter and a plain loop"
    )
    bench.add_argument("model", help=".tflite model or .edgb bundle")
    bench.add_argument("--seconds", type=float, default=3.0, help="per measurement (default 3)")
    bench.add_argument(
        "--plans",
        "--threads",
        help="comma-separated bare plans, interpreters x threads (2x1) or a thread count (2 = "
        "1x2); default 1x1..1xCORES and CORESx1",
    )
    bench.add_argument("--backend", help="interpreter (default: the first installed)")
    bench.add_argument(
        "--frame",
        default="640x480",
        help="the camera's frames, WIDTHxHEIGHT, or 'model' for the model's input size "
        "(as picamera2's lores stream gives them; default 640x480)",
    )
    bench.add_argument(
        "--camera-fps", type=float, default=30.0, help="the paced camera case (default 30)"
    )
    bench.add_argument(
        "--rounds", type=_positive_int, default=3, help="interleaved rounds, medians (default 3)"
    )
    bench.add_argument("--broker", help="HOST[:PORT] (default: start a private mosquitto)")
    bench.add_argument("--qos", type=int, choices=[0, 1, 2], default=1)
    bench.add_argument("--json", help="also write the JSON report to this file")
    bench.set_defaults(func=cmd_bench)
    return p


def _one_line(text: str) -> str:
    """Control characters escaped (a key or file name with a newline or NUL in it)."""
    return "".join(
        c.encode("unicode_escape").decode("ascii") if c < " " or c == "\x7f" else c for c in text
    )


def main(argv: Sequence[str] | None = None) -> int:
    """The error boundary: every failure is one stderr line per problem and an exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not logging.getLogger().handlers:
        setup_logging("warning" if args.command != "run" else "info")
    try:
        return int(args.func(args))
    except ConfigError as err:
        for line in err.problems:
            print(f"edged: error: {_one_line(line)}", file=sys.stderr)
        return err.exit_status
    except EdgedError as err:
        print(f"edged: error: {_one_line(str(err))}", file=sys.stderr)
        return err.exit_status
    except KeyboardInterrupt:
        return ExitStatus.INTERRUPTED
    except Exception as err:
        if args.debug:
            raise
        print(f"edged: internal error: {type(err).__name__}: {err}", file=sys.stderr)
        return ExitStatus.ERROR
