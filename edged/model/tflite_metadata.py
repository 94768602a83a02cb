"""Read what a ``.tflite`` file says about itself, without the flatbuffers/tflite-support packages.

A TFLite model is a flatbuffer (schema ``tensorflow/lite/schema/schema.fbs``, identifier
``TFL3``). Models written by the TFLite metadata tools carry a second flatbuffer (schema
``metadata_schema.fbs``, identifier ``M001``) in ``Model.buffers[i]`` where
``Model.metadata[j].name == "TFLITE_METADATA"``, and a zip archive appended after the flatbuffer
that holds the associated files (label files).

This module has three jobs:

* :func:`read_metadata` -- name, version, labels and input normalisation; never raises, fields
  that are absent or unreadable come back as ``None`` / ``[]``.
* :func:`check_model` -- a bounds check of every table and vector the interpreter will read,
  so that a truncated file is reported instead of handed to a native loader that may crash.
* :func:`custom_ops` -- the custom op names a model uses (to name them when loading fails).
"""

from __future__ import annotations

import io
import struct
import zipfile
from dataclasses import dataclass, field

from edged.errors import FlatbufferError
from edged.model.labels import parse_labels

TFLITE_IDENTIFIER = b"TFL3"
METADATA_NAME = "TFLITE_METADATA"

# Field slots (declaration order; a union takes two slots: type, then value).
# schema.fbs
_MODEL_OPERATOR_CODES, _MODEL_SUBGRAPHS, _MODEL_BUFFERS, _MODEL_METADATA = 1, 2, 4, 6
_OPCODE_DEPRECATED_BUILTIN, _OPCODE_CUSTOM, _OPCODE_BUILTIN = 0, 1, 3
_SUBGRAPH_TENSORS, _SUBGRAPH_INPUTS, _SUBGRAPH_OUTPUTS, _SUBGRAPH_OPERATORS = 0, 1, 2, 3
_TENSOR_SHAPE, _TENSOR_BUFFER, _TENSOR_NAME, _TENSOR_QUANT = 0, 2, 3, 4
_QUANT_MIN, _QUANT_MAX, _QUANT_SCALE, _QUANT_ZERO_POINT = 0, 1, 2, 3
_OP_OPCODE, _OP_INPUTS, _OP_OUTPUTS, _OP_CUSTOM_OPTIONS = 0, 1, 2, 5
_BUFFER_DATA, _BUFFER_OFFSET, _BUFFER_SIZE = 0, 1, 2
_METADATA_NAME, _METADATA_BUFFER = 0, 1
_CUSTOM_BUILTIN_CODE = 32
# metadata_schema.fbs
_MM_NAME, _MM_VERSION, _MM_SUBGRAPHS = 0, 2, 3
_SGM_INPUTS, _SGM_OUTPUTS, _SGM_FILES = 2, 3, 4
_TM_PROCESS_UNITS, _TM_FILES = 4, 6
_PU_OPTIONS_TYPE, _PU_OPTIONS = 0, 1
_NORMALIZATION_OPTIONS = 1  # ProcessUnitOptions union member index
_NORM_MEAN, _NORM_STD = 0, 1
_FILE_NAME, _FILE_TYPE = 0, 2
_TENSOR_AXIS_LABELS = 2


