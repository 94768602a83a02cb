from __future__ import annotations

import numpy as np
import pytest

from edged.errors import ModelError
from edged.model import preprocess
from edged.model.preprocess import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    InputSpec,
    Normalization,
    Preprocessor,
    build_lut,
    infer_normalization,
    quant_range,
)
from edged.model.scores import needs_softmax, quantized_probabilities, softmax

U8, I8, F32 = np.dtype(np.uint8), np.dtype(np.int8), np.dtype(np.float32)


def spec(shape: tuple[int, ...], dtype: str, quant: tuple[float, int] = (0.0, 0)) -> InputSpec:
    return InputSpec.from_details(
        {"shape": np.array(shape), "dtype": np.dtype(dtype), "quantization": quant}
    )


# Input quantisation of the real models (model_tensors.txt) and what each means.
@pytest.mark.parametrize(
    ("dtype", "scale", "zp", "mean", "std"),
    [
        (U8, 0.003921568859368563, 0, (0.0,), (255.0,)),  # codelab flowers: [0, 1]
        (U8, 0.0078125, 128, (127.5,), (127.5,)),  # coral mobilenets: [-1, 1]
        (U8, 0.007843137718737125, 127, (127.5,), (127.5,)),  # coral tf2 ptq: [-1, 1]
        (I8, 1.0, -128, (0.0,), (1.0,)),  # mlperf resnet quant: [0, 255]
        (I8, 0.003921568859368563, -128, (0.0,), (255.0,)),  # mlperf vww: [0, 1]
        (I8, 0.018631115555763245, -14, IMAGENET_MEAN, IMAGENET_STD),  # tflm xtensa (PyTorch)
        (I8, 1.0, 0, (128.0,), (1.0,)),  # [-128, 127]
    ],
)
def test_infer_normalization_from_quantisation(
    dtype: np.dtype[np.generic],
    scale: float,
    zp: int,
    mean: tuple[float, ...],
    std: tuple[float, ...],
) -> None:
    norm = infer_normalization(dtype, scale, zp)
    assert (norm.mean, norm.std, norm.source) == (mean, std, "quantization")


def test_infer_normalization_without_quantisation() -> None:
    assert infer_normalization(F32, 0.0, 0) == Normalization((127.5,), (127.5,), "default")
    assert infer_normalization(U8, 0.0, 0) == Normalization((0.0,), (1.0,), "default")
    assert infer_normalization(I8, 0.0, 0) == Normalization((128.0,), (1.0,), "default")


def test_unknown_quantisation_feeds_raw_pixels() -> None:
    norm = infer_normalization(U8, 0.05, 10)  # real range [-0.5, 12.25]: no convention
    lut, offset = build_lut(spec((1, 2, 2, 3), "uint8", (0.05, 10)), norm)
    assert offset == 0 and lut[:, 0].tolist() == list(range(256))


def test_quant_range() -> None:
    assert quant_range(U8, 0.0078125, 128) == (-1.0, 0.9921875)
    assert quant_range(F32, 0.0, 0) is None and quant_range(U8, 0.0, 0) is None


def test_lut_identity_within_one_step_takes_the_fast_path() -> None:
    # coral: (x - 127.5) / 127.5 then q = real * 128 + 128 is x * 1.0039: identity within 1 step
    lut, offset = build_lut(
        spec((1, 4, 4, 3), "uint8", (0.0078125, 128)), Normalization((127.5,), (127.5,), "t")
    )
    assert offset == 0
    # int8 [0, 1] input: q = x - 128
    lut, offset = build_lut(
        spec((1, 4, 4, 3), "int8", (1 / 255, -128)), Normalization((0.0,), (255.0,), "t")
    )
    assert offset == -128 and lut[:, 0].tolist() == list(range(-128, 128))
    # a real change of scale is no identity
    _, offset = build_lut(
        spec((1, 4, 4, 3), "uint8", (1 / 255, 0)), Normalization((127.5,), (127.5,), "t")
    )
    assert offset is None


