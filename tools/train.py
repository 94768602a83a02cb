"""Train a small int8 image classifier on an image folder and write an edged bundle (host only).

    python -m tools.train DATA_DIR --out models/digits.edgb --name digits --version 1 \\
        [--epochs 30] [--input-size 32] [--channels 1] [--seed 0] [--val-fraction 0.2]

``DATA_DIR`` holds one sub-folder per label (sorted folder names = output order). A seeded,
per-class validation split is held out (``split_dataset``); the model never trains on it.

The pipeline: a small CNN trained from scratch in Keras on ``(pixel - mean) / std``; a
full-integer TFLite model (int8 weights and activations, int8 or uint8 input and output,
calibrated on training images); float and int8 accuracy on the validation split measured
through the device's preprocessing (``edged.model.classifier.Classifier`` when it can be
imported, otherwise the same math here: RGB frame -> bilinear resize -> grey when the model
has one channel -> normalise -> quantise); and a bundle (``edged.model.bundle.build_bundle``)
carrying the input spec, a report and a golden test vector.

TensorFlow is imported inside the functions that need it: importing this module does not.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from edged.model.bundle import build_bundle, load_private_key, read_bundle

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"})
GOLDEN_MEMBER = "golden.bin"
GOLDEN_ATOL_STEPS = 4  # golden tolerance, in output quantisation steps (kernels may differ by 1-2)

Sample = tuple[Path, int]  # (image file, label index)


# --------------------------------------------------------------------------- data


def list_image_folder(data_dir: Path) -> dict[str, list[Path]]:
    """``{label: [image files]}``: one sub-folder per label, both sorted by name."""
    if not data_dir.is_dir():
        raise FileNotFoundError(f"{data_dir}: not a directory")
    out: dict[str, list[Path]] = {}
    for sub in sorted(p for p in data_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = sorted(
            f for f in sub.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES
        )
        if files:
            out[sub.name] = files
    if len(out) < 2:
        raise ValueError(f"{data_dir}: need at least two label sub-folders holding images")
    return out


def split_dataset(
    files_by_label: Mapping[str, Sequence[Path]], val_fraction: float, seed: int
) -> tuple[list[Sample], list[Sample]]:
    """Per-class seeded split into ``(train, val)``; the same inputs always give the same split.

    Labels are indexed in sorted order; within a class the files are sorted by name, permuted
    by ``numpy.random.default_rng([seed, class_index])`` and the first
    ``round(n * val_fraction)`` (at least one, when the class has two or more) go to val.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError("val_fraction must be between 0 and 1")
    train: list[Sample] = []
    val: list[Sample] = []
    for index, label in enumerate(sorted(files_by_label)):
        files = sorted(files_by_label[label], key=lambda p: p.name)
        n_val = round(len(files) * val_fraction)
        if len(files) >= 2:
            n_val = min(max(n_val, 1), len(files) - 1)
        order = np.random.default_rng([seed, index]).permutation(len(files))
        val_rows = {int(i) for i in order[:n_val]}
        for row, path in enumerate(files):
            (val if row in val_rows else train).append((path, index))
    return train, val


def load_rgb(path: Path) -> np.ndarray:
    """An image file as an ``H×W×3`` uint8 RGB array (what a frame source hands the daemon)."""
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"), dtype=np.uint8)


# ------------------------------------------------------------ device preprocessing


def frame_to_pixels(rgb: np.ndarray, height: int, width: int, channels: int) -> np.ndarray:
    """RGB uint8 frame -> model-sized float32 pixels (0..255): bilinear resize, then grey
    (ITU-R 601-2 luma, PIL's ``convert("L")``) when the model has one channel."""
    img = Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8))
    if img.size != (width, height):
        img = img.resize((width, height), resample=Image.Resampling.BILINEAR)
    if channels == 1:
        return np.asarray(img.convert("L"), dtype=np.float32)[..., None]
    if channels == 3:
        return np.asarray(img, dtype=np.float32)
    raise ValueError(f"unsupported channel count {channels}")


