"""Tiny TFLite models written byte by byte (no TensorFlow), run through the real interpreter.

The model is one RESHAPE: the output is the input tensor, flattened. So the classifier's scores
are exactly the tensor preprocessing produced, which lets these tests check resizing, layout,
normalisation, quantisation, dequantisation and softmax end to end on whichever backend is
installed, without the real-data folder.
"""

from __future__ import annotations

import io
import struct
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from edged.errors import ModelError
from edged.model.bundle import build_bundle, read_bundle
from edged.model.classifier import Classifier
from edged.model.runtime import available_backends, load_interpreter
from edged.model.tflite_metadata import check_model, custom_ops, read_metadata

# --- a minimal forward-only flatbuffer writer ------------------------------------------------


@dataclass
class T:  # table: {slot: value}; value is (fmt, number) or a child object
    fields: dict[int, object] = field(default_factory=dict)


@dataclass
class V:  # vector of scalars
    fmt: str
    values: Sequence[float] | bytes
    align: int = 4


def _pad(buf: bytearray, align: int, extra: int = 0) -> None:
    while (len(buf) + extra) % align:
        buf.append(0)


def _place(buf: bytearray, obj: object) -> int:
    if isinstance(obj, str):
        raw = obj.encode()
        _pad(buf, 4)
        pos = len(buf)
        buf += struct.pack("<I", len(raw)) + raw + b"\0"
        return pos
    if isinstance(obj, V):
        data = (
            obj.values
            if isinstance(obj.values, bytes)
            else struct.pack(f"<{len(obj.values)}{obj.fmt}", *obj.values)
        )
        n = len(obj.values)
        _pad(buf, max(obj.align, 4), 4)
        pos = len(buf)
        buf += struct.pack("<I", n) + data
        return pos
    if isinstance(obj, list):  # vector of tables
        _pad(buf, 4)
        pos = len(buf)
        buf += struct.pack("<I", len(obj)) + b"\0" * (4 * len(obj))
        for i, child in enumerate(obj):
            _patch(buf, pos + 4 + 4 * i, _place(buf, child))
        return pos
    assert isinstance(obj, T)
    slots = max(obj.fields, default=-1) + 1
    # Layout: vtable, then the table: soffset, then the fields (table 8-aligned).
    _pad(buf, 2)
    vtable = len(buf)
    buf += b"\0" * (4 + 2 * slots)
    _pad(buf, 8)
    table = len(buf)
    buf += struct.pack("<i", table - vtable)
    offsets: dict[int, int] = {}
    children: list[tuple[int, object]] = []
    for slot, value in sorted(obj.fields.items()):
        if isinstance(value, tuple):  # (struct format, number): an inline scalar
            fmt, number = value
            _pad(buf, struct.calcsize(fmt))
            offsets[slot] = len(buf) - table
            buf += struct.pack("<" + fmt, number)
        else:  # a child object, referred to by an offset
            _pad(buf, 4)
            offsets[slot] = len(buf) - table
            children.append((len(buf), value))
            buf += b"\0\0\0\0"
    struct.pack_into("<HH", buf, vtable, 4 + 2 * slots, len(buf) - table)
    for slot, off in offsets.items():
        struct.pack_into("<H", buf, vtable + 4 + 2 * slot, off)
    for at, child in children:
        _patch(buf, at, _place(buf, child))
    return table


def _patch(buf: bytearray, at: int, target: int) -> None:
    struct.pack_into("<I", buf, at, target - at)


def finish(root: T, ident: bytes) -> bytes:
    buf = bytearray(struct.pack("<I", 0) + ident)
    _patch(buf, 0, _place(buf, root))
    _pad(buf, 16)
    return bytes(buf)


# --- the tiny model ---------------------------------------------------------------------------

_TYPES = {"float32": 0, "int32": 2, "uint8": 3, "int8": 9}
RESHAPE = 22