class _Table:
    """One flatbuffer table: typed, bounds-checked field access."""

    __slots__ = ("_buf", "_pos", "_vsize", "_vtable")

    def __init__(self, buf: bytes, pos: int) -> None:
        self._buf = buf
        _need(buf, pos, 4)
        vtable = pos - struct.unpack_from("<i", buf, pos)[0]
        _need(buf, vtable, 4)
        vsize, tsize = struct.unpack_from("<HH", buf, vtable)
        if vsize < 4 or vsize % 2:
            raise FlatbufferError(f"bad vtable at {vtable}")
        _need(buf, vtable, vsize)
        _need(buf, pos, tsize)
        self._pos, self._vtable, self._vsize = pos, vtable, vsize

    def _field(self, slot: int) -> int | None:
        entry = 4 + 2 * slot
        if entry >= self._vsize:
            return None
        off: int = struct.unpack_from("<H", self._buf, self._vtable + entry)[0]
        return self._pos + off if off else None

    def scalar(self, slot: int, fmt: str, default: int | float = 0) -> int | float:
        p = self._field(slot)
        if p is None:
            return default
        _need(self._buf, p, struct.calcsize(fmt))
        value: int | float = struct.unpack_from("<" + fmt, self._buf, p)[0]
        return value

    def _target(self, slot: int) -> int | None:
        p = self._field(slot)
        if p is None:
            return None
        _need(self._buf, p, 4)
        return p + int(struct.unpack_from("<I", self._buf, p)[0])

    def table(self, slot: int) -> _Table | None:
        t = self._target(slot)
        return None if t is None else _Table(self._buf, t)

    def _vector(self, slot: int, item: int) -> tuple[int, int] | None:
        t = self._target(slot)
        if t is None:
            return None
        _need(self._buf, t, 4)
        n = int(struct.unpack_from("<I", self._buf, t)[0])
        _need(self._buf, t + 4, n * item)
        return t + 4, n

    def string(self, slot: int) -> str | None:
        raw = self.bytes(slot)
        return None if raw is None else raw.decode("utf-8", "replace")

    def bytes(self, slot: int) -> bytes | None:
        v = self._vector(slot, 1)
        return None if v is None else self._buf[v[0] : v[0] + v[1]]

    def vector_len(self, slot: int, item: int) -> int:
        v = self._vector(slot, item)
        return 0 if v is None else v[1]

    def numbers(self, slot: int, fmt: str) -> list[float]:
        v = self._vector(slot, struct.calcsize(fmt))
        if v is None:
            return []
        return [float(x) for x in struct.unpack_from(f"<{v[1]}{fmt}", self._buf, v[0])]

    def tables(self, slot: int) -> list[_Table]:
        v = self._vector(slot, 4)
        if v is None:
            return []
        start, n = v
        out = []
        for i in range(n):
            p = start + 4 * i
            out.append(_Table(self._buf, p + int(struct.unpack_from("<I", self._buf, p)[0])))
        return out


def _need(buf: bytes, pos: int, size: int) -> None:
    if pos < 0 or size < 0 or pos + size > len(buf):
        raise FlatbufferError(f"offset {pos}+{size} is outside the {len(buf)}-byte file")


def _root(buf: bytes, identifier: bytes) -> _Table:
    if len(buf) < 8 or buf[4:8] != identifier:
        raise FlatbufferError(f"no {identifier.decode()} file identifier")
    return _Table(buf, int(struct.unpack_from("<I", buf, 0)[0]))


def is_tflite(data: bytes) -> bool:
    return len(data) >= 8 and data[4:8] == TFLITE_IDENTIFIER


def check_model(data: bytes) -> str | None:
    """Why ``data`` is not a complete TFLite flatbuffer, or None when it is.

    Walks every table and vector that the interpreter reads (operator codes, subgraphs,
    tensors, operators, buffers, metadata) and checks that each lies inside the data.
    """
    if not data:
        return "the model file is empty"
    if not is_tflite(data):
        return "not a TFLite model (no 'TFL3' identifier at bytes 4-8)"
    try:
        model = _root(data, TFLITE_IDENTIFIER)
        n_codes = len(model.tables(_MODEL_OPERATOR_CODES))
        buffers = model.tables(_MODEL_BUFFERS)
        for buffer in buffers:
            buffer.vector_len(_BUFFER_DATA, 1)
            offset = int(buffer.scalar(_BUFFER_OFFSET, "Q"))
            if offset > 1:
                _need(data, offset, int(buffer.scalar(_BUFFER_SIZE, "Q")))
        subgraphs = model.tables(_MODEL_SUBGRAPHS)
        if not subgraphs:
            return "the model has no subgraph"
        for sg in subgraphs:
            sg.vector_len(_SUBGRAPH_INPUTS, 4)
            sg.vector_len(_SUBGRAPH_OUTPUTS, 4)
            for tensor in sg.tables(_SUBGRAPH_TENSORS):
                tensor.vector_len(_TENSOR_SHAPE, 4)
                tensor.string(_TENSOR_NAME)
                if int(tensor.scalar(_TENSOR_BUFFER, "I")) >= max(len(buffers), 1):
                    return "a tensor refers to a buffer the model does not have"
                quant = tensor.table(_TENSOR_QUANT)
                if quant is not None:
                    for slot in (_QUANT_MIN, _QUANT_MAX, _QUANT_SCALE):
                        quant.vector_len(slot, 4)
                    quant.vector_len(_QUANT_ZERO_POINT, 8)
            for op in sg.tables(_SUBGRAPH_OPERATORS):
                if int(op.scalar(_OP_OPCODE, "I")) >= n_codes:
                    return "an operator refers to an op code the model does not have"
                op.vector_len(_OP_INPUTS, 4)
                op.vector_len(_OP_OUTPUTS, 4)
                op.vector_len(_OP_CUSTOM_OPTIONS, 1)
        for meta in model.tables(_MODEL_METADATA):
            meta.string(_METADATA_NAME)
    except FlatbufferError as err:
        return f"the TFLite model is truncated or corrupt ({err})"
    return None


