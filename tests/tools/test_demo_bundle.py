"""The committed demo bundle models/digits.edgb: manifest, int8 model, golden vector, samples."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edged.model.bundle import GOLDEN, LABELS, MODEL, Bundle, read_bundle
from edged.model.classifier import Classifier
from tools.bundle import input_spec
from tools.golden import replay_golden
from tools.train import load_rgb

REPO = Path(__file__).resolve().parents[2]
BUNDLE = REPO / "models" / "digits.edgb"
SAMPLES = sorted((REPO / "samples").glob("digit-*.png"))


@pytest.fixture(scope="module")
def bundle() -> Bundle:
    return read_bundle(BUNDLE.read_bytes())


@pytest.fixture(scope="module")
def interpreter(bundle: Bundle) -> Any:
    litert = pytest.importorskip("ai_edge_litert.interpreter")
    interp = litert.Interpreter(model_content=bundle.model_bytes, num_threads=1)
    interp.allocate_tensors()
    return interp


@pytest.fixture(scope="module")
def classifier(bundle: Bundle) -> Classifier:
    pytest.importorskip("ai_edge_litert")
    return Classifier.from_bundle(bundle, threads=1)


def test_bundle_reads_and_is_small(bundle: Bundle) -> None:
    assert BUNDLE.stat().st_size < 100_000
    assert bundle.name == "digits" and bundle.version == 1
    assert bundle.labels == [str(d) for d in range(10)]
    assert bundle.members[LABELS].decode().split() == bundle.labels
    assert set(bundle.members) == {MODEL, LABELS, GOLDEN}


def test_manifest_input_spec(bundle: Bundle, interpreter: Any) -> None:
    spec = bundle.manifest["input"]
    assert spec["shape"] == [1, 32, 32, 1]  # one grey channel: the daemon converts RGB frames
    assert spec["dtype"] in ("int8", "uint8") and spec["layout"] == "NHWC"
    channels = spec["shape"][3]
    assert len(spec["mean"]) == len(spec["std"]) == channels
    detail = interpreter.get_input_details()[0]
    assert list(detail["shape"]) == spec["shape"]
    assert np.dtype(detail["dtype"]) == np.dtype(spec["dtype"])
    scale, zero_point = detail["quantization"]
    assert spec["quantization"] == pytest.approx([scale, zero_point])
    # mean/std and the quantisation map 0..255 pixels onto the whole int8 range exactly.
    q = (np.arange(256) - spec["mean"][0]) / spec["std"][0] / scale + zero_point
    assert np.allclose(q, np.arange(256) - 128, atol=1e-3)


def test_manifest_report(bundle: Bundle) -> None:
    report = bundle.manifest["report"]
    assert report["model_bytes"] == len(bundle.model_bytes)
    assert report["val_samples"] >= 300
    assert report["val_accuracy_float"] >= 0.95
    assert report["val_accuracy_int8"] >= 0.95
    assert set(report["per_class_recall_int8"]) == set(bundle.labels)


def test_model_is_full_integer(interpreter: Any) -> None:
    dtypes = {np.dtype(t["dtype"]) for t in interpreter.get_tensor_details()}
    assert dtypes <= {np.dtype(np.int8), np.dtype(np.int32)}, dtypes
    assert np.dtype(interpreter.get_output_details()[0]["dtype"]) == np.dtype(np.int8)


def test_golden_vector_reproduces(bundle: Bundle, interpreter: Any) -> None:
    golden = bundle.manifest["golden"]
    spec = bundle.manifest["input"]
    raw = bundle.members[golden["member"]]
    tensor = np.frombuffer(raw, dtype=np.dtype(spec["dtype"])).reshape(spec["shape"])
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], tensor)
    interpreter.invoke()
    out = interpreter.get_output_details()[0]
    scale, zero_point = out["quantization"]
    got = (interpreter.get_tensor(out["index"])[0].astype(np.float32) - zero_point) * scale
    want = np.asarray(golden["output"], np.float32)
    assert got.shape == want.shape == (len(bundle.labels),)
    assert 0 < golden["atol"] <= 0.05
    np.testing.assert_allclose(got, want, rtol=0, atol=golden["atol"])


def test_golden_vector_replays_through_the_classifier(
    bundle: Bundle, classifier: Classifier
) -> None:
    out = replay_golden(bundle, classifier)
    assert int(np.argmax(out)) == bundle.labels.index(bundle.manifest["golden"]["label"])


def test_manifest_input_spec_is_what_tools_bundle_reads_off_the_model(
    bundle: Bundle, classifier: Classifier
) -> None:
    """Re-bundling the model with ``tools bundle`` (no --mean/--std) gives the same spec."""
    spec, want = input_spec(classifier), bundle.manifest["input"]
    assert set(spec) == set(want)
    for key in ("shape", "dtype", "layout"):
        assert spec[key] == want[key]
    for key in ("mean", "std", "quantization"):
        assert spec[key] == pytest.approx(want[key])


def label_of(path: Path) -> str:
    return path.stem.split("-")[1]


def test_samples_classified_by_the_daemon_classifier(
    bundle: Bundle, classifier: Classifier
) -> None:
    """The 20 held-out samples (never trained or validated on): 19 right when committed."""
    assert len(SAMPLES) == 20
    preds = [classifier.classify(load_rgb(p), top_k=1).label for p in SAMPLES]
    right = sum(pred == label_of(p) for pred, p in zip(preds, SAMPLES, strict=True))
    assert right >= 18, list(zip([p.name for p in SAMPLES], preds, strict=True))