def tiny_model(
    shape: tuple[int, ...] = (1, 2, 2, 3),
    dtype: str = "uint8",
    quant: tuple[float, int] | None = (1 / 255, 0),
    metadata: bytes | None = None,
    custom_op: str | None = None,
) -> bytes:
    n = int(np.prod(shape))

    def tensor(shp: list[int], typ: str, buffer: int, name: str, q: bool) -> T:
        t = T({0: V("i", shp), 1: ("b", _TYPES[typ]), 2: ("I", buffer), 3: name})
        if q and quant is not None:
            t.fields[4] = T({2: V("f", [quant[0]]), 3: V("q", [quant[1]], align=8)})
        return t

    tensors = [
        tensor(list(shape), dtype, 0, "input", True),
        tensor([2], "int32", 1, "shape", False),
        tensor([1, n], dtype, 0, "scores", True),
    ]
    code = T({0: ("b", RESHAPE), 2: ("i", 1), 3: ("i", RESHAPE)})
    if custom_op is not None:
        code = T({0: ("b", 32), 1: custom_op, 2: ("i", 1), 3: ("i", 32)})
    op = T({0: ("I", 0), 1: V("i", [0, 1]), 2: V("i", [2])})
    subgraph = T({0: tensors, 1: V("i", [0]), 2: V("i", [2]), 3: [op], 4: "main"})
    buffers = [T(), T({0: V("B", struct.pack("<2i", 1, n), align=16)})]
    model = T({0: ("I", 3), 1: [code], 2: [subgraph], 3: "tiny", 4: buffers})
    if metadata is not None:
        buffers.append(T({0: V("B", metadata, align=16)}))
        model.fields[6] = [T({0: "TFLITE_METADATA", 1: ("I", 2)})]
    return finish(model, b"TFL3")


def tiny_metadata(mean: list[float], std: list[float], label_file: str = "labels.txt") -> bytes:
    norm = T({0: V("f", mean), 1: V("f", std)})
    unit = T({0: ("B", 1), 1: norm})
    in_meta = T({0: "image", 4: [unit]})
    out_meta = T({0: "probability", 6: [T({0: label_file, 2: ("b", 2)})]})
    subgraph = T({2: [in_meta], 3: [out_meta]})
    return finish(T({0: "tiny classifier", 2: "v7", 3: [subgraph]}), b"M001")


