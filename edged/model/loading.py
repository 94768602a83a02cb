"""What :class:`~edged.model.classifier.Classifier` construction draws on: the interpreter, and
the labels, normalisation and softmax mode from explicit settings, a bundle's manifest or the
model's TFLite metadata (the priorities are listed in :mod:`edged.model.classifier`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, cast

import numpy as np

from edged.errors import ModelError
from edged.model import bundle as bundle_mod
from edged.model.autothreads import Plan
from edged.model.bundle import Bundle
from edged.model.labels import parse_labels, read_labels
from edged.model.preprocess import Normalization
from edged.model.runtime import Interpreter, Interpreters, load_interpreters
from edged.model.tflite_metadata import ModelMetadata

SoftmaxMode = Literal["auto", "yes", "no"]
EMBEDDED = "labels embedded in the model"


def interpreters(
    model: bytes, threads: int | str, backend: str, where: str, count: Interpreters = 1
) -> tuple[list[Interpreter], str, Plan]:
    """The model's interpreters as the plan says (edged.model.runtime.load_interpreters)."""
    try:
        return load_interpreters(model, threads=threads, backend=backend, interpreters=count)
    except ModelError as err:
        raise ModelError(f"{where}: {err}") from None


def model_labels(path: Path | None, meta: ModelMetadata) -> tuple[list[str], str]:
    """A ``.tflite`` model's labels and where they came from: the label file, else those
    embedded in the model, else none (class numbers)."""
    label_list, source = explicit_labels(path)
    if path is None and meta.labels:
        label_list, source = meta.labels, EMBEDDED
    return label_list, source


def bundle_labels(bundle: Bundle, path: Path | None, where: str) -> tuple[list[str], str]:
    """A bundle's labels and where they came from: the label file, else the bundle's."""
    label_list, source = explicit_labels(path)
    if path is None:
        label_list = bundle.labels
        if not label_list and bundle_mod.LABELS in bundle.members:
            label_list = parse_labels(bundle.members[bundle_mod.LABELS].decode("utf-8"))
        source = f"{where} labels"
    return label_list, source


def bundle_norm(
    spec: dict[str, Any], mean: list[float] | None, std: list[float] | None
) -> Normalization | None:
    """Explicit ``mean``/``std``, else the bundle manifest's ``input`` spec, else None."""
    norm = explicit_norm(mean, std)
    if norm is None and spec.get("mean") is not None and spec.get("std") is not None:
        norm = Normalization(_floats(spec["mean"]), _floats(spec["std"]), "bundle")
    return norm


def check_manifest(
    spec: dict[str, Any], in_shape: tuple[int, ...], in_dtype: np.dtype[Any], where: str
) -> None:
    """Refuse a bundle whose manifest ``input`` spec disagrees with its model's input."""
    shape = spec.get("shape")
    if shape is not None and tuple(int(d) for d in shape) != in_shape:
        raise ModelError(
            f"{where}: manifest input shape {list(shape)} != model input {list(in_shape)}"
        )
    dtype = spec.get("dtype")
    if dtype is not None and str(dtype) != in_dtype.name:
        raise ModelError(f"{where}: manifest input dtype {dtype} != model input {in_dtype}")


def metadata_norm(meta: ModelMetadata) -> Normalization | None:
    if meta.mean is None or meta.std is None:
        return None
    return Normalization(tuple(meta.mean), tuple(meta.std), "metadata")


def explicit_labels(path: Path | None) -> tuple[list[str], str]:
    if path is None:
        return [], "class numbers"
    return read_labels(Path(path)), str(path)


def explicit_norm(mean: list[float] | None, std: list[float] | None) -> Normalization | None:
    if mean is None and std is None:
        return None
    if mean is None or std is None:
        raise ModelError("mean and std must be given together")
    return Normalization(_floats(mean), _floats(std), "config")


def _floats(values: Any) -> tuple[float, ...]:
    if isinstance(values, int | float):
        return (float(values),)
    try:
        return tuple(float(v) for v in values)
    except (TypeError, ValueError):
        raise ModelError(f"mean/std must be numbers, not {values!r}") from None


def softmax_mode(value: str) -> SoftmaxMode:
    if value in ("auto", "yes", "no"):
        return cast(SoftmaxMode, value)
    raise ModelError(f"softmax must be auto, yes or no, not {value!r}")
