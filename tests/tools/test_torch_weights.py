"""The PyTorch state-dict reader (no PyTorch, no TensorFlow): both file formats, and hostile
files refused with one line."""

from __future__ import annotations

import io
import pickle
import struct
import zipfile
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from tools.train.torch_weights import LEGACY_MAGIC, WeightsError, read_state_dict

DTYPES = {"<f4": "FloatStorage", "<i8": "LongStorage", "<f2": "HalfStorage", "<f8": "DoubleStorage"}


class Global:
    """A pickled reference to ``module.name`` (written as a GLOBAL opcode, never imported)."""

    def __init__(self, module: str, name: str) -> None:
        self.module, self.name = module, name


class Call:
    """``func(*args)`` in the pickle (REDUCE)."""

    def __init__(self, func: Global, args: tuple[Any, ...]) -> None:
        self.func, self.args = func, args


class Pickler(pickle._Pickler):
    """The pure-Python pickler, writing :class:`Global` and :class:`Call` as PyTorch does."""

    # What typeshed's _Pickler stub leaves out: set per instance / defined by the pure pickler.
    write: Callable[[bytes], None]
    save: Callable[[object], None]
    dispatch = pickle._Pickler.dispatch.copy()

    def save_fake_global(self, obj: Global) -> None:
        self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode())

    def save_call(self, obj: Call) -> None:
        self.save(obj.func)
        self.save(obj.args)
        self.write(pickle.REDUCE)

    # typeshed types _Pickler.dispatch's handlers as taking an Unpickler; they take the pickler.
    dispatch[Global] = save_fake_global  # type: ignore[assignment]
    dispatch[Call] = save_call  # type: ignore[assignment]

    def __init__(self, file: Any, storages: dict[int, Any]) -> None:
        super().__init__(file, protocol=2)
        self.storages = storages

    def persistent_id(self, obj: Any) -> Any:
        if isinstance(obj, tuple) and len(obj) == 6 and obj[0] == "storage":
            return obj
        return None


def dumps(obj: Any) -> bytes:
    buf = io.BytesIO()
    Pickler(buf, {}).dump(obj)
    return buf.getvalue()


