"""Every exception class edged defines, and the exit codes the ``EdgedError`` tree maps to (one
place: ``edged.cli``)."""

from __future__ import annotations

import enum

from edged.infra.guard import one_line


class ExitStatus(enum.IntEnum):
    OK = 0
    ERROR = 1  # runtime failure (model, source, broker)
    USAGE = 2  # invalid config, arguments or input files
    UNAVAILABLE = 3  # a required service (broker) could not be reached
    ALREADY_RUNNING = 4  # another edged runs on the same state dir
    INTERRUPTED = 130


class EdgedError(Exception):
    """Base for every error edged reports as one line and an exit code."""

    exit_status = ExitStatus.ERROR


class ConfigError(EdgedError):
    """Invalid configuration; ``problems`` holds one ``key.path: message`` per line."""

    exit_status = ExitStatus.USAGE

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


class UsageError(EdgedError):
    exit_status = ExitStatus.USAGE


class ModelError(EdgedError):
    """A model or bundle that cannot be loaded or used (names the cause)."""

    exit_status = ExitStatus.USAGE


class BundleError(ModelError):
    """A bundle that fails verification: signature, digest, size, manifest."""


class SourceError(EdgedError):
    """A frame source that cannot open or read."""


class FrameRejected(EdgedError):
    """One input refused (an image file or frame that is unreadable, too big, of the wrong
    type or shape): the source skips and counts it and goes on; it is not a source fault."""

    exit_status = ExitStatus.USAGE


class BrokerError(EdgedError):
    """The MQTT broker refused us or could not be reached."""

    exit_status = ExitStatus.UNAVAILABLE


class InstanceError(EdgedError):
    """Another edged already runs on this state dir."""

    exit_status = ExitStatus.ALREADY_RUNNING


class BenchError(EdgedError):
    """The benchmark itself failed (one line)."""


class SpoolError(Exception):
    """The spool cannot be used (one line, for the log); the daemon then keeps its messages in
    memory, so it is not an ``EdgedError`` (no exit status)."""


class SpoolBusy(SpoolError):
    """Another process holds the spool's lock."""


class SpoolBroken(Exception):
    """The spool file is not one this version can use (the message says why); it is set aside."""


# ---------------------------------------------------------------------- not EdgedErrors
# Refusals of one input or message, reported in an answer or a log line and never ending edged:
# no exit status, so outside the EdgedError tree (the ValueError ones are parse errors).


class FlatbufferError(ValueError):
    """A flatbuffer offset or length points outside the data (``edged.model.tflite_metadata``)."""


class WireError(ValueError):
    """An update payload refused; the message is the one-line reason reported."""


class CommandError(ValueError):
    """An update command refused; the message is the reason reported."""


class OfferError(ValueError):
    """An update offer that cannot be used; the message is the reason reported."""


class TransferError(ValueError):
    """A chunk or an assembled bundle that does not match its offer."""


class Refused(Exception):
    """An update or command refused; the message is the reason reported."""


CONTROL_MAX_PROBLEMS = 10  # error lines in one control answer


class ControlError(Exception):
    """A refused control message; ``problems`` are ``key.path: reason`` lines (each one
    printable line, at most ``CONTROL_MAX_PROBLEMS`` of them)."""

    def __init__(self, problems: list[str]) -> None:
        lines = [one_line(p, 300) for p in problems[:CONTROL_MAX_PROBLEMS]]
        if len(problems) > CONTROL_MAX_PROBLEMS:
            lines.append(f"(and {len(problems) - CONTROL_MAX_PROBLEMS} more problems)")
        super().__init__("; ".join(lines))
        self.problems = lines
