"""``edgectl <command> [args]`` (installed by ``pip install 'edged[tools]'``), or
``python -m tools <command> [args]`` in a checkout: the host-side commands, imported only
when run.

=========  ===================================================================
train      image folder -> trained, int8-quantised, evaluated, signed bundle
bundle     (re)bundle and sign an existing .tflite model
keygen     create an Ed25519 signing key pair
push       send a bundle to devices, or a signed rollback
status     every device on a broker: availability, model, last update, fps
=========  ===================================================================
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

COMMANDS: dict[str, tuple[str, str]] = {
    # command: (module exposing main(argv) -> int, one-line help)
    "train": ("tools.train.cli", "train, quantise, evaluate and bundle a classifier"),
    "bundle": ("tools.bundle", "(re)bundle and sign an existing .tflite model"),
    "keygen": ("tools.keygen", "create an Ed25519 signing key pair"),
    "push": ("tools.push", "send a bundle to devices, or a signed rollback"),
    "status": ("tools.status", "show every device: availability, model, last update, fps"),
}


def program() -> str:
    """How the user ran us: ``edgectl`` (the console script) or ``python -m tools``."""
    name = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else ""
    return "python -m tools" if name in ("__main__.py", "", "-c") else name


def usage() -> str:
    lines = [f"usage: {program()} <command> [args]  (<command> --help for details)", ""]
    lines += [f"  {name:<8}{text}" for name, (_, text) in COMMANDS.items()]
    return "\n".join(lines)


def load(command: str) -> Callable[[Sequence[str]], int] | None:
    """The command's ``main``; None when its module is not part of this checkout."""
    module_name = COMMANDS[command][0]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name == module_name:
            return None
        raise
    entry: Callable[[Sequence[str]], int] = module.main
    return entry


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(usage())
        return 0 if args else 2
    command, rest = args[0], args[1:]
    if command not in COMMANDS:
        print(f"tools: unknown command {command!r}\n{usage()}", file=sys.stderr)
        return 2
    entry = load(command)
    if entry is None:
        print(f"tools: {command} is not available in this checkout", file=sys.stderr)
        return 2
    return int(entry(rest))


if __name__ == "__main__":
    raise SystemExit(main())