def custom_ops(data: bytes) -> list[str]:
    """Names of the custom ops the model uses (empty when none or unreadable)."""
    try:
        model = _root(data, TFLITE_IDENTIFIER)
        names = []
        for code in model.tables(_MODEL_OPERATOR_CODES):
            builtin = max(
                int(code.scalar(_OPCODE_DEPRECATED_BUILTIN, "b")),
                int(code.scalar(_OPCODE_BUILTIN, "i")),
            )
            name = code.string(_OPCODE_CUSTOM)
            if builtin == _CUSTOM_BUILTIN_CODE and name:
                names.append(name)
        return names
    except FlatbufferError:
        return []


@dataclass(slots=True)
class ModelMetadata:
    """What the model's embedded TFLite metadata says; None / [] where it says nothing."""

    name: str | None = None
    version: str | None = None
    labels: list[str] = field(default_factory=list)
    mean: list[float] | None = None
    std: list[float] | None = None


def read_metadata(data: bytes) -> ModelMetadata:
    """Metadata of a ``.tflite`` file's bytes; never raises (odd metadata gives empties)."""
    out = ModelMetadata()
    label_files: list[str] = []
    try:
        meta = _metadata_table(data)
        if meta is not None:
            out.name = meta.string(_MM_NAME) or None
            out.version = meta.string(_MM_VERSION) or None
            subgraphs = meta.tables(_MM_SUBGRAPHS)
            if subgraphs:
                sg = subgraphs[0]
                inputs = sg.tables(_SGM_INPUTS)
                if inputs:
                    out.mean, out.std = _normalization(inputs[0])
                for tensor in sg.tables(_SGM_OUTPUTS):
                    label_files += _axis_label_files(tensor, _TM_FILES)
                label_files += _axis_label_files(sg, _SGM_FILES)
    except (FlatbufferError, struct.error, UnicodeDecodeError):
        pass
    out.labels = _zip_labels(data, label_files)
    return out


def _metadata_table(data: bytes) -> _Table | None:
    model = _root(data, TFLITE_IDENTIFIER)
    buffers = model.tables(_MODEL_BUFFERS)
    for entry in model.tables(_MODEL_METADATA):
        if entry.string(_METADATA_NAME) != METADATA_NAME:
            continue
        index = int(entry.scalar(_METADATA_BUFFER, "I"))
        if index >= len(buffers):
            return None
        buffer = buffers[index]
        raw = buffer.bytes(_BUFFER_DATA)
        offset = int(buffer.scalar(_BUFFER_OFFSET, "Q"))
        if not raw and offset > 1:
            size = int(buffer.scalar(_BUFFER_SIZE, "Q"))
            _need(data, offset, size)
            raw = data[offset : offset + size]
        if not raw or len(raw) < 8:
            return None
        # The identifier is optional in metadata buffers; read the root either way.
        return _Table(bytes(raw), int(struct.unpack_from("<I", raw, 0)[0]))
    return None


def _normalization(tensor: _Table) -> tuple[list[float] | None, list[float] | None]:
    for unit in tensor.tables(_TM_PROCESS_UNITS):
        if int(unit.scalar(_PU_OPTIONS_TYPE, "B")) != _NORMALIZATION_OPTIONS:
            continue
        options = unit.table(_PU_OPTIONS)
        if options is None:
            continue
        mean = options.numbers(_NORM_MEAN, "f")
        std = options.numbers(_NORM_STD, "f")
        if mean and std and all(s != 0 for s in std):
            return mean, std
    return None, None


def _axis_label_files(table: _Table, slot: int) -> list[str]:
    names = []
    for f in table.tables(slot):
        name = f.string(_FILE_NAME)
        if name and int(f.scalar(_FILE_TYPE, "b")) == _TENSOR_AXIS_LABELS:
            names.append(name)
    return names


def _zip_labels(data: bytes, wanted: list[str]) -> list[str]:
    """Labels from the zip appended to the model: the named label file, else a lone .txt."""
    if b"PK\x05\x06" not in data[-65_600:]:
        return []
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            names = zf.namelist()
            chosen = next((n for n in wanted if n in names), None)
            if chosen is None:
                texts = [n for n in names if n.lower().endswith(".txt")]
                if len(texts) != 1:
                    return []
                chosen = texts[0]
            text = zf.read(chosen).decode("utf-8-sig", "replace")
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError, KeyError):
        return []
    return parse_labels(text)
