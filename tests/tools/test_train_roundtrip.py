"""End to end on generated data (TensorFlow): train -> int8 -> evaluate -> report -> signed
bundle, then everything the device does with it: verify, load, replay the golden vector."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageDraw

from edged.model.bundle import GOLDEN, load_public_key, read_bundle
from edged.model.classifier import Classifier
from tools.bundle import main as bundle_main
from tools.golden import replay_golden
from tools.keygen import main as keygen
from tools.train import list_image_folder, load_rgb, split_dataset
from tools.train import main as train_main

pytest.importorskip("tensorflow")
# Keras 3 on NumPy 2 warns about its own tensors' __array__ once per batch.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

LABELS = ["circle", "square", "triangle"]


def make_shapes(root: Path, per_class: int = 28, size: int = 32, seed: int = 0) -> None:
    """Three classes of coloured shapes (red circles, green squares, blue triangles) at random
    places and sizes on pale random backgrounds."""
    rng = np.random.default_rng(seed)
    for label in LABELS:
        (root / label).mkdir(parents=True)
        for i in range(per_class):
            bg = tuple(int(v) for v in rng.integers(170, 256, size=3))
            img = Image.new("RGB", (size, size), bg)
            draw = ImageDraw.Draw(img)
            r = int(rng.integers(size // 5, size // 3))
            cx, cy = (int(v) for v in rng.integers(r, size - r, size=2))
            jitter = [int(v) for v in rng.integers(0, 60, size=3)]
            if label == "circle":
                draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=(200 + jitter[0] // 2, 30, 30))
            elif label == "square":
                draw.rectangle([cx - r, cy - r, cx + r, cy + r], fill=(30, 160 + jitter[1], 40))
            else:
                draw.polygon(
                    [(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)],
                    fill=(40, 40, 180 + jitter[2]),
                )
            img.save(root / label / f"{label}-{i:02d}.png")


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("roundtrip")
    make_shapes(root / "data")
    assert keygen(["--out", str(root / "keys" / "ci")]) == 0
    kid = key_id_of(root / "keys" / "ci.pub.pem")
    out = root / "out" / "shapes.edgb"
    argv = [str(root / "data"), "--out", str(out), "--name", "shapes", "--version", "3"]
    argv += ["--weights", "none", "--arch", "tinycnn", "--input-size", "32", "--epochs", "3"]
    argv += ["--batch-size", "8", "--val-fraction", "0.25", "--seed", "1", "--threads", "1"]
    argv += ["--key", str(root / "keys" / "ci.pem"), "--report-dir", str(root / "report")]
    started = time.monotonic()
    rc = train_main(argv)
    return {
        "rc": rc,
        "seconds": time.monotonic() - started,
        "root": root,
        "out": out,
        "kid": kid,
        "report": root / "report",
    }


def key_id_of(public: Path) -> str:
    from edged.model.bundle import key_id

    return key_id(load_public_key(public))


def test_train_succeeds_quickly(run: dict[str, Any]) -> None:
    assert run["rc"] == 0
    assert run["seconds"] < 120  # ~30 s on two cores


def test_bundle_is_signed_and_verifies(run: dict[str, Any]) -> None:
    pub = load_public_key(run["root"] / "keys" / "ci.pub.pem")
    bundle = read_bundle(run["out"].read_bytes(), trusted_keys=[pub], allow_unsigned=False)
    assert bundle.key_id == run["kid"]
    assert (bundle.name, bundle.version, bundle.labels) == ("shapes", 3, LABELS)
    assert set(bundle.members) == {"model.tflite", "labels.txt", GOLDEN}
    spec = bundle.manifest["input"]
    assert spec["shape"] == [1, 32, 32, 3] and spec["dtype"] == "int8"
    assert spec["layout"] == "NHWC"
    assert spec["mean"] == [0.0] * 3 and spec["std"] == [255.0] * 3  # tinycnn: pixel / 255
    # Pale images, yet the input covers pixels 0..255 (see tools.train.quantize): the int8
    # input is exactly pixel - 128.
    assert spec["quantization"] == pytest.approx([1 / 255, -128])


def test_classifier_loads_it_and_the_golden_vector_reproduces(run: dict[str, Any]) -> None:
    bundle = read_bundle(run["out"].read_bytes())
    clf = Classifier.from_bundle(bundle, threads=1)
    assert (clf.info.width, clf.info.height, clf.info.channels) == (32, 32, 3)
    assert clf.info.dtype == "int8" and clf.labels == LABELS
    golden = bundle.manifest["golden"]
    out = replay_golden(bundle, clf)
    assert out.shape == (3,) and 0 < golden["atol"] <= 0.05
    # The golden input is a validation image, preprocessed by the daemon's code.
    assert golden["label"] in LABELS and golden["source"].startswith(golden["label"])
    frame = load_rgb(run["root"] / "data" / golden["label"] / golden["source"])
    assert clf.preprocess(frame).tobytes() == bundle.members[GOLDEN]


def test_model_is_full_integer(run: dict[str, Any]) -> None:
    from edged.model.runtime import load_interpreter

    interp, _ = load_interpreter(read_bundle(run["out"].read_bytes()).model_bytes, threads=1)
    dtypes = {np.dtype(t["dtype"]) for t in interp.get_tensor_details()}
    assert dtypes <= {np.dtype(np.int8), np.dtype(np.int32)}, dtypes


def test_report_is_consistent(run: dict[str, Any]) -> None:
    report = json.loads((run["report"] / "report.json").read_text())
    confusion = json.loads((run["report"] / "confusion.json").read_text())
    with Image.open(run["report"] / "confusion.png") as png:
        assert png.format == "PNG" and png.width > 200
    n_val = report["data"]["val_samples"]
    assert n_val == 21 and report["data"]["train_samples"] == 63  # 3 x (28 - 7)
    assert confusion["labels"] == report["data"]["labels"] == LABELS
    for key in ("float", "int8"):
        ev = report[key]
        cm = np.asarray(ev["confusion"])
        assert cm.shape == (3, 3) and cm.sum() == n_val == ev["total"]
        assert cm.tolist() == confusion[key]
        assert ev["correct"] == int(np.trace(cm))
        assert ev["accuracy"] == round(np.trace(cm) / n_val, 4)
        assert cm.sum(axis=1).tolist() == [ev["per_class"][lab]["support"] for lab in LABELS]
        for i, lab in enumerate(LABELS):
            pc = ev["per_class"][lab]
            recall = cm[i, i] / cm[i].sum()
            precision = cm[i, i] / cm[:, i].sum() if cm[:, i].sum() else 0.0
            assert pc["recall"] == round(recall, 4) and pc["precision"] == round(precision, 4)
    drop = 100 * (report["float"]["accuracy"] - report["int8"]["accuracy"])
    assert report["int8_drop_points"] == pytest.approx(drop, abs=0.01)
    assert report["training"]["epochs_run"] == 3
    assert report["model"]["arch"] == "tinycnn" and report["model"]["weights"] == "none"
    assert report["model"]["calibration_stretched"] is True
    for key in ("load", "train", "convert", "evaluate", "bundle", "total"):
        assert report["timings_s"][key] >= 0
    assert report["bundle"]["key_id"] == run["kid"]
    int8 = (run["report"] / "model.tflite").read_bytes()
    assert report["model"]["int8_bytes"] == len(int8)

    # The manifest's headline repeats the report's figures.
    manifest = read_bundle(run["out"].read_bytes()).manifest
    head = manifest["report"]
    assert head["val_accuracy_float"] == report["float"]["accuracy"]
    assert head["val_accuracy_int8"] == report["int8"]["accuracy"]
    assert head["int8_drop_points"] == report["int8_drop_points"]
    assert head["val_samples"] == n_val and head["model_bytes"] == len(int8)
    assert manifest["files"]["model.tflite"]["sha256"] == report["bundle"]["sha256_model"]


def test_int8_accuracy_is_what_the_daemon_gets(run: dict[str, Any]) -> None:
    """Re-derive the split and classify every validation image with the bundle's classifier."""
    report = json.loads((run["report"] / "report.json").read_text())
    _, val = split_dataset(list_image_folder(run["root"] / "data"), 0.25, seed=1)
    clf = Classifier.from_bundle(read_bundle(run["out"].read_bytes()), threads=1)
    right = sum(clf.classify(load_rgb(p), top_k=1).label == LABELS[y] for p, y in val)
    assert right == report["int8"]["correct"]
    assert report["int8"]["accuracy"] >= 0.6  # well above chance (1/3) after 3 epochs


