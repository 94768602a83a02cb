from __future__ import annotations

import importlib.util
import os

import pytest

from edged.errors import ModelError
from edged.model import runtime
from edged.model.runtime import (
    available_backends,
    condense,
    describe_load_error,
    load_interpreter,
)
from tests.model.test_tiny_models import tiny_model
from tests.realdata import MODELS, requires_realdata

PERSON_DETECT_TEXT = "".join(
    f"quantized_dimension must be in range [0, 1). Was 3.Tensor {t} has invalid quantization "
    "parameters."
    for t in (33, 36, 40, 44)
)
EDGETPU_TEXT = (
    "Encountered unresolved custom op: edgetpu-custom-op.\nSee instructions: "
    "https://www.tensorflow.org/lite/guide/ops_custom Node number 0 (edgetpu-custom-op) "
    "failed to prepare."
)


def test_available_backends_in_auto_order() -> None:
    found = available_backends()
    assert found, "no interpreter installed in this environment"
    assert found == [b for b in runtime.BACKENDS if b in found]
    assert ("ai-edge-litert" in found) == (importlib.util.find_spec("ai_edge_litert") is not None)


def test_auto_uses_the_first_available_backend() -> None:
    _, backend = load_interpreter(tiny_model())
    assert backend == available_backends()[0]


def test_missing_or_unknown_backend() -> None:
    missing = next(b for b in runtime.BACKENDS if b not in available_backends())
    with pytest.raises(ModelError, match=rf"interpreter backend '{missing}' is not usable"):
        load_interpreter(tiny_model(), backend=missing)
    with pytest.raises(ModelError, match="unknown interpreter backend 'onnx'"):
        load_interpreter(tiny_model(), backend="onnx")


def test_no_backend_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_module(name: str) -> type:
        raise ModuleNotFoundError(name)

    monkeypatch.setattr(runtime, "_import_backend", no_module)
    with pytest.raises(ModelError, match=r"^no TFLite interpreter is installed: pip install"):
        load_interpreter(tiny_model())


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "the model file is empty"),
        (
            b"\x89PNG\r\n\x1a\n" + b"\0" * 100,
            "not a TFLite model (no 'TFL3' identifier at bytes 4-8)",
        ),
        (b"PK\x03\x04garbage", "not a TFLite model (no 'TFL3' identifier at bytes 4-8)"),
    ],
)
def test_not_a_model(data: bytes, message: str) -> None:
    with pytest.raises(ModelError) as err:
        load_interpreter(data)
    assert str(err.value) == message


def test_condense_person_detect_errors() -> None:
    line = condense(PERSON_DETECT_TEXT)
    assert line == (
        "Tensor 33 has invalid quantization parameters; "
        "quantized_dimension must be in range [0, 1). Was 3 (4 such errors)"
    )
    assert len(condense("x" * 1000)) == runtime.MAX_MESSAGE


def test_describe_load_errors() -> None:
    model = tiny_model()
    msg = describe_load_error(RuntimeError(EDGETPU_TEXT), "tflite-runtime", model, [])
    assert msg == (
        "model needs custom op 'edgetpu-custom-op' that tflite-runtime does not provide "
        "(an EdgeTPU-compiled model needs the EdgeTPU delegate; use the CPU build of the model)"
    )
    msg = describe_load_error(ValueError(PERSON_DETECT_TEXT), "ai-edge-litert", model, [])
    assert msg.startswith("ai-edge-litert rejected the model: Tensor 33 has invalid quantization")
    flex = RuntimeError(
        "Select TensorFlow op(s), included in the given model, is(are) not supported"
    )
    assert "TensorFlow (Flex) ops" in describe_load_error(flex, "tflite-runtime", model, [])
    old = RuntimeError("Didn't find op for builtin opcode 'FULLY_CONNECTED' version '12'.")
    assert describe_load_error(old, "tflite-runtime", model, []) == (
        "model uses builtin op FULLY_CONNECTED version 12, which this tflite-runtime is too old "
        "to run (upgrade it)"
    )
    # An empty exception text falls back to what the runtime printed on stderr.
    msg = describe_load_error(RuntimeError(), "x", model, ["ERROR: something odd", "happened"])
    assert msg == "x rejected the model: ERROR: something odd happened"


@pytest.mark.realdata
@requires_realdata
def test_edgetpu_model_names_the_custom_op() -> None:
    data = (MODELS / "coral_mobilenet_v1_0.25_128_quant_edgetpu.tflite").read_bytes()
    with pytest.raises(ModelError) as err:
        load_interpreter(data)
    backend = available_backends()[0]
    assert str(err.value) == (
        f"model needs custom op 'edgetpu-custom-op' that {backend} does not provide "
        "(an EdgeTPU-compiled model needs the EdgeTPU delegate; use the CPU build of the model)"
    )


@pytest.mark.realdata
@requires_realdata
def test_tflm_person_detect_is_rejected_in_one_line(capfd: pytest.CaptureFixture[str]) -> None:
    data = (MODELS / "tflm_person_detect.tflite").read_bytes()
    with pytest.raises(ModelError) as err:
        load_interpreter(data)
    message = str(err.value)
    assert "\n" not in message and len(message) <= 400
    assert message.startswith(
        f"{available_backends()[0]} rejected the model: Tensor 33 has invalid quantization "
        "parameters; quantized_dimension must be in range [0, 1). Was 3 ("
    )
    # the runtime's C++ error lines were captured, not printed
    assert "invalid quantization" not in capfd.readouterr().err


@pytest.mark.realdata
@requires_realdata
@pytest.mark.parametrize("fraction", [0.001, 0.25, 0.5, 0.9, 0.99])
def test_truncated_real_model(fraction: float) -> None:
    data = (MODELS / "mlperf_tiny_vww_96_int8.tflite").read_bytes()
    with pytest.raises(ModelError, match=r"^the TFLite model is truncated or corrupt"):
        load_interpreter(data[: int(len(data) * fraction)])


def test_runtime_chatter_is_captured(
    monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    real = runtime._import_backend(available_backends()[0])

    class Chatty:
        def __init__(self, **kwargs: object) -> None:
            os.write(2, b"INFO: Created TensorFlow Lite XNNPACK delegate for CPU.\n")
            os.write(2, b"WARNING: something worth seeing\n")
            self._inner = real(**kwargs)

        def allocate_tensors(self) -> None:
            self._inner.allocate_tensors()

    monkeypatch.setattr(runtime, "_import_backend", lambda name: Chatty)
    load_interpreter(tiny_model())
    err = capfd.readouterr().err
    assert "XNNPACK" not in err and "WARNING: something worth seeing" in err