def normalize(pixels: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    return ((pixels - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)).astype(
        np.float32
    )


def quantize(x: np.ndarray, scale: float, zero_point: int, dtype: np.dtype[Any]) -> np.ndarray:
    info = np.iinfo(dtype)
    q = np.round(x / scale + zero_point)
    return np.clip(q, info.min, info.max).astype(dtype)


def dequantize(q: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    return ((q.astype(np.float32) - zero_point) * scale).astype(np.float32)


@dataclass(slots=True)
class InputSpec:
    height: int
    width: int
    channels: int
    mean: list[float]
    std: list[float]
    dtype: str = "int8"  # of the quantised model's input
    scale: float = 1.0
    zero_point: int = 0

    def pixels(self, rgb: np.ndarray) -> np.ndarray:
        return frame_to_pixels(rgb, self.height, self.width, self.channels)

    def as_manifest(self) -> dict[str, Any]:
        return {
            "shape": [1, self.height, self.width, self.channels],
            "dtype": self.dtype,
            "layout": "NHWC",
            "mean": list(self.mean),
            "std": list(self.std),
            "quantization": [self.scale, self.zero_point],
        }


# ------------------------------------------------------------------ int8 inference


class TfliteRunner:
    """Runs the quantised model on one RGB frame with the device's math (no edged classifier)."""

    def __init__(self, model: bytes, spec: InputSpec) -> None:
        self.interpreter = _make_interpreter(model)
        self.interpreter.allocate_tensors()
        self.inp = self.interpreter.get_input_details()[0]
        self.out = self.interpreter.get_output_details()[0]
        self.spec = spec

    def input_tensor(self, rgb: np.ndarray) -> np.ndarray:
        x = normalize(self.spec.pixels(rgb), self.spec.mean, self.spec.std)
        return quantize(x, self.spec.scale, self.spec.zero_point, np.dtype(self.spec.dtype))[None]

    def run_tensor(self, tensor: np.ndarray) -> np.ndarray:
        """Raw input tensor -> dequantised float outputs (1-D)."""
        self.interpreter.set_tensor(self.inp["index"], tensor)
        self.interpreter.invoke()
        raw = self.interpreter.get_tensor(self.out["index"])[0]
        scale, zero_point = self.out["quantization"]
        return dequantize(raw, scale, zero_point) if scale else raw.astype(np.float32)

    def predict(self, rgb: np.ndarray) -> int:
        return int(np.argmax(self.run_tensor(self.input_tensor(rgb))))


def _make_interpreter(model: bytes) -> Any:
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:  # host without LiteRT: TensorFlow's interpreter runs the same kernels
        import tensorflow as tf

        return tf.lite.Interpreter(model_content=model, num_threads=1)
    return Interpreter(model_content=model, num_threads=1)


def _classifier_predictor(bundle_bytes: bytes, labels: list[str]) -> Callable[[np.ndarray], int]:
    """``rgb -> label index`` through edged's own classifier (raises ImportError if absent)."""
    from edged.model.classifier import Classifier

    classifier = Classifier.from_bundle(read_bundle(bundle_bytes))
    index = {label: i for i, label in enumerate(labels)}

    def predict(rgb: np.ndarray) -> int:
        return index[classifier.classify(rgb, top_k=1).label]

    return predict


# ---------------------------------------------------------------------- training


@dataclass(slots=True)
class TrainResult:
    model: bytes
    labels: list[str]
    spec: InputSpec
    report: dict[str, Any]
    golden: dict[str, Any]
    golden_tensor: bytes
    eval_path: str
    per_class_recall: dict[str, float] = field(default_factory=dict)


def _load_pixels(samples: Sequence[Sample], spec: InputSpec) -> tuple[np.ndarray, np.ndarray]:
    x = np.stack([spec.pixels(load_rgb(p)) for p, _ in samples]).astype(np.float32)
    y = np.asarray([label for _, label in samples], dtype=np.int64)
    return x, y


def build_model(input_shape: tuple[int, int, int], num_classes: int, seed: int) -> Any:
    """The CNN on normalised input: 3 × (conv3×3 - batch norm - ReLU - max pool), dense."""
    import keras

    init = keras.initializers.HeNormal(seed=seed)
    inputs = keras.Input(shape=input_shape, name="image")
    x = inputs
    for i, filters in enumerate((16, 32, 64)):
        x = keras.layers.Conv2D(
            filters, 3, padding="same", use_bias=False, kernel_initializer=init, name=f"conv{i}"
        )(x)
        x = keras.layers.BatchNormalization(momentum=0.9, name=f"bn{i}")(x)
        x = keras.layers.ReLU(name=f"relu{i}")(x)
        x = keras.layers.MaxPooling2D(2, name=f"pool{i}")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    x = keras.layers.Dropout(0.3, seed=seed, name="dropout")(x)
    outputs = keras.layers.Dense(
        num_classes,
        activation="softmax",
        kernel_initializer=keras.initializers.GlorotUniform(seed=seed),
        name="probs",
    )(x)
    return keras.Model(inputs, outputs, name="edged_cnn")


def _augmenter(seed: int) -> Any:
    """Training-only distortions in pixel space (white fill, like paper around a digit)."""
    import keras

    fill = {"fill_mode": "constant", "fill_value": 255.0}
    return keras.Sequential(
        [
            keras.layers.RandomTranslation(0.1, 0.1, seed=seed, **fill),
            keras.layers.RandomRotation(0.04, seed=seed + 1, **fill),
            keras.layers.RandomZoom((-0.1, 0.15), seed=seed + 2, **fill),
            keras.layers.RandomContrast(0.3, value_range=(0, 255), seed=seed + 3),
            keras.layers.RandomBrightness(0.1, value_range=(0, 255), seed=seed + 4),
        ],
        name="augment",
    )


def train(
    data_dir: Path,
    *,
    epochs: int = 30,
    input_size: int = 32,
    channels: int = 1,
    seed: int = 0,
    val_fraction: float = 0.2,
    batch_size: int = 32,
    io_dtype: str = "int8",
    eval_with: str = "auto",
    log: Callable[[str], None] = print,
) -> TrainResult:
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()

    files = list_image_folder(data_dir)
    labels = sorted(files)
    train_set, val_set = split_dataset(files, val_fraction, seed)
    log(f"{len(labels)} classes, {len(train_set)} train / {len(val_set)} validation images")
    mean, std = [0.0] * channels, [255.0] * channels  # the model sees pixel / 255 in [0, 1]
    spec = InputSpec(input_size, input_size, channels, mean, std, dtype=io_dtype)
    x_train, y_train = _load_pixels(train_set, spec)
    x_val, y_val = _load_pixels(val_set, spec)

    core = build_model((input_size, input_size, channels), len(labels), seed)
    pixels_in = keras.Input(shape=(input_size, input_size, channels), name="pixels")
    normalised = keras.layers.Rescaling(1.0 / std[0], offset=-mean[0] / std[0])(
        _augmenter(seed)(pixels_in)
    )
    trainer = keras.Model(pixels_in, core(normalised), name="trainer")
    steps = epochs * int(np.ceil(len(x_train) / batch_size))
    trainer.compile(
        optimizer=keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(3e-3, steps)),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    core.summary(print_fn=lambda line, **_: log(line))
    started = time.monotonic()
    trainer.fit(
        x_train,
        y_train,
        batch_size=batch_size,
        epochs=epochs,
        shuffle=True,
        validation_data=(x_val, y_val),
        verbose=1 if sys.stdout.isatty() else 2,
    )
    log(f"trained {epochs} epochs in {time.monotonic() - started:.0f} s")

    float_probs = core.predict(normalize(x_val, mean, std), batch_size=256, verbose=0)
    acc_float = float(np.mean(np.argmax(float_probs, axis=1) == y_val))

    model = convert_int8(core, normalize(x_train, mean, std), seed=seed, io_dtype=io_dtype)
    runner = TfliteRunner(model, spec)
    detail = runner.inp
    in_scale, in_zero_point = detail["quantization"]
    spec.scale, spec.zero_point = float(in_scale), int(in_zero_point)
    if list(detail["shape"]) != [1, input_size, input_size, channels]:
        raise RuntimeError(f"unexpected model input shape {list(detail['shape'])}")

    # int8 accuracy through the device's path: edged's classifier when importable.
    predict: Callable[[np.ndarray], int] = runner.predict
    eval_path = "ai_edge_litert (tools.train preprocessing)"
    if eval_with in ("auto", "classifier"):
        probe = build_bundle(
            name="probe", version=1, model=model, labels=labels, input_spec=spec.as_manifest()
        )
        try:
            predict = _classifier_predictor(probe, labels)
            eval_path = "edged.model.classifier.Classifier"
        except ImportError:
            if eval_with == "classifier":
                raise
    val_rgb = [load_rgb(p) for p, _ in val_set]
    preds = np.asarray([predict(rgb) for rgb in val_rgb])
    acc_int8 = float(np.mean(preds == y_val))
    recall = {
        label: round(float(np.mean(preds[y_val == i] == i)), 4)
        for i, label in enumerate(labels)
        if np.any(y_val == i)
    }

    # Golden vector: the validation image the int8 model is least sure of, so that its output
    # spreads over several classes instead of one saturated score.
    direct = [runner.run_tensor(runner.input_tensor(rgb)) for rgb in val_rgb]
    pick = int(np.argmin([float(np.max(out)) for out in direct]))
    golden_in = runner.input_tensor(val_rgb[pick])
    golden_out = direct[pick]
    out_scale = float(runner.out["quantization"][0]) or 1e-3
    golden = {
        "member": GOLDEN_MEMBER,
        "output": [round(float(v), 6) for v in golden_out],
        "atol": round(GOLDEN_ATOL_STEPS * out_scale, 6),
        "source": val_set[pick][0].name,
        "label": labels[val_set[pick][1]],
    }
    report = {
        "val_accuracy_float": round(acc_float, 4),
        "val_accuracy_int8": round(acc_int8, 4),
        "val_samples": len(val_set),
        "train_samples": len(train_set),
        "model_bytes": len(model),
        "epochs": epochs,
        "seed": seed,
        "val_fraction": val_fraction,
        "per_class_recall_int8": recall,
        "eval": eval_path,
    }
    return TrainResult(
        model=model,
        labels=labels,
        spec=spec,
        report=report,
        golden=golden,
        golden_tensor=golden_in.tobytes(),
        eval_path=eval_path,
        per_class_recall=recall,
    )


def convert_int8(core: Any, calibration: np.ndarray, *, seed: int, io_dtype: str) -> bytes:
    """Full-integer TFLite: int8 weights/activations, ``io_dtype`` input and output."""
    import tensorflow as tf

    rng = np.random.default_rng(seed)
    rows = rng.permutation(len(calibration))[: min(300, len(calibration))]

    def representative() -> Iterator[list[np.ndarray]]:
        for r in rows:
            yield [calibration[r : r + 1].astype(np.float32)]

    with tempfile.TemporaryDirectory(prefix="edged-train-") as tmp:
        saved = str(Path(tmp) / "saved_model")
        core.export(saved, format="tf_saved_model", verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(saved)
        return _convert(converter, representative, io_dtype)


def _convert(converter: Any, representative: Callable[[], Any], io_dtype: str) -> bytes:
    import tensorflow as tf

    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = representative
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    tf_dtype = {"int8": tf.int8, "uint8": tf.uint8}[io_dtype]
    converter.inference_input_type = tf_dtype
    converter.inference_output_type = tf_dtype
    return bytes(converter.convert())


# --------------------------------------------------------------------------- CLI


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tools.train",
        description="Train a small int8 image classifier and write an edged bundle.",
    )
    parser.add_argument("data_dir", type=Path, help="image folder, one sub-folder per label")
    parser.add_argument("--out", type=Path, required=True, help="bundle to write (.edgb)")
    parser.add_argument("--name", required=True, help="model name in the manifest")
    parser.add_argument("--version", type=int, default=1, help="positive integer")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--input-size", type=int, default=32, help="model input side, pixels")
    parser.add_argument("--channels", type=int, choices=(1, 3), default=1, help="1 = grey")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--val-fraction", type=float, default=0.2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--io-dtype", choices=("int8", "uint8"), default="int8")
    parser.add_argument(
        "--eval-with",
        choices=("auto", "classifier", "direct"),
        default="auto",
        help="int8 evaluation: edged's Classifier (auto: when importable) or LiteRT directly",
    )
    parser.add_argument("--sign-key", type=Path, help="Ed25519 private key (PEM) to sign with")
    args = parser.parse_args(argv)
    if args.version < 1 or args.epochs < 1 or args.input_size < 8:
        parser.error("--version and --epochs must be >= 1, --input-size >= 8")

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ info chatter
    key = load_private_key(args.sign_key) if args.sign_key else None
    result = train(
        args.data_dir,
        epochs=args.epochs,
        input_size=args.input_size,
        channels=args.channels,
        seed=args.seed,
        val_fraction=args.val_fraction,
        batch_size=args.batch_size,
        io_dtype=args.io_dtype,
        eval_with=args.eval_with,
    )
    data = build_bundle(
        name=args.name,
        version=args.version,
        model=result.model,
        labels=result.labels,
        input_spec=result.spec.as_manifest(),
        extra_members={GOLDEN_MEMBER: result.golden_tensor},
        extra_manifest={"report": result.report, "golden": result.golden},
        signing_key=key,
    )
    read_bundle(data)  # round-trip check before writing
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(data)
    r = result.report
    print(
        f"wrote {args.out} ({len(data)} bytes; model {r['model_bytes']} bytes)\n"
        f"validation ({r['val_samples']} images): float {r['val_accuracy_float']:.4f}, "
        f"int8 {r['val_accuracy_int8']:.4f} [{result.eval_path}]\n"
        "per-class int8 recall: "
        + ", ".join(f"{k}={v:.3f}" for k, v in result.per_class_recall.items())
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
