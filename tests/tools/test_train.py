"""tools.train: the device math (no TensorFlow) and a training smoke test (TensorFlow only)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from edged.model.bundle import read_bundle
from tools.train import InputSpec, dequantize, frame_to_pixels, normalize, quantize


def test_frame_to_pixels_grey_and_resize() -> None:
    rgb = np.zeros((64, 48, 3), np.uint8)
    rgb[..., 0] = 200  # pure red -> luma 0.299 * 200
    grey = frame_to_pixels(rgb, 32, 32, 1)
    assert grey.shape == (32, 32, 1) and grey.dtype == np.float32
    assert np.allclose(grey, round(0.299 * 200), atol=1)
    colour = frame_to_pixels(rgb, 16, 8, 3)
    assert colour.shape == (16, 8, 3)
    with pytest.raises(ValueError):
        frame_to_pixels(rgb, 8, 8, 2)


def test_quantize_round_trip() -> None:
    x = normalize(np.arange(256, dtype=np.float32), [0.0], [255.0])
    q = quantize(x, 1 / 255, -128, np.dtype(np.int8))
    assert q.dtype == np.int8 and np.array_equal(q.astype(int), np.arange(256) - 128)
    assert np.allclose(dequantize(q, 1 / 255, -128), x, atol=1e-6)
    assert quantize(np.array([9.0]), 1 / 255, -128, np.dtype(np.int8))[0] == 127  # clipped


def test_input_spec_manifest() -> None:
    spec = InputSpec(32, 32, 1, [0.0], [255.0], "int8", 1 / 255, -128)
    assert spec.as_manifest() == {
        "shape": [1, 32, 32, 1],
        "dtype": "int8",
        "layout": "NHWC",
        "mean": [0.0],
        "std": [255.0],
        "quantization": [1 / 255, -128],
    }


def make_shapes(root: Path, per_class: int = 14, size: int = 24) -> None:
    """Three easy classes: a horizontal bar, a vertical bar, a ring (dark on white)."""
    rng = np.random.default_rng(0)
    for label in ("hbar", "ring", "vbar"):
        (root / label).mkdir(parents=True)
        for i in range(per_class):
            img = Image.new("RGB", (size, size), "white")
            draw = ImageDraw.Draw(img)
            o = int(rng.integers(-2, 3))
            if label == "hbar":
                draw.rectangle([4, 10 + o, 19, 13 + o], fill="black")
            elif label == "vbar":
                draw.rectangle([10 + o, 4, 13 + o, 19], fill="black")
            else:
                draw.ellipse([5 + o, 5, 18 + o, 18], outline="black", width=3)
            img.save(root / label / f"{label}-{i:02d}.png")


def test_train_smoke(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("tensorflow")
    from tools.train import main

    make_shapes(tmp_path / "data")
    out = tmp_path / "models" / "shapes.edgb"
    argv = [str(tmp_path / "data"), "--out", str(out), "--name", "shapes", "--version", "3"]
    argv += ["--epochs", "3", "--input-size", "16", "--seed", "1", "--val-fraction", "0.25"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "Epoch 3/3" in printed and "int8" in printed

    bundle = read_bundle(out.read_bytes())
    m = bundle.manifest
    assert (bundle.name, bundle.version, bundle.labels) == ("shapes", 3, ["hbar", "ring", "vbar"])
    assert m["input"]["shape"] == [1, 16, 16, 1] and m["input"]["dtype"] == "int8"
    assert m["input"]["mean"] == [0.0] and m["input"]["std"] == [255.0]
    report = m["report"]
    assert report["val_samples"] == 12 and report["model_bytes"] == len(bundle.model_bytes)
    for key in ("val_accuracy_float", "val_accuracy_int8"):
        assert 0.0 <= report[key] <= 1.0

    # The golden vector reproduces through a TFLite interpreter.
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        import tensorflow as tf

        Interpreter = tf.lite.Interpreter
    interp = Interpreter(model_content=bundle.model_bytes)
    interp.allocate_tensors()
    golden = m["golden"]
    tensor = np.frombuffer(bundle.members[golden["member"]], np.int8).reshape(1, 16, 16, 1)
    interp.set_tensor(interp.get_input_details()[0]["index"], tensor)
    interp.invoke()
    out_detail = interp.get_output_details()[0]
    got = dequantize(interp.get_tensor(out_detail["index"])[0], *out_detail["quantization"])
    np.testing.assert_allclose(got, golden["output"], rtol=0, atol=golden["atol"])


def test_train_cli_rejects_bad_arguments(tmp_path: Path) -> None:
    from tools.train import main

    with pytest.raises(SystemExit) as exc:
        main([str(tmp_path), "--out", str(tmp_path / "x.edgb"), "--name", "x", "--version", "0"])
    assert exc.value.code == 2


def test_tools_import_without_tensorflow() -> None:
    """The tools import TensorFlow and scikit-learn lazily, inside the functions using them."""
    code = (
        "import sys, tools.train, tools.demo_data; "
        "bad = {'tensorflow', 'keras', 'sklearn'} & set(sys.modules); "
        "sys.exit(f'imported {bad}' if bad else 0)"
    )
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr + proc.stdout