def tensor_pickle(tensors: dict[str, np.ndarray]) -> tuple[bytes, list[tuple[str, np.ndarray]]]:
    state: OrderedDict[str, Any] = OrderedDict()
    storages = []
    for i, (name, arr) in enumerate(tensors.items()):
        key = str(1000 + i)
        kind = DTYPES[arr.dtype.str]
        pid = ("storage", Global("torch", kind), key, "cpu", int(arr.size), None)
        stride = tuple(s // arr.itemsize for s in arr.strides) if arr.size else (1,) * arr.ndim
        rebuild = Global("torch._utils", "_rebuild_tensor_v2")
        state[name] = Call(rebuild, (pid, 0, tuple(arr.shape), stride, False, OrderedDict()))
        storages.append((key, np.ascontiguousarray(arr)))
    return dumps(state), storages


def legacy_file(tensors: dict[str, np.ndarray]) -> bytes:
    body, storages = tensor_pickle(tensors)
    out = pickle.dumps(LEGACY_MAGIC, protocol=2) + pickle.dumps(1001, protocol=2)
    out += pickle.dumps({"protocol_version": 1001, "little_endian": True}, protocol=2)
    out += body + pickle.dumps([k for k, _ in storages], protocol=2)
    for _, arr in storages:
        out += struct.pack("<q", arr.size) + arr.tobytes()
    return out


def zip_file(tensors: dict[str, np.ndarray]) -> bytes:
    body, storages = tensor_pickle(tensors)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("archive/data.pkl", body)
        for key, arr in storages:
            zf.writestr(f"archive/data/{key}", arr.tobytes())
    return buf.getvalue()


SAMPLE: dict[str, np.ndarray] = {
    "conv.weight": np.arange(2 * 3 * 3 * 3, dtype=np.float32).reshape(2, 3, 3, 3) / 7,
    "bn.running_var": np.array([1.5, 2.5], np.float32),
    "bn.num_batches_tracked": np.array(7, np.int64),
    "fc.bias": np.array([0.25, -1.0, 3.0], np.float16),
}


@pytest.mark.parametrize("writer", [legacy_file, zip_file])
def test_both_formats_round_trip(writer: Any, tmp_path: Path) -> None:
    path = tmp_path / "w.pth"
    path.write_bytes(writer(SAMPLE))
    got = read_state_dict(path)
    assert list(got) == list(SAMPLE)
    for name, want in SAMPLE.items():
        assert got[name].dtype == want.dtype and got[name].shape == want.shape
        np.testing.assert_array_equal(got[name], want)


def test_strided_views_are_materialised(tmp_path: Path) -> None:
    """A transposed tensor (stride != contiguous) comes out as the logical array."""
    base = np.arange(12, dtype=np.float32)
    pid = ("storage", Global("torch", "FloatStorage"), "0", "cpu", 12, None)
    rebuild = Global("torch._utils", "_rebuild_tensor_v2")
    state = OrderedDict(t=Call(rebuild, (pid, 1, (3, 2), (1, 3), False, OrderedDict())))
    out = pickle.dumps(LEGACY_MAGIC, protocol=2) + pickle.dumps(1001, protocol=2)
    out += pickle.dumps({"little_endian": True}, protocol=2) + dumps(state)
    out += pickle.dumps(["0"], protocol=2) + struct.pack("<q", 12) + base.tobytes()
    path = tmp_path / "t.pth"
    path.write_bytes(out)
    got = read_state_dict(path)["t"]
    np.testing.assert_array_equal(got, np.array([[1, 4], [2, 5], [3, 6]], np.float32))


def write(tmp_path: Path, data: bytes) -> Path:
    path = tmp_path / "bad.pth"
    path.write_bytes(data)
    return path


def test_code_in_the_pickle_is_refused_not_run(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    evil = OrderedDict(x=Call(Global("os", "system"), (f"touch {marker}",)))
    data = pickle.dumps(LEGACY_MAGIC, protocol=2) + pickle.dumps(1001, protocol=2)
    data += pickle.dumps({"little_endian": True}, protocol=2) + dumps(evil)
    with pytest.raises(WeightsError, match=r"refers to os\.system"):
        read_state_dict(write(tmp_path, data))
    assert not marker.exists()
    # In the zip format too, and in the header of the legacy one.
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("a/data.pkl", dumps(evil))
    with pytest.raises(WeightsError, match=r"os\.system"):
        read_state_dict(write(tmp_path, buf.getvalue()))
    with pytest.raises(WeightsError, match="header"):
        read_state_dict(write(tmp_path, dumps(Call(Global("os", "system"), ("true",)))))
    assert not marker.exists()


@pytest.mark.parametrize(
    ("mangle", "message"),
    [
        (lambda b: b[:-5], "truncated"),
        (lambda b: b + b"\0", "trailing bytes"),
        (lambda b: b"not a pickle at all", "not a PyTorch file"),
        (lambda b: pickle.dumps(12345, protocol=2) + b[20:], "magic number"),
    ],
)
def test_damaged_files_are_one_line_errors(mangle: Any, message: str, tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match=message) as err:
        read_state_dict(write(tmp_path, mangle(legacy_file(SAMPLE))))
    assert "\n" not in str(err.value)


def test_tensor_reaching_past_its_storage(tmp_path: Path) -> None:
    pid = ("storage", Global("torch", "FloatStorage"), "0", "cpu", 4, None)
    rebuild = Global("torch._utils", "_rebuild_tensor_v2")
    state = OrderedDict(t=Call(rebuild, (pid, 2, (3,), (1,), False, OrderedDict())))
    data = pickle.dumps(LEGACY_MAGIC, protocol=2) + pickle.dumps(1001, protocol=2)
    data += pickle.dumps({"little_endian": True}, protocol=2) + dumps(state)
    data += pickle.dumps(["0"], protocol=2) + struct.pack("<q", 4) + bytes(16)
    with pytest.raises(WeightsError, match="reaches past its storage"):
        read_state_dict(write(tmp_path, data))


def test_not_a_state_dict(tmp_path: Path) -> None:
    data = pickle.dumps(LEGACY_MAGIC, protocol=2) + pickle.dumps(1001, protocol=2)
    data += pickle.dumps({"little_endian": True}, protocol=2) + dumps([1, 2, 3])
    data += pickle.dumps([], protocol=2)
    with pytest.raises(WeightsError, match="not a state dict but a list"):
        read_state_dict(write(tmp_path, data))
    with pytest.raises(WeightsError, match="allowed"):
        read_state_dict(write(tmp_path, legacy_file(SAMPLE)), max_bytes=100)


def test_zip_bomb_is_refused_before_it_unpacks(tmp_path: Path) -> None:
    """A zip member declared as 400 MB of zeros compresses to a few hundred KB: refused by
    the declared total, never decompressed."""
    n = 100_000_000
    pid = ("storage", Global("torch", "FloatStorage"), "0", "cpu", n, None)
    rebuild = Global("torch._utils", "_rebuild_tensor_v2")
    state = OrderedDict(t=Call(rebuild, (pid, 0, (n,), (1,), False, OrderedDict())))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("a/data.pkl", dumps(state))
        with zf.open("a/data/0", "w") as member:
            chunk = bytes(1 << 20)
            for _ in range(4 * n // len(chunk)):
                member.write(chunk)
    path = write(tmp_path, buf.getvalue())
    assert path.stat().st_size < 2_000_000
    with pytest.raises(WeightsError, match="more than the 100,000,000 allowed"):
        read_state_dict(path, max_bytes=100_000_000)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    arrays=st.lists(
        hnp.arrays(
            st.sampled_from([np.float32, np.int64, np.float16]),
            hnp.array_shapes(min_dims=0, max_dims=4, max_side=4),
        ),
        min_size=1,
        max_size=4,
    ),
    zipped=st.booleans(),
)
def test_any_tensors_round_trip(arrays: list[np.ndarray], zipped: bool, tmp_path: Path) -> None:
    tensors = {f"t{i}": a for i, a in enumerate(arrays)}
    path = tmp_path / "p.pth"
    path.write_bytes((zip_file if zipped else legacy_file)(tensors))
    got = read_state_dict(path)
    for name, want in tensors.items():
        np.testing.assert_array_equal(got[name], want)
        assert got[name].shape == want.shape


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_corrupted_bytes_never_escape_as_other_errors(data: st.DataObject, tmp_path: Path) -> None:
    """Flip, cut or insert bytes anywhere: a state dict or a WeightsError, nothing else."""
    raw = bytearray(legacy_file(SAMPLE))
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(raw) - 1))
        op = data.draw(st.sampled_from(["flip", "cut", "insert"]))
        if op == "flip":
            raw[i] ^= data.draw(st.integers(1, 255))
        elif op == "cut":
            del raw[i : i + data.draw(st.integers(1, 50))]
        else:
            raw[i:i] = bytes(data.draw(st.binary(min_size=1, max_size=8)))
        if not raw:
            raw = bytearray(b"\0")
    path = tmp_path / "c.pth"
    path.write_bytes(bytes(raw))
    try:
        got = read_state_dict(path)
    except WeightsError as err:
        assert "\n" not in str(err)
    else:
        assert all(isinstance(v, np.ndarray) for v in got.values())
