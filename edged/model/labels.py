"""Label files: parsing and alignment with a model's outputs.

Accepted formats (one class per line, UTF-8, optional BOM, ``#`` comments are not special):

* plain: ``tench``
* indexed: ``0 tench``, ``0: tench``, ``0,tench``, ``0  background`` -- used only when *every*
  non-empty line starts with a distinct integer followed by a separator; labels are placed by
  index and gaps become ``class_<i>`` (a file numbered from 1 gets ``background`` at 0).

:func:`align_labels` reconciles the count with the model's outputs (leading "background" class
added or dropped) and reports any other mismatch as a one-line :class:`ModelError`.
"""

from __future__ import annotations

import re
from pathlib import Path

from edged.errors import ModelError

_INDEXED = re.compile(r"^\s*(\d+)(?:\s*[:,]\s*|\s+)(.*?)\s*$")
_BACKGROUND = re.compile(r"^(?:background|__background__|bg|\?\?\?|unknown|none|unlabeled|)$", re.I)
BACKGROUND = "background"


def placeholder(i: int) -> str:
    return f"class_{i}"


def parse_labels(text: str) -> list[str]:
    """Labels from a label file's text, in output order."""
    text = text.removeprefix("\ufeff")
    lines = [line.strip() for line in text.splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    nonempty = [line for line in lines if line]
    if not nonempty:
        return []
    matches = [_INDEXED.match(line) for line in nonempty]
    if all(m is not None and m.group(2) for m in matches):
        by_index: dict[int, str] = {}
        for m in matches:
            assert m is not None
            by_index.setdefault(int(m.group(1)), m.group(2))
        # Distinct indices, not absurdly sparse: an indexed file. ("3 pound hammer" lines with
        # repeated or scattered numbers stay plain labels.)
        if len(by_index) == len(matches) and max(by_index) < 2 * len(by_index) + 1:
            # A file numbered from 1 leaves slot 0 to a background class (dropped by
            # align_labels when the model has no such output).
            gap0 = BACKGROUND if 0 not in by_index else placeholder(0)
            return [
                by_index.get(i, placeholder(i) if i else gap0) for i in range(max(by_index) + 1)
            ]
    return [line or placeholder(i) for i, line in enumerate(lines)]


def read_labels(path: Path) -> list[str]:
    """Parse a label file; unreadable files are a one-line :class:`ModelError`."""
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise ModelError(f"{path}: cannot read label file ({err.strerror or err})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")
    return parse_labels(text)


def is_background(label: str) -> bool:
    return bool(_BACKGROUND.match(label.strip()))


def align_labels(labels: list[str], num_outputs: int, source: str = "labels") -> list[str]:
    """Match ``labels`` to ``num_outputs`` classes.

    * no labels: ``class_0`` .. ``class_<n-1>``
    * one label short: the model has a leading background class; ``background`` is prepended
    * one label over and the first is background-like: it is dropped
    * any other mismatch raises :class:`ModelError` naming ``source``.
    """
    if not labels:
        return [placeholder(i) for i in range(num_outputs)]
    if len(labels) == num_outputs:
        return list(labels)
    if num_outputs == len(labels) + 1:
        return [BACKGROUND, *labels]
    if len(labels) == num_outputs + 1 and is_background(labels[0]):
        return list(labels[1:])
    raise ModelError(f"{source} has {len(labels)} labels but the model has {num_outputs} outputs")
