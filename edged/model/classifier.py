"""The image classifier: a TFLite model (or an edged bundle) behind ``classify(frame)``.

Where each piece of knowledge comes from, highest priority first:

* normalisation: explicit ``mean``/``std`` -> bundle manifest ``input`` spec -> the model's TFLite
  metadata NormalizationOptions -> inferred from the input quantisation
  (:func:`edged.model.preprocess.infer_normalization`)
* labels: explicit label file -> bundle labels -> labels embedded in the model -> ``class_<i>``
* layout: bundle manifest ``input.layout`` -> guessed from the input shape (channel axis of 1 or 3)

The helpers that draw these from settings, bundles and metadata are in :mod:`edged.model.loading`.

``softmax="auto"`` leaves a quantised output whose range is [0, 1] alone (it already holds
probabilities) and otherwise applies softmax to each result that is not a probability vector
(values outside [0, 1], or a sum more than 0.1 away from 1).

A :class:`Classifier` may hold several interpreters of the same model (``model.threads =
"auto"`` chose a plan such as ``2x1``, edged.model.autothreads): :meth:`Classifier.infer` is
then safe to call from that many threads at once, each call using a free interpreter. The rest
(``classify``, ``preprocessor``, ``postprocess``) is for one thread at a time.
"""

from __future__ import annotations

import hashlib
import logging
import queue
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edged.config import ModelConfig
from edged.errors import BundleError, ModelError
from edged.model import bundle as bundle_mod
from edged.model import loading
from edged.model.autothreads import Plan
from edged.model.bundle import Bundle
from edged.model.labels import align_labels
from edged.model.preprocess import InputSpec, Normalization, Preprocessor, infer_normalization
from edged.model.runtime import Interpreter
from edged.model.scores import needs_softmax, quantized_probabilities, top_indices
from edged.model.tflite_metadata import read_metadata

log = logging.getLogger(__name__)
DEFAULT_PLAN = Plan(1, 1)


@dataclass(slots=True)
class Prediction:
    label: str
    score: float
    top: list[tuple[str, float]]  # top_k, descending by score
    preprocess_ms: float
    invoke_ms: float
    postprocess_ms: float


@dataclass(frozen=True, slots=True)
class ModelInfo:
    name: str
    version: int | None
    sha256: str  # of the .tflite bytes
    backend: str
    width: int
    height: int
    channels: int
    dtype: str
    layout: str  # "NHWC" | "NCHW"
    num_classes: int
    plan: Plan = DEFAULT_PLAN  # interpreters x threads each


