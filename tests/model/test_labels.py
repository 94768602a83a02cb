from __future__ import annotations

from pathlib import Path

import pytest

from edged.errors import ModelError
from edged.model.labels import align_labels, is_background, parse_labels, read_labels
from tests.realdata import MODELS, requires_realdata


def test_plain_lines() -> None:
    assert parse_labels("cat\ndog\n\n") == ["cat", "dog"]
    assert parse_labels("\ufeffcat\r\ndog") == ["cat", "dog"]
    # commas inside a label are not an index format
    assert parse_labels("tench, Tinca tinca\ngoldfish\n") == ["tench, Tinca tinca", "goldfish"]
    # a blank line in the middle keeps its slot
    assert parse_labels("a\n\nc\n") == ["a", "class_1", "c"]
    assert parse_labels("") == [] and parse_labels("\n \n") == []


@pytest.mark.parametrize(
    "text",
    [
        "0 background\n1 cat\n2 dog\n",
        "0: background\n1: cat\n2: dog\n",
        "0,background\n1,cat\n2,dog\n",
        "0  background\n1  cat\n2  dog\n",
        "2 dog\n0 background\n1 cat\n",  # out of order
    ],
)
def test_indexed_formats(text: str) -> None:
    assert parse_labels(text) == ["background", "cat", "dog"]


def test_indexed_labels_keep_spaces_and_fill_gaps() -> None:
    assert parse_labels("0 sea lion\n2 polar bear\n") == ["sea lion", "class_1", "polar bear"]
    # numbered from 1: slot 0 is a background class
    assert parse_labels("1 cat\n2 dog\n") == ["background", "cat", "dog"]


def test_lines_that_merely_start_with_numbers_stay_plain() -> None:
    assert parse_labels("3 pound hammer\n3 pound hammer\n") == ["3 pound hammer"] * 2
    assert parse_labels("0\n1\n2\n") == ["0", "1", "2"]  # digit classes
    assert parse_labels("1 cat\ndog\n") == ["1 cat", "dog"]


def test_read_labels_errors(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=r"missing.txt: cannot read label file"):
        read_labels(tmp_path / "missing.txt")
    latin = tmp_path / "latin.txt"
    latin.write_bytes("caf\xe9\n".encode("latin-1"))
    assert read_labels(latin) == ["caf\xe9"]


def test_align_exact_and_missing() -> None:
    assert align_labels(["a", "b"], 2) == ["a", "b"]
    assert align_labels([], 3) == ["class_0", "class_1", "class_2"]


def test_align_leading_background() -> None:
    assert align_labels(["a", "b"], 3) == ["background", "a", "b"]
    assert align_labels(["background", "a", "b"], 2) == ["a", "b"]
    assert align_labels(["???", "a", "b"], 2) == ["a", "b"]


def test_align_mismatch_is_one_line() -> None:
    with pytest.raises(ModelError) as err:
        align_labels(["cat", "a", "b"], 2, source="my.txt")  # one too many, not background
    assert str(err.value) == "my.txt has 3 labels but the model has 2 outputs"
    with pytest.raises(ModelError, match="has 2 labels but the model has 5 outputs"):
        align_labels(["a", "b"], 5)


def test_is_background() -> None:
    assert all(map(is_background, ["background", "Background", "__background__", "???", ""]))
    assert not is_background("cat")


@pytest.mark.realdata
@requires_realdata
def test_real_label_files_align_with_their_models() -> None:
    imagenet = read_labels(MODELS / "coral_imagenet_labels.txt")
    assert len(imagenet) == 1001 and imagenet[0] == "background"
    assert imagenet[653] == "military uniform"
    # 1000-class PyTorch export: the background line is dropped
    assert align_labels(imagenet, 1000)[652] == "military uniform"
    tf = read_labels(MODELS / "labels_mobilenet_quant_v1_224.txt")
    assert len(tf) == 1001 and tf[1] == "tench"
    birds = read_labels(MODELS / "coral_inat_bird_labels.txt")
    assert len(birds) == 965 and birds[-1] == "background"
    assert align_labels(birds, 965) == birds
