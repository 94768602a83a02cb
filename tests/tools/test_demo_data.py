"""tools.demo_data and the split in tools.train: reproducible, held-out samples kept out."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tools.demo_data import MARKER, choose_samples, digit_to_image, export
from tools.train import list_image_folder, split_dataset

REPO = Path(__file__).resolve().parents[2]


def fake_digits(n_per_class: int = 12, classes: int = 4) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(123)
    images = rng.integers(0, 17, size=(n_per_class * classes, 8, 8)).astype(np.uint8)
    targets = np.repeat(np.arange(classes), n_per_class)
    return images, targets


def tree(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def test_digit_to_image_is_dark_on_white_rgb() -> None:
    pixels = np.zeros((8, 8), np.uint8)
    pixels[2:6, 3:5] = 16  # a bar of full ink
    img = digit_to_image(pixels, size=32, margin=2)
    assert img.mode == "RGB" and img.size == (32, 32)
    arr = np.asarray(img)
    assert (arr[..., 0] == arr[..., 1]).all() and (arr[..., 1] == arr[..., 2]).all()  # grey
    assert arr[0, 0, 0] == 255 and arr[:2].min() == 255  # white margin and paper
    assert arr[16, 16, 0] < 64  # dark ink in the middle


def test_digit_to_image_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        digit_to_image(np.zeros((7, 8), np.uint8))
    with pytest.raises(ValueError):
        digit_to_image(np.zeros((8, 8), np.uint8), size=10, margin=2)


def test_export_is_reproducible(tmp_path: Path) -> None:
    images, targets = fake_digits()
    a = export(tmp_path / "a", images, targets, samples_dir=tmp_path / "sa", seed=0)
    b = export(tmp_path / "b", images, targets, samples_dir=tmp_path / "sb", seed=0)
    assert tree(tmp_path / "a") == tree(tmp_path / "b")
    assert tree(tmp_path / "sa") == tree(tmp_path / "sb")
    assert a.counts == b.counts == {str(c): 10 for c in range(4)}  # 12 - 2 held out
    assert (tmp_path / "a" / MARKER).read_text().count("CC BY 4.0") == 1

    split_a = split_dataset(list_image_folder(tmp_path / "a"), 0.25, seed=0)
    split_b = split_dataset(list_image_folder(tmp_path / "b"), 0.25, seed=0)

    def rel(split: tuple[list[tuple[Path, int]], ...], root: Path) -> list[list[tuple[str, int]]]:
        return [[(str(p.relative_to(root)), y) for p, y in part] for part in split]

    assert rel(split_a, tmp_path / "a") == rel(split_b, tmp_path / "b")


def test_samples_are_held_out(tmp_path: Path) -> None:
    images, targets = fake_digits()
    summary = export(tmp_path / "out", images, targets, samples_dir=tmp_path / "s", seed=3)
    names = sorted(p.name for p in summary.samples)
    assert names == sorted(f"digit-{c}-{n}.png" for c in range(4) for n in (1, 2))
    held = choose_samples(targets, 2, seed=3)
    exported = {p.name for p in (tmp_path / "out").rglob("digit-*.png")}
    for rows in held.values():
        for row in rows:
            assert f"digit-{row:04d}.png" not in exported
    # A sample is the same picture its row would have been exported as.
    row = held[1][0]
    assert (
        Image.open(tmp_path / "s" / "digit-1-1.png").tobytes()
        == digit_to_image(images[row]).tobytes()
    )


def test_export_refuses_to_clobber(tmp_path: Path) -> None:
    images, targets = fake_digits()
    other = tmp_path / "other"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError):
        export(other, images, targets)
    with pytest.raises(FileExistsError):
        export(other, images, targets, force=True)  # no marker: not ours
    assert (other / "keep.txt").exists()
    out = tmp_path / "out"
    export(out, images, targets)
    with pytest.raises(FileExistsError):
        export(out, images, targets)
    export(out, images, targets, force=True)  # ours: replaced


def test_split_properties(tmp_path: Path) -> None:
    files = {
        label: [tmp_path / label / f"{i:03d}.png" for i in range(n)]
        for label, n in (("a", 20), ("b", 10), ("c", 3))
    }
    train, val = split_dataset(files, 0.2, seed=0)
    assert len(train) + len(val) == 33
    assert not {p for p, _ in train} & {p for p, _ in val}
    per_class = {y: sum(1 for _, v in val if v == y) for y in range(3)}
    assert per_class == {0: 4, 1: 2, 2: 1}  # stratified; every class has one val image
    again = split_dataset({k: list(reversed(v)) for k, v in files.items()}, 0.2, seed=0)
    assert sorted(again[1]) == sorted(val)  # input order does not matter
    other = split_dataset(files, 0.2, seed=1)
    assert sorted(other[1]) != sorted(val)
    with pytest.raises(ValueError):
        split_dataset(files, 0.0, seed=0)


def test_list_image_folder(tmp_path: Path) -> None:
    for label in ("cat", "dog"):
        (tmp_path / label).mkdir()
        Image.new("RGB", (4, 4)).save(tmp_path / label / "x.png")
    (tmp_path / "dog" / "notes.txt").write_text("not an image")
    (tmp_path / "empty").mkdir()
    found = list_image_folder(tmp_path)
    assert list(found) == ["cat", "dog"]
    assert [p.name for p in found["dog"]] == ["x.png"]
    with pytest.raises(ValueError):
        list_image_folder(tmp_path / "cat")


def test_committed_samples_match_sklearn_digits(tmp_path: Path) -> None:
    """samples/ is exactly what `python -m tools.demo_data ... --samples samples` writes."""
    pytest.importorskip("sklearn")
    from tools.demo_data import load_digits_arrays

    images, targets = load_digits_arrays()
    assert images.shape == (1797, 8, 8) and int(images.max()) == 16
    summary = export(tmp_path / "digits", images, targets, samples_dir=tmp_path / "samples")
    assert summary.total == 1797 - 20
    assert tree(tmp_path / "samples") == tree(REPO / "samples")