class Classifier:
    info: ModelInfo
    labels: list[str]

    def __init__(
        self,
        interpreter: Interpreter,
        *,
        backend: str,
        model: bytes,
        name: str,
        version: int | None,
        labels: list[str],
        labels_source: str,
        norm: Normalization | None,
        layout: str | None = None,
        softmax: loading.SoftmaxMode = "auto",
        spares: Sequence[Interpreter] = (),
        plan: Plan | None = None,
    ) -> None:
        """Use :meth:`load` or :meth:`from_bundle`; this wires already loaded interpreters
        (``spares``: more of the same model, for :meth:`infer` from several threads)."""
        self._interp = interpreter
        self._all = [interpreter, *spares]
        self._free: queue.SimpleQueue[Interpreter] = queue.SimpleQueue()
        for each in self._all:
            self._free.put(each)
        self._softmax = loading.softmax_mode(softmax)
        inputs = interpreter.get_input_details()
        outputs = interpreter.get_output_details()
        if len(inputs) != 1:
            raise ModelError(f"model has {len(inputs)} inputs; a classifier takes one image")
        if len(outputs) != 1:
            raise ModelError(f"model has {len(outputs)} outputs; a classifier has one score vector")
        in_details = self._batch_of_one(inputs[0])
        spec = InputSpec.from_details(in_details, layout)
        self._in_index = int(in_details["index"])
        self._in_shape = spec.shape
        self._in_dtype = spec.dtype
        out = interpreter.get_output_details()[0]
        self._out_index = int(out["index"])
        self._out_shape = tuple(int(d) for d in out["shape"])
        scale, zero_point = out.get("quantization", (0.0, 0)) or (0.0, 0)
        self._out_scale, self._out_zp = float(scale), int(zero_point)
        if softmax == "auto" and quantized_probabilities(
            np.dtype(out["dtype"]), self._out_scale, self._out_zp
        ):
            self._softmax = "no"
        num_classes = int(
            np.prod(self._out_shape[1:] if len(self._out_shape) > 1 else self._out_shape)
        )
        if num_classes < 1:
            raise ModelError(f"model output shape {list(self._out_shape)} holds no scores")
        self._scores = np.zeros(num_classes, dtype=np.float32)  # reused by every classify
        if norm is None:
            norm = infer_normalization(spec.dtype, spec.scale, spec.zero_point)
        self.preprocessor = Preprocessor(spec, norm)
        self.labels = self._align(labels, num_classes, labels_source)
        self.info = ModelInfo(
            name=name,
            version=version,
            sha256=hashlib.sha256(model).hexdigest(),
            backend=backend,
            width=spec.width,
            height=spec.height,
            channels=spec.channels,
            dtype=spec.dtype.name,
            layout=spec.layout,
            num_classes=num_classes,
            plan=plan or Plan(len(self._all), 0),
        )
        log.debug(
            "model %s: %dx%dx%d %s %s, normalisation mean=%s std=%s (%s)%s, labels from %s",
            name, spec.width, spec.height, spec.channels, spec.dtype.name, spec.layout,
            norm.mean, norm.std, norm.source,
            " [fast path]" if self.preprocessor.fast_path else "", labels_source,
        )  # fmt: skip

    # -- construction --------------------------------------------------------------------

    @classmethod
    def from_config(cls, cfg: ModelConfig) -> Classifier:
        """The model a ``[model]`` config section names, with its labels and settings."""
        return cls.load(
            cfg.path,
            labels=cfg.labels,
            threads=cfg.threads,
            interpreters=cfg.interpreters,
            backend=cfg.backend,
            mean=cfg.mean,
            std=cfg.std,
            softmax=cfg.softmax,
        )

    @classmethod
    def load(
        cls,
        path: Path,
        *,
        labels: Path | None = None,
        threads: int | str = 0,
        interpreters: int | str = 1,
        backend: str = "auto",
        mean: list[float] | None = None,
        std: list[float] | None = None,
        softmax: str = "auto",
    ) -> Classifier:
        """Load a ``.tflite`` model or an edged bundle (unsigned bundles accepted here;
        signature policy belongs to whoever installs bundles)."""
        path = Path(path)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise ModelError(f"{path}: no such model file") from None
        except OSError as err:
            raise ModelError(f"{path}: cannot read model ({err.strerror or err})") from None
        if bundle_mod.is_bundle(data) or path.suffix == bundle_mod.BUNDLE_SUFFIX:
            try:
                bundle = bundle_mod.read_bundle(data, allow_unsigned=True)
            except BundleError as err:
                raise BundleError(f"{path}: {err}") from None
            return cls.from_bundle(
                bundle,
                threads=threads,
                interpreters=interpreters,
                backend=backend,
                labels=labels,
                mean=mean,
                std=std,
                softmax=softmax,
            )
        interps, used, plan = loading.interpreters(data, threads, backend, str(path), interpreters)
        meta = read_metadata(data)
        label_list, source = loading.model_labels(labels, meta)
        return cls._wired(
            str(path),
            interps,
            plan,
            backend=used,
            model=data,
            name=path.stem,
            version=None,
            labels=label_list,
            labels_source=source,
            norm=loading.explicit_norm(mean, std) or loading.metadata_norm(meta),
            softmax=loading.softmax_mode(softmax),
        )

    @classmethod
    def from_bundle(
        cls,
        bundle: Bundle,
        *,
        threads: int | str = 0,
        interpreters: int | str = 1,
        backend: str = "auto",
        labels: Path | None = None,
        mean: list[float] | None = None,
        std: list[float] | None = None,
        softmax: str = "auto",
    ) -> Classifier:
        """A classifier from a verified bundle: name, version, labels and input spec from its
        manifest."""
        where = f"bundle {bundle.name} v{bundle.version}"
        model = bundle.model_bytes
        interps, used, plan = loading.interpreters(model, threads, backend, where, interpreters)
        spec: dict[str, Any] = bundle.manifest.get("input") or {}
        label_list, source = loading.bundle_labels(bundle, labels, where)
        norm = loading.bundle_norm(spec, mean, std)
        layout = spec.get("layout")
        clf = cls._wired(
            where,
            interps,
            plan,
            backend=used,
            model=model,
            name=bundle.name,
            version=bundle.version,
            labels=label_list,
            labels_source=source,
            norm=norm or loading.metadata_norm(read_metadata(model)),
            layout=str(layout) if layout else None,
            softmax=loading.softmax_mode(softmax),
        )
        loading.check_manifest(spec, clf._in_shape, clf._in_dtype, where)
        return clf

    @classmethod
    def _wired(
        cls, where: str, interps: list[Interpreter], plan: Plan, **kwargs: Any
    ) -> Classifier:
        try:
            return cls(interps[0], spares=interps[1:], plan=plan, **kwargs)
        except ModelError as err:
            raise ModelError(f"{where}: {err}") from None

    def _batch_of_one(self, details: dict[str, Any]) -> dict[str, Any]:
        shape = [int(d) for d in details["shape"]]
        if len(shape) == 4 and shape[0] != 1:
            for interp in self._all:
                interp.resize_tensor_input(int(details["index"]), [1, *shape[1:]])
                interp.allocate_tensors()
            details = self._interp.get_input_details()[0]
        return details

    @staticmethod
    def _align(labels: list[str], num_classes: int, source: str) -> list[str]:
        if source == loading.EMBEDDED:
            try:
                return align_labels(labels, num_classes, source)
            except ModelError as err:
                log.warning("ignoring %s", err)
                return align_labels([], num_classes)
        return align_labels(labels, num_classes, source)

    # -- inference -----------------------------------------------------------------------

    def input_size(self) -> tuple[int, int]:
        """(width, height) the model wants; frames of this size skip resizing."""
        return self.info.width, self.info.height

    def preprocess(self, image: np.ndarray) -> np.ndarray:
        """The input tensor ``classify`` would feed for ``image`` (a copy)."""
        return self.preprocessor(image).copy()

    def new_preprocessor(self) -> Preprocessor:
        """Another preprocessor for this model's input, with its own buffers (for another
        thread: ``preprocessor`` belongs to the thread that calls ``classify``)."""
        pre = self.preprocessor
        return Preprocessor(pre.spec, pre.norm)

    def classify(self, image: np.ndarray, top_k: int = 3) -> Prediction:
        """Classify one HxWx3 uint8 RGB frame (any size; HxW grayscale accepted too)."""
        t0 = time.perf_counter_ns()
        tensor = self.preprocessor(image)
        preprocess_ms = (time.perf_counter_ns() - t0) / 1e6
        raw, invoke_ms = self.infer(tensor)
        t2 = time.perf_counter_ns()
        top = self.postprocess(raw, top_k)
        return Prediction(
            label=top[0][0],
            score=top[0][1],
            top=top,
            preprocess_ms=preprocess_ms,
            invoke_ms=invoke_ms,
            postprocess_ms=(time.perf_counter_ns() - t2) / 1e6,
        )

    @property
    def lanes(self) -> int:
        """How many threads may :meth:`infer` at once (the interpreters held)."""
        return len(self._all)

    def infer(self, tensor: np.ndarray) -> tuple[np.ndarray, float]:
        """``set_tensor`` + ``invoke`` + ``get_tensor`` on a preprocessed input, on a free
        interpreter (waits for one when :attr:`lanes` calls are running): the raw output
        (a copy, flattened) and the milliseconds ``invoke`` took."""
        interp = self._free.get()
        try:
            interp.set_tensor(self._in_index, tensor)
            t0 = time.perf_counter_ns()
            interp.invoke()
            invoke_ms = (time.perf_counter_ns() - t0) / 1e6
            return interp.get_tensor(self._out_index).reshape(-1), invoke_ms
        finally:
            self._free.put(interp)

    def postprocess(self, raw: np.ndarray, top_k: int) -> list[tuple[str, float]]:
        """The top ``top_k`` (label, score) of a raw output from :meth:`infer`, best first:
        dequantised, softmax applied where needed. Not thread-safe (reuses one buffer)."""
        return self._top(raw, top_k)

    def interpreter_handles(self) -> tuple[Interpreter, int, int]:
        """(interpreter, input index, output index), for the bare-interpreter benchmark."""
        return self._interp, self._in_index, self._out_index

    def invoke_raw(self, tensor: np.ndarray) -> np.ndarray:
        """Feed an input tensor as is (golden vectors, benchmarks); return the output tensor
        dequantised to float32 (no softmax). A tensor without the batch axis is accepted."""
        arr = np.asarray(tensor)
        if arr.dtype != self._in_dtype:
            raise ValueError(f"input tensor must be {self._in_dtype}, got {arr.dtype}")
        if arr.shape != self._in_shape:
            if arr.size != int(np.prod(self._in_shape)):
                raise ValueError(f"input tensor must have shape {self._in_shape}, got {arr.shape}")
            arr = arr.reshape(self._in_shape)
        interp = self._free.get()
        try:
            interp.set_tensor(self._in_index, np.ascontiguousarray(arr))
            interp.invoke()
            return self._dequantize(interp.get_tensor(self._out_index))
        finally:
            self._free.put(interp)

    def _dequantize(self, raw: np.ndarray) -> np.ndarray:
        if self._out_scale > 0 and raw.dtype.kind in "iu":
            return ((raw.astype(np.float32) - self._out_zp) * self._out_scale).astype(np.float32)
        return raw.astype(np.float32, copy=False)

    def _top(self, raw: np.ndarray, top_k: int) -> list[tuple[str, float]]:
        k = max(1, min(top_k, raw.size))
        if self._softmax == "no" and self._out_scale > 0 and raw.dtype.kind in "iu":
            # Dequantising is monotonic: rank the integers, dequantise only the top k.
            idx = top_indices(raw, k)
            scores = (raw[idx].astype(np.float32) - self._out_zp) * self._out_scale
            return [(self.labels[i], float(v)) for i, v in zip(idx, scores, strict=True)]
        values = self._scores
        np.copyto(values, raw, casting="unsafe")  # to float32 first: int8 math would wrap
        if raw.dtype.kind in "iu" and self._out_scale > 0:
            values -= self._out_zp
            values *= self._out_scale
        if self._softmax == "yes" or (self._softmax == "auto" and needs_softmax(values)):
            np.subtract(values, values.max(), out=values)
            np.exp(values, out=values)
            np.divide(values, values.sum(), out=values)
        idx = top_indices(values, k)
        return [(self.labels[i], float(values[i])) for i in idx]


def warm_up(clf: Classifier) -> None:
    """One inference on a blank frame: first-use imports and the interpreter's first-run
    set-up happen now, not in the first real frame's latency."""
    w, h = clf.input_size()
    clf.classify(np.zeros((h, w, 3), np.uint8), 1)
