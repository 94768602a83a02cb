"""``python -m tools bundle``: rebundle and sign the demo model (no TensorFlow needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edged.errors import BundleError
from edged.model.bundle import GOLDEN, read_bundle
from edged.model.classifier import Classifier
from tests.realdata import MODELS, PHOTOS, load_rgb, requires_realdata
from tools.bundle import main, make_bundle
from tools.golden import replay_golden, synthetic_frame
from tools.keygen import main as keygen

pytest.importorskip("ai_edge_litert")

REPO = Path(__file__).resolve().parents[2]
DIGITS = read_bundle((REPO / "models" / "digits.edgb").read_bytes())
CIFAR10 = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


@pytest.fixture
def model_files(tmp_path: Path) -> tuple[Path, Path]:
    model = tmp_path / "digits.tflite"
    model.write_bytes(DIGITS.model_bytes)
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(DIGITS.labels) + "\n")
    return model, labels


@pytest.fixture
def key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[Path, str]:
    assert keygen(["--out", str(tmp_path / "keys" / "test")]) == 0
    kid = capsys.readouterr().out.strip()
    return tmp_path / "keys" / "test", kid


def args(model: Path, labels: Path, out: Path, *extra: str) -> list[str]:
    return [str(model), "--labels", str(labels), "--name", "digits", "--out", str(out), *extra]


def test_rebundle_signed(
    tmp_path: Path,
    model_files: tuple[Path, Path],
    key: tuple[Path, str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    from edged.model.bundle import load_public_key

    model, labels = model_files
    key_base, kid = key
    out = tmp_path / "out" / "digits.edgb"
    argv = args(model, labels, out, "--version", "7", "--key", f"{key_base}.pem")
    assert main(argv) == 0
    assert f"signed by key {kid}" in capsys.readouterr().out
    pub = load_public_key(Path(f"{key_base}.pub.pem"))
    bundle = read_bundle(out.read_bytes(), trusted_keys=[pub], allow_unsigned=False)
    assert bundle.key_id == kid and bundle.version == 7 and bundle.labels == DIGITS.labels
    m = bundle.manifest
    assert set(m["files"]) == {"model.tflite", "labels.txt", GOLDEN}
    # The input spec read off the model equals the one training wrote.
    assert m["input"]["shape"] == DIGITS.manifest["input"]["shape"]
    assert m["input"]["dtype"] == "int8" and m["input"]["layout"] == "NHWC"
    assert m["input"]["mean"] == [0.0] and m["input"]["std"] == [255.0]
    assert m["input"]["quantization"] == pytest.approx(DIGITS.manifest["input"]["quantization"])
    # The golden vector: a synthetic frame through the daemon's preprocessing.
    golden = m["golden"]
    assert golden["source"] == "synthetic:0" and golden["atol"] == pytest.approx(4 / 256)
    clf = Classifier.from_bundle(bundle, threads=1)
    assert bundle.members[GOLDEN] == clf.preprocess(synthetic_frame(32, 32)).tobytes()
    np.testing.assert_allclose(replay_golden(bundle), golden["output"], atol=golden["atol"])
    # A tampered golden output is caught.
    m["golden"]["output"] = [1.0 - v for v in golden["output"]]
    with pytest.raises(BundleError, match="golden"):
        replay_golden(bundle)


def test_explicit_normalisation_and_golden_image(
    tmp_path: Path, model_files: tuple[Path, Path]
) -> None:
    model, labels = model_files
    sample = REPO / "samples" / "digit-3-1.png"
    out = tmp_path / "d.edgb"
    argv = args(model, labels, out, "--version", "1", "--mean", "0", "--std", "255")
    assert main([*argv, "--golden-image", str(sample)]) == 0
    bundle = read_bundle(out.read_bytes())
    assert bundle.key_id is None
    assert bundle.manifest["golden"]["source"] == sample.name
    assert bundle.labels[int(np.argmax(replay_golden(bundle)))] == "3"


def test_version_must_go_up(
    tmp_path: Path, model_files: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    model, labels = model_files
    out = tmp_path / "d.edgb"
    assert main(args(model, labels, out, "--version", "3")) == 0
    capsys.readouterr()
    assert main(args(model, labels, out, "--version", "3")) == 2
    assert "--version 4" in capsys.readouterr().err
    assert main(args(model, labels, out, "--version", "2", "--force")) == 0
    assert read_bundle(out.read_bytes()).version == 2
    assert main(args(model, labels, out, "--version", "4")) == 0


def one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert err.startswith("bundle: ") and err.count("\n") == 1, err
    return err


def test_missing_labels_file(
    tmp_path: Path, model_files: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    model, _ = model_files
    out = tmp_path / "d.edgb"
    assert main(args(model, tmp_path / "nope.txt", out, "--version", "1")) == 2
    assert "nope.txt: no such label file" in one_line_error(capsys)
    assert not out.exists()


def test_label_count_must_match_outputs(
    tmp_path: Path, model_files: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    model, labels = model_files
    for count in (9, 11, 1):
        labels.write_text("\n".join(f"l{i}" for i in range(count)) + "\n")
        assert main(args(model, labels, tmp_path / "d.edgb", "--version", "1")) == 2
        assert f"{count} labels but the model has 10 outputs" in one_line_error(capsys)
        # also when an evaluation folder is given (the gate reads outputs by label)
        ev = tmp_path / f"ev{count}" / "l0"
        ev.mkdir(parents=True)
        (ev / "a.png").write_bytes((REPO / "samples" / "digit-0-1.png").read_bytes())
        argv = args(
            model, labels, tmp_path / "d.edgb", "--version", "1", "--eval-dir", str(ev.parent)
        )
        assert main(argv) == 2
        assert f"{count} labels but the model has 10 outputs" in one_line_error(capsys)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--mean", "0"], "--mean and --std go together"),
        (["--mean", "0", "0", "--std", "1", "1"], "2 values but the model input has 1"),
        (["--version", "0"], "positive"),
        (["--key", "/nonexistent.pem"], "private key"),
        (["--golden-image", "/nonexistent.png"], "cannot read image"),
    ],
)
def test_bad_arguments_are_one_line_errors(
    tmp_path: Path,
    model_files: tuple[Path, Path],
    capsys: pytest.CaptureFixture[str],
    extra: list[str],
    message: str,
) -> None:
    model, labels = model_files
    version = [] if "--version" in extra else ["--version", "1"]
    assert main(args(model, labels, tmp_path / "d.edgb", *version, *extra)) == 2
    assert message in one_line_error(capsys)


def test_not_a_model(
    tmp_path: Path, model_files: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    _, labels = model_files
    junk = tmp_path / "junk.tflite"
    junk.write_bytes(b"not a flatbuffer at all")
    assert main(args(junk, labels, tmp_path / "d.edgb", "--version", "1")) == 2
    one_line_error(capsys)
    assert main(args(tmp_path / "none.tflite", labels, tmp_path / "d.edgb", "--version", "1")) == 2
    assert "cannot read model" in one_line_error(capsys)


def test_make_bundle_accepts_repeated_labels_and_names_them() -> None:
    warnings: list[str] = []
    labels = ["a"] * 10
    built = make_bundle(DIGITS.model_bytes, labels, name="x", version=1, warn=warnings.append)
    assert built.bundle.labels == labels
    assert warnings == [
        "1 repeated label: 'a' (outputs 0, 1, 2, 3, 4, 5, 6, 7, 8, 9) -- accepted as the "
        "daemon does, but predictions of those outputs look alike"
    ]


def test_repeated_labels_like_imagenets(
    tmp_path: Path, model_files: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """The standard ImageNet label file names 'crane' and 'maillot' twice; the daemon takes
    such files, and so does ``tools bundle``: a warning naming each repeat and its outputs."""
    model, labels = model_files
    names = ["crane", "one", "maillot", "crane", "four", "maillot", "six", "seven", "8", "9"]
    labels.write_text("\n".join(names) + "\n")
    out = tmp_path / "r.edgb"
    assert main(args(model, labels, out, "--version", "1")) == 0
    captured = capsys.readouterr()
    assert captured.err == (
        "bundle: warning: 2 repeated labels: 'crane' (outputs 0, 3), 'maillot' (outputs 2, 5)"
        " -- accepted as the daemon does, but predictions of those outputs look alike\n"
    )
    bundle = read_bundle(out.read_bytes())
    assert bundle.labels == names
    clf = Classifier.from_bundle(bundle, threads=1)
    assert clf.labels == names  # the daemon keeps them as they are


def test_many_repeats_are_summarised() -> None:
    from tools.bundle import describe_repeats, repeated_labels

    labels = [f"l{i // 2}" for i in range(40)]  # 20 names, each twice
    repeats = repeated_labels(labels)
    assert len(repeats) == 20 and repeats["l3"] == [6, 7]
    line = describe_repeats(repeats)
    assert line.startswith("20 repeated labels: 'l0' (outputs 0, 1), ")
    assert "'l9' (outputs 18, 19) and 10 more" in line and "l10" not in line
    assert repeated_labels(["a", "b"]) == {}


def digit_folder(root: Path, mislabel: bool = False) -> Path:
    """The 20 committed digit samples, one sub-folder per label (shifted by one: wrong)."""
    for sample in sorted((REPO / "samples").glob("digit-*.png")):
        label = int(sample.stem.split("-")[1])
        if mislabel:
            label = (label + 1) % 10
        folder = root / DIGITS.labels[label]
        folder.mkdir(parents=True, exist_ok=True)
        (folder / sample.name).write_bytes(sample.read_bytes())
    return root


def test_quality_gate_on_an_evaluation_folder(
    tmp_path: Path, model_files: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    model, labels = model_files
    good = digit_folder(tmp_path / "good")
    out = tmp_path / "g.edgb"
    assert main(args(model, labels, out, "--version", "1", "--eval-dir", str(good))) == 0
    q = read_bundle(out.read_bytes()).manifest["quality"]
    assert q["passed"] is True and q["forced"] is False and q["images"] == 20
    assert q["accuracy"] >= 0.9 and q["chance"] == 0.1 and q["p_value"] < 1e-10

    # The same model judged on wrongly labelled images: refused, nothing written.
    bad = digit_folder(tmp_path / "bad", mislabel=True)
    out2 = tmp_path / "b.edgb"
    capsys.readouterr()
    assert main(args(model, labels, out2, "--version", "1", "--eval-dir", str(bad))) == 2
    err = one_line_error(capsys)
    assert "model not bundled: held-out accuracy 0.000 (0/20) is not clearly above chance" in err
    assert "--force bundles it anyway" in err and not out2.exists()
    # --force: bundled, with a warning, and the manifest says so.
    assert main(args(model, labels, out2, "--version", "1", "--eval-dir", str(bad), "--force")) == 0
    err = capsys.readouterr().err
    assert err.startswith("bundle: warning: quality gate failed: held-out accuracy 0.000")
    q = read_bundle(out2.read_bytes()).manifest["quality"]
    assert q["passed"] is False and q["forced"] is True and q["accuracy"] == 0.0


def test_evaluation_folder_errors(
    tmp_path: Path, model_files: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    model, labels = model_files
    folder = digit_folder(tmp_path / "ev")
    (folder / "eleven").mkdir()
    (folder / "eleven" / "x.png").write_bytes((REPO / "samples" / "digit-0-1.png").read_bytes())
    out = tmp_path / "e.edgb"
    assert main(args(model, labels, out, "--version", "1", "--eval-dir", str(folder))) == 2
    assert "--eval-dir: 'eleven' is not a label of the model" in one_line_error(capsys)
    assert main(args(model, labels, out, "--version", "1", "--eval-dir", str(tmp_path / "no"))) == 2
    assert "--eval-dir" in one_line_error(capsys) and not out.exists()
    (folder / "eleven" / "x.png").unlink()
    (folder / "5" / "broken.png").write_bytes(b"not a png")
    assert main(args(model, labels, out, "--version", "1", "--eval-dir", str(folder))) == 2
    assert "broken.png: cannot read image" in one_line_error(capsys)


def test_probe_frames_are_varied() -> None:
    from tools.bundle import probe_frames

    frames = probe_frames(24, 32)
    assert len(frames) == 16 and all(f.shape == (24, 32, 3) for f in frames)
    flat = np.stack([f.reshape(-1).astype(np.int16) for f in frames])
    assert len({f.tobytes() for f in frames}) == 16 and flat.std(axis=0).mean() > 30


@requires_realdata
def test_the_standard_imagenet_label_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Coral's MobileNet v2 (1001 outputs) with the standard 1001-line ImageNet label file,
    which the daemon accepts: bundled, the repeats named."""
    model = MODELS / "coral_mobilenet_v2_1.0_224_quant.tflite"
    labels = MODELS / "labels_mobilenet_quant_v1_224.txt"
    out = tmp_path / "in.edgb"
    argv = [str(model), "--labels", str(labels), "--name", "imagenet", "--version", "1"]
    assert main([*argv, "--out", str(out)]) == 0
    assert capsys.readouterr().err == (
        "bundle: warning: 2 repeated labels: 'crane' (outputs 135, 518), 'maillot' (outputs "
        "639, 640) -- accepted as the daemon does, but predictions of those outputs look alike\n"
    )
    bundle = read_bundle(out.read_bytes())
    assert len(bundle.labels) == 1001 and bundle.manifest["quality"]["passed"] is True
    clf = Classifier.from_bundle(bundle, threads=1)
    assert clf.classify(load_rgb(PHOTOS / "coral" / "grace_hopper.bmp")).label == "military uniform"


@requires_realdata
def test_a_label_file_with_a_background_line_too_many(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """1001 lines (background first) for a 1000-output model: the daemon drops the background
    line; ``tools bundle`` does the same and says so."""
    model = MODELS / "mlperf_tiny_pretrainedResnet_quant.tflite"  # 10 outputs
    labels = tmp_path / "labels.txt"
    labels.write_text("background\n" + "\n".join(CIFAR10) + "\n")
    out = tmp_path / "c.edgb"
    argv = [str(model), "--labels", str(labels), "--name", "c", "--version", "1"]
    assert main([*argv, "--out", str(out)]) == 0
    assert (
        "11 labels for 10 outputs: the first, 'background', is dropped" in capsys.readouterr().err
    )
    assert read_bundle(out.read_bytes()).labels == CIFAR10
