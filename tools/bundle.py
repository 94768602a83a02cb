"""(Re)bundle and sign a TFLite model as an edged bundle (host only, no TensorFlow needed).

    python -m tools bundle MODEL.tflite --labels labels.txt --name N --version V \\
        [--key private.pem] [--mean M ... --std S ...] [--golden-image IMG] --out X.edgb

Everything the manifest says about the input is read from the model itself, through the
device's own code (:class:`edged.model.classifier.Classifier` on an unsigned probe bundle):
shape, dtype, layout (guessed from the channel axis) and quantisation; the normalisation is
``--mean``/``--std`` when given, else what the daemon would use (TFLite metadata, then the
convention the input quantisation implies). The golden test vector is the input tensor the
device makes of one frame (``--golden-image``, else a fixed synthetic picture), stored raw as
``golden.bin``, and the dequantised output the model gives for it, with a tolerance of
:data:`~tools.golden.GOLDEN_ATOL_STEPS` output quantisation steps (:mod:`tools.golden`). The bundle is read back, its signature verified with the signing key's public half
and its golden vector replayed before it is written.

``tools.train`` builds its bundles with :func:`make_bundle` too.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edged.errors import BundleError, EdgedError
from edged.model.bundle import (
    GOLDEN,
    Bundle,
    build_bundle,
    load_private_key,
    read_bundle,
)
from edged.model.classifier import Classifier
from edged.model.labels import is_background, read_labels
from edged.model.runtime import load_interpreter
from tools import quality
from tools.golden import (
    SYNTHETIC_GOLDEN,
    GoldenCandidate,
    output_atol,
    pick_golden,
    replay_golden,
    synthetic_frame,
)
from tools.quality import Verdict


class ToolError(Exception):
    """A one-line problem with the inputs: the CLIs print it and exit 2."""


@dataclass(slots=True)
class BuiltBundle:
    data: bytes
    bundle: Bundle
    key_id: str | None


def device_classifier(
    model: bytes,
    labels: Sequence[str] = (),
    *,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    threads: int = 0,
) -> Classifier:
    """The classifier the daemon would build from a bundle of ``model`` (unsigned probe)."""
    spec: dict[str, Any] = {}
    if mean is not None and std is not None:
        spec = {"mean": [float(v) for v in mean], "std": [float(v) for v in std]}
    probe = build_bundle(name="probe", version=1, model=model, labels=list(labels), input_spec=spec)
    return Classifier.from_bundle(read_bundle(probe), threads=threads)


def input_spec(classifier: Classifier) -> dict[str, Any]:
    """The manifest ``input`` spec of the model behind ``classifier``."""
    spec = classifier.preprocessor.spec
    norm = classifier.preprocessor.norm
    return {
        "shape": [int(d) for d in spec.shape],
        "dtype": spec.dtype.name,
        "layout": spec.layout,
        "mean": [float(v) for v in norm.mean],
        "std": [float(v) for v in norm.std],
        "quantization": [float(spec.scale), int(spec.zero_point)],
    }


def make_bundle(
    model: bytes,
    labels: Sequence[str],
    *,
    name: str,
    version: int,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    report: dict[str, Any] | None = None,
    golden: Sequence[GoldenCandidate] = (),
    signing_key: Ed25519PrivateKey | None = None,
    created: datetime | None = None,
    warn: Callable[[str], None] | None = None,
    gate: dict[str, Any] | None = None,
) -> BuiltBundle:
    """Bundle ``model`` with its input spec, labels, report headline and golden vector; sign
    it when a key is given; read it back and replay the golden vector before returning."""
    if (mean is None) != (std is None):
        raise ToolError("--mean and --std go together")
    if version < 1:
        raise ToolError("--version must be a positive integer")
    if not labels:
        raise ToolError("no labels")
    repeats = repeated_labels(labels)
    if repeats:
        (warn or _warn)(describe_repeats(repeats))
    try:
        probe = device_classifier(model, mean=mean, std=std)
    except EdgedError as err:
        raise ToolError(str(err)) from None
    if probe.info.num_classes != len(labels):
        raise ToolError(f"{len(labels)} labels but the model has {probe.info.num_classes} outputs")
    spec = input_spec(probe)
    candidates = list(golden) or [
        GoldenCandidate(SYNTHETIC_GOLDEN, synthetic_frame(probe.info.height, probe.info.width))
    ]
    tensor, output, cand = pick_golden(probe, candidates)
    golden_manifest: dict[str, Any] = {
        "member": GOLDEN,
        "output": [round(float(v), 6) for v in output],
        "atol": output_atol(model),
        "source": cand.source,
    }
    if cand.label is not None:
        golden_manifest["label"] = cand.label
    extra: dict[str, Any] = {"golden": golden_manifest}
    if report is not None:
        extra["report"] = report
    if gate is not None:
        extra["quality"] = gate
    data = build_bundle(
        name=name,
        version=version,
        model=model,
        labels=list(labels),
        input_spec=spec,
        extra_members={GOLDEN: tensor.tobytes()},
        extra_manifest=extra,
        signing_key=signing_key,
        created=created,
    )
    trusted = [signing_key.public_key()] if signing_key is not None else None
    bundle = read_bundle(data, trusted_keys=trusted, allow_unsigned=signing_key is None)
    replay_golden(bundle)
    return BuiltBundle(data, bundle, bundle.key_id)


def repeated_labels(labels: Sequence[str]) -> dict[str, list[int]]:
    """``{label: [output indices]}`` for every label that names more than one output."""
    where: dict[str, list[int]] = {}
    for i, label in enumerate(labels):
        where.setdefault(label, []).append(i)
    return {label: idx for label, idx in where.items() if len(idx) > 1}


def describe_repeats(repeats: dict[str, list[int]], limit: int = 10) -> str:
    """One line naming the repeated labels and their outputs (the first ``limit`` of them)."""
    parts = [
        f"{label!r} (outputs {', '.join(map(str, idx))})"
        for label, idx in list(repeats.items())[:limit]
    ]
    more = f" and {len(repeats) - limit} more" if len(repeats) > limit else ""
    return (
        f"{len(repeats)} repeated label{'s' if len(repeats) > 1 else ''}: {', '.join(parts)}{more}"
        " -- accepted as the daemon does, but predictions of those outputs look alike"
    )


PROBE_FRAMES = 16  # without --eval-dir: 8 synthetic pictures and 8 noise frames


def probe_frames(height: int, width: int, count: int = PROBE_FRAMES) -> list[np.ndarray]:
    """Fixed, varied frames for a label-less variation check: smooth synthetic pictures and
    uniform noise (seeded)."""
    frames = [synthetic_frame(height, width, seed) for seed in range(count // 2)]
    rng = np.random.default_rng(12345)
    frames += [
        rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
        for _ in range(count - len(frames))
    ]
    return frames


def min_output_range(model: bytes) -> float:
    """Outputs "do not vary" below one output quantisation step (quantised output), else
    below :data:`tools.quality.MIN_OUTPUT_RANGE`."""
    interpreter, _ = load_interpreter(model, threads=1)
    out = interpreter.get_output_details()[0]
    scale = float((out.get("quantization") or (0.0, 0))[0])
    if scale > 0 and np.dtype(out["dtype"]).kind in "iu":
        return scale * 1.01
    return quality.MIN_OUTPUT_RANGE


def gate_on_probes(clf: Classifier, min_range: float, extra: Sequence[np.ndarray] = ()) -> Verdict:
    """No labelled data: refuse only a model whose outputs do not move at all over the probe
    frames (and the golden image, when given)."""
    frames = [*probe_frames(clf.info.height, clf.info.width), *extra]
    outputs = np.stack([clf.invoke_raw(clf.preprocess(f)).reshape(-1) for f in frames])
    return quality.check_variation(outputs, min_range=min_range)


def gate_on_folder(
    clf: Classifier, labels: Sequence[str], folder: Path, min_range: float
) -> Verdict:
    """The full gate on a labelled image folder (sub-folders named after labels)."""
    from tools.train.data import list_image_folder, load_rgb

    try:
        files = list_image_folder(folder, min_labels=1)
    except (FileNotFoundError, ValueError) as err:
        raise ToolError(f"--eval-dir: {err}") from None
    names = list(dict.fromkeys(labels))  # unique, in output order
    unknown = sorted(set(files) - set(names))
    if unknown:
        raise ToolError(
            f"--eval-dir: {', '.join(map(repr, unknown[:5]))} "
            f"{'is not a label' if len(unknown) == 1 else 'are not labels'} of the model"
        )
    column = {name: [i for i, lab in enumerate(labels) if lab == name] for name in names}
    outputs, y_true = [], []
    for name, paths in files.items():
        for path in paths:
            try:
                rgb = load_rgb(path)
            except OSError as err:
                raise ToolError(f"--eval-dir: {path}: cannot read image ({err})") from None
            raw = clf.invoke_raw(clf.preprocess(rgb)).reshape(-1)
            outputs.append([float(np.max(raw[column[n]])) for n in names])  # repeats merged
            y_true.append(names.index(name))
    return quality.evaluate(
        np.asarray(outputs, np.float32), np.asarray(y_true), len(names), names,
        min_range=min_range,
    )  # fmt: skip


def _warn(message: str) -> None:
    print(f"bundle: warning: {message}", file=sys.stderr)


def check_version(out: Path, name: str, version: int) -> None:
    """Versions only go up: refuse to replace a bundle of the same name with a version that is
    not newer (the daemon installs a name's bundles in version order)."""
    if not out.is_file():
        return
    try:
        old = read_bundle(out.read_bytes())
    except BundleError:
        return  # not a bundle (or a broken one): nothing to compare with
    if old.name == name and version <= old.version:
        raise ToolError(
            f"{out} holds {name} version {old.version}; give --version {old.version + 1} "
            "or more (or --force to replace it)"
        )


def write_bundle(out: Path, data: bytes) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(out)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tools bundle",
        description="Bundle (and sign) an existing TFLite model as an edged bundle.",
    )
    parser.add_argument("model", type=Path, help="the .tflite model")
    parser.add_argument("--labels", type=Path, required=True, help="label file, one per line")
    parser.add_argument("--name", required=True, help="model name in the manifest")
    parser.add_argument("--version", type=int, required=True, help="positive integer, monotonic")
    parser.add_argument("--out", type=Path, required=True, help="bundle to write (.edgb)")
    parser.add_argument("--key", type=Path, help="Ed25519 private key (PEM) to sign with")
    parser.add_argument("--mean", type=float, nargs="+", help="per-channel mean (0-255 pixels)")
    parser.add_argument("--std", type=float, nargs="+", help="per-channel std (0-255 pixels)")
    parser.add_argument(
        "--golden-image", type=Path, help="frame for the golden vector (default: synthetic)"
    )
    parser.add_argument(
        "--eval-dir",
        type=Path,
        help="labelled image folder (one sub-folder per label) for the quality gate: held-out "
        "accuracy clearly above chance, not the same answer for nearly every image. Without "
        "it, only outputs that do not vary at all over probe frames are refused",
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="replace --out even if it holds a newer version, and bundle a model that fails "
        "the quality gate (with a warning)",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        built = _run(args)
    except (ToolError, EdgedError) as err:
        print(f"bundle: {err}", file=sys.stderr)
        return 2
    m = built.bundle.manifest
    signed = f"signed by key {built.key_id}" if built.key_id else "unsigned"
    print(
        f"wrote {args.out} ({len(built.data)} bytes, {signed}): {m['name']} version "
        f"{m['version']}, input {m['input']['shape']} {m['input']['dtype']}, "
        f"{len(m['labels'])} labels"
    )
    return 0


def _run(args: argparse.Namespace) -> BuiltBundle:
    try:
        model = args.model.read_bytes()
    except OSError as err:
        raise ToolError(f"{args.model}: cannot read model ({err.strerror or err})") from None
    if not args.labels.is_file():
        raise ToolError(f"{args.labels}: no such label file")
    labels = read_labels(args.labels)
    golden: list[GoldenCandidate] = []
    if args.golden_image is not None:
        from tools.train.data import load_rgb

        try:
            golden.append(GoldenCandidate(args.golden_image.name, load_rgb(args.golden_image)))
        except OSError as err:
            raise ToolError(f"{args.golden_image}: cannot read image ({err})") from None
    if not args.force:
        check_version(args.out, args.name, args.version)
    key = load_private_key(args.key) if args.key else None
    try:
        clf = device_classifier(model, labels, mean=args.mean, std=args.std)
    except EdgedError as err:
        raise ToolError(str(err)) from None
    n = clf.info.num_classes
    if len(labels) == n + 1 and is_background(labels[0]):  # what the daemon does, said aloud
        _warn(
            f"{args.labels}: {len(labels)} labels for {n} outputs: the first, {labels[0]!r}, "
            "is dropped (as the daemon does)"
        )
        labels = labels[1:]
    if len(labels) != n:  # before the gate, which reads outputs by label
        raise ToolError(f"{len(labels)} labels but the model has {n} outputs")
    floor = min_output_range(model)
    if args.eval_dir is not None:
        verdict = gate_on_folder(clf, labels, args.eval_dir, floor)
    else:
        verdict = gate_on_probes(clf, floor, [g.rgb for g in golden])
    if not verdict.passed:
        if not args.force:
            raise ToolError(f"model not bundled: {verdict.summary()} (--force bundles it anyway)")
        _warn(f"quality gate failed: {verdict.summary()}; bundled anyway (--force)")
    built = make_bundle(
        model,
        labels,
        name=args.name,
        version=args.version,
        mean=args.mean,
        std=args.std,
        golden=golden,
        signing_key=key,
        gate={**verdict.as_json(), "forced": not verdict.passed},
    )
    write_bundle(args.out, built.data)
    return built


if __name__ == "__main__":
    raise SystemExit(main())
