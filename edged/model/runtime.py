"""The TFLite interpreter: which backend, loading, and one-line load errors.

Backends, in the order ``backend="auto"`` tries them:

=================  ==================================  ====================================
name               module                              package
=================  ==================================  ====================================
ai-edge-litert     ``ai_edge_litert.interpreter``      ``pip install ai-edge-litert``
tflite-runtime     ``tflite_runtime.interpreter``      ``pip install tflite-runtime``
tensorflow         ``tensorflow.lite``                 ``pip install tensorflow``
=================  ==================================  ====================================

Every failure is an :class:`edged.errors.ModelError` with one line naming the cause. The bytes
are checked (``TFL3`` identifier, every table and vector inside the file) before any native
code sees them, because some runtimes crash on truncated flatbuffers instead of raising.
The runtime's own stderr chatter (``INFO: Created TensorFlow Lite XNNPACK delegate``, C++ error
lines) is captured around the load (file descriptor 2 is redirected for that moment) and logged
at debug level; after a successful load, captured lines other than ``INFO:`` ones are written
back to stderr, so a line another thread wrote meanwhile is delayed, not lost.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import logging
import os
import re
import sys
import tempfile
from collections.abc import Iterator
from typing import Any, Protocol

from edged.errors import ModelError
from edged.model import autothreads, tflite_metadata
from edged.model.autothreads import Plan

log = logging.getLogger(__name__)

BACKENDS: dict[str, tuple[str, str]] = {
    # name: (module to import, attribute path of the Interpreter class in it)
    "ai-edge-litert": ("ai_edge_litert.interpreter", "Interpreter"),
    "tflite-runtime": ("tflite_runtime.interpreter", "Interpreter"),
    "tensorflow": ("tensorflow", "lite.Interpreter"),
}
MAX_MESSAGE = 300


class Interpreter(Protocol):
    """The part of ``tf.lite.Interpreter`` edged uses (all three backends provide it)."""

    def allocate_tensors(self) -> None: ...
    def invoke(self) -> None: ...
    def get_input_details(self) -> list[dict[str, Any]]: ...
    def get_output_details(self) -> list[dict[str, Any]]: ...
    def get_tensor_details(self) -> list[dict[str, Any]]: ...
    def set_tensor(self, tensor_index: int, value: Any) -> None: ...
    def get_tensor(self, tensor_index: int) -> Any: ...
    def resize_tensor_input(self, input_index: int, tensor_size: Any) -> None: ...


def available_backends() -> list[str]:
    """Installed backends, in ``auto`` order (found on the path; not imported)."""
    out = []
    for name, (module, _) in BACKENDS.items():
        top = module.split(".")[0]
        try:
            if importlib.util.find_spec(top) is not None:
                out.append(name)
        except (ImportError, ValueError):
            continue
    return out


def _import_backend(name: str) -> type[Any]:
    module_name, attr = BACKENDS[name]
    module: Any = importlib.import_module(module_name)
    for part in attr.split("."):
        module = getattr(module, part)
    cls: type[Any] = module
    return cls


def _resolve(backend: str) -> tuple[str, type[Any]]:
    if backend != "auto":
        if backend not in BACKENDS:
            choices = ", ".join(["auto", *BACKENDS])
            raise ModelError(f"unknown interpreter backend {backend!r} (choose from {choices})")
        try:
            return backend, _import_backend(backend)
        except Exception as err:  # ImportError, or a broken install failing at import
            raise ModelError(
                f"interpreter backend {backend!r} is not usable: {_first_line(err)} "
                f"(pip install {backend})"
            ) from None
    problems = []
    for name in BACKENDS:
        try:
            return name, _import_backend(name)
        except ModuleNotFoundError:
            continue
        except Exception as err:
            problems.append(f"{name}: {_first_line(err)}")
    detail = f" ({'; '.join(problems)})" if problems else ""
    raise ModelError(
        "no TFLite interpreter is installed: pip install ai-edge-litert "
        f"(or tflite-runtime){detail}"
    )


def interpreter_threads(threads: int) -> int:
    """The thread count an interpreter gets for ``threads`` (0 = one per CPU core)."""
    return threads if threads > 0 else (os.cpu_count() or 1)


Interpreters = int | str  # a count, or "auto"


def plan_for(
    threads: int | str, model: bytes, backend: str, interpreters: Interpreters = "auto"
) -> Plan:
    """How many interpreters of how many threads: ``threads="auto"`` measures it once per
    model (:mod:`edged.model.autothreads`); a thread count given means one interpreter unless
    ``interpreters`` says how many."""
    if not (interpreters == "auto" or (isinstance(interpreters, int) and interpreters >= 1)):
        raise ModelError(f"interpreters must be a number from 1 or 'auto', not {interpreters!r}")
    fixed = interpreters if isinstance(interpreters, int) else None
    if threads == "auto":
        return autothreads.choose(model, backend, fixed)
    if isinstance(threads, bool) or not isinstance(threads, int):
        raise ModelError(f"threads must be a number or 'auto', not {threads!r}")
    return Plan(fixed or 1, interpreter_threads(threads))


def load_interpreter(
    model: bytes, threads: int | str = 0, backend: str = "auto"
) -> tuple[Interpreter, str]:
    """Load and allocate ``model``; return the interpreter and the backend name used.

    ``threads`` 0 means one per CPU core, "auto" the count measured best for one interpreter
    (:mod:`edged.model.autothreads`). Raises :class:`ModelError` (one line) on any failure.
    """
    interps, name, _ = load_interpreters(model, threads, backend, interpreters=1)
    return interps[0], name


def load_interpreters(
    model: bytes, threads: int | str = 0, backend: str = "auto", interpreters: Interpreters = 1
) -> tuple[list[Interpreter], str, Plan]:
    """Load and allocate ``model`` as many times as the plan (:func:`plan_for`) says; the
    interpreters, the backend name used and the plan. Raises :class:`ModelError` (one line)."""
    problem = tflite_metadata.check_model(model)
    if problem is not None:
        raise ModelError(problem)
    name, cls = _resolve(backend)
    plan = plan_for(threads, model, name, interpreters)
    model = bytes(model)  # one copy of the bytes, shared by every interpreter
    return [_load(cls, name, model, plan.threads) for _ in range(plan.interpreters)], name, plan


def _load(cls: type[Any], name: str, model: bytes, num_threads: int) -> Interpreter:
    with _captured_stderr() as noise:
        try:
            interpreter = cls(model_content=model, num_threads=num_threads)
            interpreter.allocate_tensors()
        except Exception as err:
            failure: Exception | None = err
        else:
            failure = None
    if noise:
        log.debug("%s said while loading the model: %s", name, " | ".join(noise))
    if failure is not None:
        raise ModelError(describe_load_error(failure, name, model, noise)) from None
    # A successful load says only "INFO: Created TensorFlow Lite XNNPACK delegate": dropped.
    # Anything else (a runtime warning, another thread's line) is passed on.
    rest = [line for line in noise if not line.startswith("INFO:")]
    if rest:
        with contextlib.suppress(OSError):
            os.write(2, ("\n".join(rest) + "\n").encode("utf-8", "replace"))
    interp: Interpreter = interpreter
    return interp


def describe_load_error(err: BaseException, backend: str, model: bytes, noise: list[str]) -> str:
    """One line naming why ``backend`` refused ``model``."""
    text = str(err).strip() or " ".join(noise)
    m = re.search(r"unresolved custom op:? *'?([\w\-./]+?)'?\.?(?:\s|$)", text)
    if m is not None or (not text and tflite_metadata.custom_ops(model)):
        op = m.group(1) if m is not None else tflite_metadata.custom_ops(model)[0]
        if op.lower().startswith("edgetpu"):
            hint = "an EdgeTPU-compiled model needs the EdgeTPU delegate; use the CPU build of the model"
        else:
            hint = "convert the model with builtin ops only, or use a runtime that registers it"
        return f"model needs custom op '{op}' that {backend} does not provide ({hint})"
    if re.search(r"Select TensorFlow op|Flex delegate|FlexDelegate", text):
        return (
            f"model needs TensorFlow (Flex) ops that {backend} does not provide "
            "(convert it with TFLite builtin ops only)"
        )
    m = re.search(r"Didn't find op for builtin opcode '(\w+)' version '(\d+)'", text)
    if m is not None:
        return (
            f"model uses builtin op {m.group(1)} version {m.group(2)}, which this {backend} "
            "is too old to run (upgrade it)"
        )
    return f"{backend} rejected the model: {condense(text) or type(err).__name__}"


def condense(text: str) -> str:
    """Runtime error text (often many concatenated C++ messages) as one short line."""
    # Messages arrive glued together ("...Was 3.Tensor 33 has ...parameters.quantized_...").
    parts = [p.strip() for p in re.split(r"\n|(?<=\.)(?=[A-Za-z])", text)]
    parts = [p for p in parts if p and not p.startswith(("See instructions", "INFO:"))]
    seen: dict[str, int] = {}
    unique: list[str] = []
    for p in parts:
        key = re.sub(r"\d+", "N", p)
        if key not in seen:
            seen[key] = 0
            unique.append(p.rstrip("."))
        seen[key] += 1
    # Put the part that says where (Tensor 33, Node number 4) first.
    unique.sort(key=lambda p: not re.match(r"(Tensor|Node|Subgraph|Op|Operator)\b", p))
    line = "; ".join(unique)
    repeats = max(seen.values(), default=1)
    if repeats > 1:
        line += f" ({repeats} such errors)"
    line = " ".join(line.split())
    return line if len(line) <= MAX_MESSAGE else line[: MAX_MESSAGE - 3] + "..."


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


@contextlib.contextmanager
def _captured_stderr() -> Iterator[list[str]]:
    """Send file descriptor 2 to a temporary file for the duration; yield its lines after.

    Native runtimes write to fd 2 directly, bypassing ``sys.stderr``. Anything else the process
    writes to stderr meanwhile (another thread's log line) is captured too, so the window is
    kept to the load itself. Where fd 2 cannot be redirected nothing is captured.
    """
    lines: list[str] = []
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):
        yield lines
        return
    with tempfile.TemporaryFile() as tmp:
        try:
            os.dup2(tmp.fileno(), 2)
            yield lines
        finally:
            with contextlib.suppress(OSError, ValueError):
                sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            text = tmp.read().decode("utf-8", "replace")
            lines.extend(line.strip() for line in text.splitlines() if line.strip())