def test_lut_float_and_per_channel() -> None:
    lut, offset = build_lut(
        spec((1, 2, 2, 3), "float32"), Normalization(IMAGENET_MEAN, IMAGENET_STD, "t")
    )
    assert offset is None and lut.dtype == np.float32 and lut.shape == (256, 3)
    assert lut[0].tolist() == pytest.approx([-2.1179, -2.0357, -1.8044], abs=1e-4)
    assert lut[255].tolist() == pytest.approx([2.2489, 2.4286, 2.64], abs=1e-4)


def test_mean_std_length_must_match_channels() -> None:
    with pytest.raises(ModelError, match="mean has 2 values but the model input has 3 channels"):
        build_lut(spec((1, 2, 2, 3), "float32"), Normalization((1.0, 2.0), (1.0,), "config"))
    with pytest.raises(ModelError, match="std must not contain 0"):
        build_lut(spec((1, 2, 2, 3), "float32"), Normalization((1.0,), (0.0,), "config"))


def test_input_spec_layouts_and_rejections() -> None:
    assert spec((1, 224, 224, 3), "uint8").layout == "NHWC"
    s = spec((1, 3, 224, 160), "int8")
    assert (s.layout, s.channels, s.height, s.width) == ("NCHW", 3, 224, 160)
    assert spec((1, 28, 28, 1), "float32").channels == 1
    assert spec((96, 96, 3), "uint8").layout == "NHWC"  # no batch axis
    for bad in [(1, 10), (2, 8, 8, 3), (1, 8, 8, 5)]:
        with pytest.raises(ModelError):
            spec(bad, "uint8")
    with pytest.raises(ModelError, match="input type float64 is not supported"):
        spec((1, 8, 8, 3), "float64")


def _frames() -> list[np.ndarray]:
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
    return [
        rgb,  # model size
        rng.integers(0, 256, (6, 8), dtype=np.uint8),  # grayscale frame
        np.dstack([rgb, np.full((6, 8), 7, np.uint8)]),  # RGBA
        rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)[2:8, 3:11],  # a crop (strided view)
        rng.integers(0, 256, (30, 17, 3), dtype=np.uint8),  # needs resizing
    ]


def _reference(frame: np.ndarray, s: InputSpec, norm: Normalization) -> np.ndarray:
    """Straightforward float computation of the input tensor for a model-size RGB frame."""
    pix = frame.astype(np.float64)
    if s.channels == 1:
        pix = np.rint(pix @ np.array([0.299, 0.587, 0.114]))[:, :, None]
    mean = np.resize(np.array(norm.mean), s.channels)
    std = np.resize(np.array(norm.std), s.channels)
    real = (pix - mean) / std
    if s.dtype.kind in "iu":
        info = np.iinfo(s.dtype)
        real = np.clip(np.rint(real / s.scale + s.zero_point), info.min, info.max)
    if s.layout == "NCHW":
        real = real.transpose(2, 0, 1)
    return real.reshape(s.shape)