def test_rebundle_the_trained_model(
    run: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    rep = run["report"]
    out = run["root"] / "rebundled.edgb"
    argv = [str(rep / "model.tflite"), "--labels", str(rep / "labels.txt"), "--name", "shapes"]
    argv += ["--version", "4", "--mean", "0", "--std", "255", "--out", str(out)]
    argv += ["--key", str(run["root"] / "keys" / "ci.pem")]
    assert bundle_main(argv) == 0
    pub = load_public_key(run["root"] / "keys" / "ci.pub.pem")
    again = read_bundle(out.read_bytes(), trusted_keys=[pub], allow_unsigned=False)
    first = read_bundle(run["out"].read_bytes())
    assert again.sha256 == first.sha256 and again.labels == first.labels
    spec, want = again.manifest["input"], first.manifest["input"]
    assert spec["shape"] == want["shape"] and spec["dtype"] == want["dtype"]
    assert spec["mean"] == [0.0] and spec["std"] == [255.0]  # as given on the command line
    replay_golden(again)


@pytest.mark.slow  # ~25 s: MobileNetV2's graph is traced and converted
def test_backbone_from_a_local_weights_file(
    run: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--weights PATH`` (the offline stand-in for ImageNet weights): the backbone loads the
    file, trains frozen, then fine-tunes its top layers, and the int8 bundle comes out."""
    from tools.train.arch import ARCHS, build

    arch = ARCHS["mobilenetv2"]
    first = build(arch, (32, 32, 3), 3, seed=0, alpha=0.35, weights=None)
    assert first.base is not None and not first.pretrained
    path = tmp_path / "mnv2.weights.h5"
    first.base.save_weights(path)
    second = build(arch, (32, 32, 3), 3, seed=0, alpha=0.35, weights=str(path))
    assert second.base is not None and second.pretrained
    for a, b in zip(first.base.weights, second.base.weights, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())

    out = tmp_path / "mnv2.edgb"
    argv = [str(run["root"] / "data"), "--out", str(out), "--name", "m", "--weights", str(path)]
    argv += ["--alpha", "0.35", "--input-size", "32", "--epochs", "1", "--fine-tune-epochs", "1"]
    argv += ["--fine-tune-layers", "10", "--val-fraction", "0.25", "--threads", "1"]
    argv += ["--force"]  # one epoch from random weights stays at chance: the gate would refuse
    capsys.readouterr()
    assert train_main(argv) == 0
    printed = capsys.readouterr().out
    assert "phase head: 1 epochs" in printed and "phase fine-tune: 1 epochs" in printed
    report = json.loads((tmp_path / "mnv2-report" / "report.json").read_text())
    head, tune = report["training"]["phases"]
    assert head["trainable_params"] < tune["trainable_params"]  # backbone frozen, then not
    assert report["model"]["arch"] == "mobilenetv2" and report["model"]["weights"] == str(path)
    bundle = read_bundle(out.read_bytes())
    assert bundle.manifest["input"]["mean"] == [127.5] * 3  # MobileNet's [-1, 1]
    replay_golden(bundle)


def test_dscnn_widths() -> None:
    """The from-scratch recipe's network: widths scale with alpha, in multiples of 8."""
    from tools.train.arch import build_dscnn

    full = build_dscnn((96, 96, 3), 5, seed=0)
    assert full.output_shape == (None, 5)
    assert full.get_layer("pw7").output.shape[-1] == 512
    quarter = build_dscnn((32, 32, 3), 3, seed=0, alpha=0.25)
    assert quarter.get_layer("stem").output.shape[-1] == 8
    assert quarter.get_layer("pw7").output.shape[-1] == 128
    bns = [layer for layer in full.layers if layer.__class__.__name__ == "BatchNormalization"]
    assert len(bns) == 15 and {bn.momentum for bn in bns} == {0.9}


def test_uint8_io(run: dict[str, Any], tmp_path: Path) -> None:
    """``--io uint8``: uint8 input and output; the daemon's classifier takes it as is."""
    out = tmp_path / "u8.edgb"
    argv = [str(run["root"] / "data"), "--out", str(out), "--name", "u8", "--arch", "tinycnn"]
    argv += ["--input-size", "16", "--epochs", "1", "--io", "uint8", "--val-fraction", "0.25"]
    argv += ["--threads", "1", "--patience", "0", "--force"]  # 1 epoch: chance, gate refuses
    assert train_main(argv) == 0
    bundle = read_bundle(out.read_bytes())
    spec = bundle.manifest["input"]
    assert spec["dtype"] == "uint8" and spec["quantization"] == pytest.approx([1 / 255, 0])
    clf = Classifier.from_bundle(bundle, threads=1)
    assert clf.info.dtype == "uint8"
    replay_golden(bundle, clf)


@pytest.mark.parametrize(
    ("name", "alpha", "mean"),
    [
        ("mobilenetv2", 0.35, 127.5),
        ("mobilenetv3small", 0.75, 127.5),
        ("mobilenetv3large", 1.0, 127.5),
        ("efficientnetb0", 1.0, 0.0),
        ("efficientnet-lite0", 1.0, 127.0),
    ],
)
def test_backbones_build(name: str, alpha: float, mean: float) -> None:
    """Every selectable backbone builds (random weights here: no download in tests)."""
    from tools.train.arch import ARCHS, build

    arch = ARCHS[name]
    built = build(arch, (64, 64, 3), 4, seed=0, alpha=alpha, weights=None)
    assert built.core.output_shape == (None, 4) and built.base is not None
    assert arch.mean == mean
    probs = built.core(np.zeros((1, 64, 64, 3), np.float32)).numpy()
    assert probs.shape == (1, 4) and abs(float(probs.sum()) - 1.0) < 1e-4