def with_zip(model: bytes, files: dict[str, str]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, text in files.items():
            zf.writestr(name, text)
    return model + buf.getvalue()


def write(tmp_path: Path, data: bytes, name: str = "tiny.tflite") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


# --- tests ------------------------------------------------------------------------------------


def test_tiny_model_is_a_complete_flatbuffer() -> None:
    data = tiny_model()
    assert check_model(data) is None
    assert custom_ops(data) == []
    assert read_metadata(data).labels == []


def test_loads_on_the_installed_backend() -> None:
    interpreter, backend = load_interpreter(tiny_model(), threads=1)
    assert backend == available_backends()[0]
    assert list(interpreter.get_input_details()[0]["shape"]) == [1, 2, 2, 3]


def test_every_truncation_is_a_model_error_not_a_crash() -> None:
    data = tiny_model()
    for cut in range(0, len(data) - 16, 7):
        with pytest.raises(ModelError) as err:
            load_interpreter(data[:cut])
        assert "\n" not in str(err.value)


def test_unresolved_custom_op_is_named() -> None:
    data = tiny_model(custom_op="my-fancy-op")
    assert custom_ops(data) == ["my-fancy-op"]
    with pytest.raises(ModelError, match="model needs custom op 'my-fancy-op' that "):
        load_interpreter(data)


def test_uint8_scores_are_the_pixels_over_255(tmp_path: Path) -> None:
    clf = Classifier.load(write(tmp_path, tiny_model()))
    assert clf.info.layout == "NHWC" and clf.info.num_classes == 12
    assert clf.preprocessor.fast_path
    image = np.zeros((2, 2, 3), np.uint8)
    image[0, 1] = (10, 200, 30)  # pixel (y=0, x=1): flat NHWC indices 3, 4, 5
    pred = clf.classify(image, top_k=2)
    # uint8 output with scale 1/255: already probabilities, no softmax.
    assert [label for label, _ in pred.top] == ["class_4", "class_5"]
    assert [score for _, score in pred.top] == pytest.approx([200 / 255, 30 / 255])
    assert pred.label == "class_4" and pred.score == pytest.approx(200 / 255)
    assert pred.preprocess_ms >= 0 and pred.invoke_ms >= 0 and pred.postprocess_ms >= 0


def test_nchw_layout_is_transposed(tmp_path: Path) -> None:
    clf = Classifier.load(write(tmp_path, tiny_model(shape=(1, 3, 2, 2))))
    assert clf.info.layout == "NCHW" and clf.input_size() == (2, 2) and clf.info.channels == 3
    image = np.zeros((2, 2, 3), np.uint8)
    image[0, 1] = (10, 200, 30)  # NCHW flat index of channel c at (0, 1) is c*4 + 1
    assert [label for label, _ in clf.classify(image, top_k=3).top] == [
        "class_5",
        "class_9",
        "class_1",
    ]


def test_gray_model_gets_luminance_of_a_resized_frame(tmp_path: Path) -> None:
    clf = Classifier.load(write(tmp_path, tiny_model(shape=(1, 2, 2, 1))))
    frame = np.zeros((40, 60, 3), np.uint8)
    frame[:, 30:] = (255, 255, 255)  # right half white
    tensor = clf.preprocess(frame)
    assert tensor.shape == (1, 2, 2, 1)
    left, right = tensor[0, :, 0, 0], tensor[0, :, 1, 0]
    assert left.max() < 64 and right.min() > 192  # OpenCV: exactly 0 / 255; PIL blends a bit
    frame[:] = (100, 0, 0)
    assert int(clf.preprocess(frame).max()) == round(0.299 * 100)


def test_float_input_defaults_to_minus_one_one_and_softmax(tmp_path: Path) -> None:
    clf = Classifier.load(write(tmp_path, tiny_model(dtype="float32", quant=None)))
    image = np.full((2, 2, 3), 255, np.uint8)
    image[1, 1, 2] = 0
    assert clf.preprocess(image).min() == -1.0 and clf.preprocess(image).max() == 1.0
    raw = clf.invoke_raw(clf.preprocess(image))
    assert raw.dtype == np.float32 and raw.shape == (1, 12) and raw[0, 11] == -1.0
    pred = clf.classify(image, top_k=12)
    # softmax of eleven 1.0 and one -1.0
    e = np.exp([1.0] * 11 + [-1.0])
    assert pred.top[-1][0] == "class_11"
    assert pred.top[-1][1] == pytest.approx(e[-1] / e.sum(), rel=1e-5)
    assert sum(s for _, s in pred.top) == pytest.approx(1.0, rel=1e-5)
    assert clf.classify(image).score == pytest.approx(e[0] / e.sum(), rel=1e-5)


def test_explicit_mean_std_and_softmax_no(tmp_path: Path) -> None:
    path = write(tmp_path, tiny_model(dtype="float32", quant=None))
    clf = Classifier.load(path, mean=[0.0], std=[1.0], softmax="no")
    pred = clf.classify(np.full((2, 2, 3), 7, np.uint8), top_k=1)
    assert pred.score == 7.0


def test_int8_imagenet_quantisation_inferred(tmp_path: Path) -> None:
    # The quantisation of tflm_xtensa_mobilenet_v2 (a PyTorch export): real range [-2.12, 2.63].
    model = tiny_model(shape=(1, 3, 2, 2), dtype="int8", quant=(0.018631115555763245, -14))
    clf = Classifier.load(write(tmp_path, model))
    assert clf.preprocessor.norm.source == "quantization"
    image = np.array([[[0, 128, 255]] * 2] * 2, np.uint8)
    tensor = clf.preprocess(image)
    mean, std = np.array([123.675, 116.28, 103.53]), np.array([58.395, 57.12, 57.375])
    expect = np.clip(
        np.round((np.array([0, 128, 255]) - mean) / std / 0.0186311155 - 14), -128, 127
    )
    assert tensor.dtype == np.int8 and tensor[0, :, 0, 0].tolist() == expect.tolist()
    # int8 output with a [-2.1, 2.6] range: logits, so classify applies softmax to the
    # dequantised values; invoke_raw returns them as they are.
    logits = clf.invoke_raw(tensor)
    assert logits[0, :4].tolist() == [pytest.approx(0.018631115555763245 * (-128 + 14))] * 4
    probs = np.exp(logits[0] - logits.max()) / np.exp(logits[0] - logits.max()).sum()
    pred = clf.classify(image, top_k=12)
    assert sorted(s for _, s in pred.top) == pytest.approx(sorted(probs.tolist()), rel=1e-5)
    assert pred.label in ("class_8", "class_9", "class_10", "class_11")  # the 255 channel


def test_embedded_metadata_gives_labels_and_normalisation(tmp_path: Path) -> None:
    meta = tiny_metadata([0.0], [255.0], label_file="labels.txt")
    labels = "\n".join(f"thing {i}" for i in range(12)) + "\n"
    data = with_zip(tiny_model(quant=(1 / 255, 0), metadata=meta), {
        "readme.txt": "not labels",
        "labels.txt": labels,
    })  # fmt: skip
    md = read_metadata(data)
    assert (md.name, md.version, md.mean, md.std) == ("tiny classifier", "v7", [0.0], [255.0])
    assert md.labels[:2] == ["thing 0", "thing 1"] and len(md.labels) == 12
    clf = Classifier.load(write(tmp_path, data))
    assert clf.labels[11] == "thing 11" and clf.preprocessor.norm.source == "metadata"
    explicit = tmp_path / "mine.txt"
    explicit.write_text("".join(f"{i}: mine {i}\n" for i in range(12)))
    assert Classifier.load(write(tmp_path, data), labels=explicit).labels[3] == "mine 3"


def test_metadata_labels_of_the_wrong_length_fall_back_to_class_numbers(tmp_path: Path) -> None:
    meta = tiny_metadata([0.0], [255.0])
    data = with_zip(tiny_model(metadata=meta), {"labels.txt": "a\nb\nc\n"})
    assert Classifier.load(write(tmp_path, data)).labels[0] == "class_0"


def test_explicit_label_mismatch_is_one_line(tmp_path: Path) -> None:
    labels = tmp_path / "labels.txt"
    labels.write_text("a\nb\nc\n")
    with pytest.raises(ModelError, match=r"labels.txt has 3 labels but the model has 12 outputs"):
        Classifier.load(write(tmp_path, tiny_model()), labels=labels)


def test_bundle_supplies_name_version_labels_and_input_spec(tmp_path: Path) -> None:
    model = tiny_model(dtype="float32", quant=None)
    spec = {"shape": [1, 2, 2, 3], "dtype": "float32", "layout": "NHWC", "mean": [0], "std": [1]}
    labels = [f"L{i}" for i in range(12)]
    data = build_bundle(name="tiny", version=4, model=model, labels=labels, input_spec=spec)
    clf = Classifier.load(write(tmp_path, data, "tiny.edgb"), softmax="no")
    assert (clf.info.name, clf.info.version, clf.labels[5]) == ("tiny", 4, "L5")
    assert clf.info.sha256 == read_bundle(data).sha256
    image = np.full((2, 2, 3), 3, np.uint8)
    image[1, 0, 1] = 9  # flat index 7; mean 0 / std 1 from the manifest: scores are pixels
    assert clf.classify(image, top_k=1).top == [("L7", 9.0)]
    wrong = build_bundle(
        name="tiny", version=5, model=model, labels=labels, input_spec={**spec, "shape": [1, 4]}
    )
    with pytest.raises(ModelError, match=r"bundle tiny v5: manifest input shape \[1, 4\]"):
        Classifier.from_bundle(read_bundle(wrong))


def test_plain_model_info(tmp_path: Path) -> None:
    import hashlib

    data = tiny_model()
    clf = Classifier.load(write(tmp_path, data, "my-model.tflite"), threads=1)
    assert clf.info.name == "my-model" and clf.info.version is None
    assert clf.info.sha256 == hashlib.sha256(data).hexdigest()
    assert (clf.info.dtype, clf.info.width, clf.info.height) == ("uint8", 2, 2)
    assert clf.info.backend in available_backends()


class FakeInterpreter:
    """Just enough of an interpreter to reach the classifier's shape checks."""

    def __init__(self, inputs: list[list[int]], outputs: list[list[int]]) -> None:
        self.inputs, self.outputs = inputs, outputs
        self.resized: list[int] | None = None

    def _details(self, shapes: list[list[int]]) -> list[dict[str, object]]:
        return [
            {"index": i, "shape": np.array(s), "dtype": np.uint8, "quantization": (0.0, 0)}
            for i, s in enumerate(shapes)
        ]

    def get_input_details(self) -> list[dict[str, object]]:
        return self._details(self.inputs)

    def get_output_details(self) -> list[dict[str, object]]:
        return self._details(self.outputs)

    def resize_tensor_input(self, index: int, shape: list[int]) -> None:
        self.resized = shape
        self.inputs = [shape]

    def allocate_tensors(self) -> None:
        pass


def _wire(interp: FakeInterpreter) -> Classifier:
    return Classifier(
        interp,  # type: ignore[arg-type]
        backend="fake",
        model=b"",
        name="fake",
        version=None,
        labels=[],
        labels_source="labels",
        norm=None,
    )


def test_classifier_shape_checks() -> None:
    with pytest.raises(ModelError, match="model has 4 outputs; a classifier has one score vector"):
        _wire(FakeInterpreter([[1, 8, 8, 3]], [[1, 10, 4], [1, 10], [1, 10], [1]]))
    with pytest.raises(ModelError, match="model has 2 inputs"):
        _wire(FakeInterpreter([[1, 8, 8, 3], [1, 4]], [[1, 5]]))
    with pytest.raises(ModelError, match=r"model input shape \[1, 300\] is not one image"):
        _wire(FakeInterpreter([[1, 300]], [[1, 5]]))
    batched = FakeInterpreter([[4, 8, 8, 3]], [[1, 5]])
    clf = _wire(batched)
    assert batched.resized == [1, 8, 8, 3] and clf.info.num_classes == 5