@pytest.mark.parametrize(
    ("shape", "dtype", "quant", "norm"),
    [
        ((1, 6, 8, 3), "uint8", (0.0078125, 128), Normalization((127.5,), (127.5,), "t")),
        ((1, 6, 8, 3), "int8", (1 / 255, -128), Normalization((0.0,), (255.0,), "t")),
        ((1, 3, 6, 8), "int8", (0.018631, -14), Normalization(IMAGENET_MEAN, IMAGENET_STD, "t")),
        ((1, 6, 8, 3), "float32", (0.0, 0), Normalization((127.5,), (127.5,), "t")),
        ((1, 6, 8, 1), "float32", (0.0, 0), Normalization((0.0,), (255.0,), "t")),
        ((1, 1, 6, 8), "uint8", (1 / 255, 0), Normalization((10.0,), (200.0,), "t")),
        ((6, 8, 3), "uint8", (1 / 255, 0), Normalization((0.0, 1.0, 2.0), (255.0,), "t")),
    ],
)
def test_preprocessor_matches_reference(
    monkeypatch: pytest.MonkeyPatch,
    shape: tuple[int, ...],
    dtype: str,
    quant: tuple[float, int],
    norm: Normalization,
) -> None:
    """The OpenCV and the NumPy paths both give the reference tensor."""
    s = spec(shape, dtype, quant)
    # one quantisation step (fast path, luma rounding); float: one grey level of luma
    tol = 1.0 if s.dtype.kind in "iu" else (1.01 / min(norm.std) if s.channels == 1 else 1e-5)
    results: dict[str, list[np.ndarray]] = {}
    for path in ("cv2", "numpy"):
        if path == "numpy":
            monkeypatch.setattr(preprocess, "_cv2", None)
        elif preprocess.opencv() is None:
            continue
        pre = Preprocessor(s, norm)
        out = []
        for frame in _frames():
            tensor = pre(frame)
            assert tensor.shape == shape and tensor.dtype == s.dtype
            out.append(tensor.copy())
        expect = _reference(_frames()[0], s, norm)
        assert np.abs(out[0].astype(np.float64) - expect).max() <= tol
        assert np.abs(out[2].astype(np.float64) - expect).max() <= tol  # RGBA: alpha ignored
        results[path] = out
    if "cv2" in results:
        for a, b in zip(results["cv2"][:4], results["numpy"][:4], strict=True):
            assert np.abs(a.astype(np.float64) - b.astype(np.float64)).max() <= tol


def test_a_frame_that_already_is_the_tensor_is_not_copied() -> None:
    """uint8 RGB at the input size, for an input that takes pixels as they are: the tensor is
    the frame itself (set_tensor copies it); other frames are converted into buffers of the
    preprocessor's own."""
    as_is = Preprocessor(spec((1, 6, 8, 3), "uint8"), Normalization((0.0,), (1.0,), "t"))
    frames = _frames()
    tensor = as_is(frames[0])
    assert np.shares_memory(tensor, frames[0]) and tensor.shape == (1, 6, 8, 3)
    np.testing.assert_array_equal(tensor[0], frames[0])
    grey, rgba, crop = frames[1:4]
    for other, want in (
        (grey, np.repeat(grey[:, :, None], 3, 2)),
        (rgba, rgba[:, :, :3]),
        (crop, crop),
    ):
        out = as_is(other)
        assert not np.shares_memory(out, other)
        np.testing.assert_array_equal(out[0], want)
    int8 = Preprocessor(
        spec((1, 6, 8, 3), "int8", (1 / 255, -128)), Normalization((0.0,), (255.0,), "t")
    )
    assert int8(frames[0]) is int8.buffer  # pixel - 128: a new tensor


def test_preprocessor_rejects_bad_frames() -> None:
    pre = Preprocessor(spec((1, 4, 4, 3), "uint8"), Normalization((0.0,), (1.0,), "t"))
    with pytest.raises(ValueError, match="uint8"):
        pre(np.zeros((4, 4, 3), np.float32))
    with pytest.raises(ValueError, match="HxWx3"):
        pre(np.zeros((4, 4, 2), np.uint8))


def test_softmax_auto() -> None:
    probs = np.array([0.7, 0.2, 0.1], np.float32)
    assert not needs_softmax(probs)
    assert needs_softmax(np.array([2.0, -1.0, 0.5]))  # logits
    assert needs_softmax(np.array([0.9, 0.8, 0.7]))  # in [0, 1] but sums to 2.4
    assert not needs_softmax(np.array([0.6, 0.35]))  # sums to 0.95: within tolerance
    out = softmax(np.array([1.0, 2.0, 3.0]))
    assert out.sum() == pytest.approx(1.0) and out.tolist() == pytest.approx(
        [0.0900, 0.2447, 0.6652], abs=1e-4
    )
    assert softmax(np.array([1000.0, 1000.0])).tolist() == [0.5, 0.5]  # no overflow
    # quantised outputs with a [0, 1] range are probabilities whatever their sum
    assert quantized_probabilities(U8, 0.00390625, 0) and quantized_probabilities(
        I8, 0.00390625, -128
    )
    assert not quantized_probabilities(I8, 0.11373531818389893, -24)  # tflm xtensa logits
    assert not quantized_probabilities(F32, 0.0, 0)
