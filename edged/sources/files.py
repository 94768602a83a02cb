"""Frames from image files: a directory (every image in it, sorted) or a glob, paced at ``fps``."""

from __future__ import annotations

import glob
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Unpack

import numpy as np
from PIL import Image

from edged.config import FilesSource
from edged.errors import FrameRejected, SourceError
from edged.sources.base import (
    DEFAULT_MAX_PIXELS,
    Frame,
    PacedSource,
    Pacing,
    RateLimitedLog,
    one_line,
    safe_name,
    transform,
)
from edged.sources.images import DEFAULT_MAX_BYTES, read_image

log = logging.getLogger("edged.sources")

IMAGE_EXTENSIONS = frozenset(
    {
        ".bmp",
        ".gif",
        ".jpeg",
        ".jpg",
        ".pbm",
        ".pgm",
        ".png",
        ".pnm",
        ".ppm",
        ".tif",
        ".tiff",
        ".webp",
    }
)
_GLOB_CHARS = frozenset("*?[")


def is_image_name(path: str | Path) -> bool:
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def _candidate(p: Path) -> bool:
    """An image name that is a regular file now (it is checked again when read)."""
    try:
        return is_image_name(p) and p.is_file()
    except (OSError, ValueError):  # e.g. permission denied on stat: not listed
        return False


def find_images(pattern: str) -> list[Path]:
    """The image files ``pattern`` names, sorted: a directory, a glob or one file.

    Directories, FIFOs, devices and dangling links are left out, whatever their names.
    Raises :class:`SourceError` (one line) when nothing matches.
    """
    expanded = os.path.expanduser(pattern)
    if any(c in _GLOB_CHARS for c in expanded):
        matches = [Path(p) for p in glob.glob(expanded, recursive=True)]
        found = sorted((p for p in matches if _candidate(p)), key=str)
        where = f"glob {pattern!r}"
    else:
        root = Path(expanded)
        if root.is_dir():
            # Hidden files are left out, as glob does (e.g. macOS "._x.jpg" resource forks).
            try:
                entries = list(root.iterdir())
            except OSError as err:
                raise SourceError(f"source.path: cannot list {pattern}: {err.strerror}") from None
            found = sorted(
                (p for p in entries if not p.name.startswith(".") and _candidate(p)),
                key=str,
            )
            where = f"directory {pattern!r}"
        elif root.is_file():
            found = [root]
            where = f"file {pattern!r}"
        else:
            raise SourceError(f"source.path: no such file or directory: {pattern}")
    if not found:
        exts = " ".join(sorted(IMAGE_EXTENSIONS))
        raise SourceError(f"source.path: {where} matches no images (extensions: {exts})")
    return found


def load_rgb(
    path: Path,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_bytes: int = DEFAULT_MAX_BYTES,
    check: Callable[[], None] | None = None,
) -> np.ndarray:
    """Decode an image file to an upright RGB uint8 array (h, w, 3), bounded before decoding.

    Every mode is converted (:mod:`edged.sources.images`). Raises
    :class:`edged.errors.FrameRejected` (one line) for any file that cannot be used.
    """
    return read_image(path, max_pixels=max_pixels, max_bytes=max_bytes, check=check)


class FilesFrameSource(PacedSource):
    """Emit the images at ``cfg.fps``, once or looping.

    Unreadable images are skipped (``self.skipped`` counts distinct files; each is logged
    once, at most 10 lines a minute) and never raise: anything :func:`load_rgb` refuses (too
    big, not a regular file, vanished, corrupt) and a decode that runs past 80 % of
    ``read_timeout_s``. :meth:`cancel` (the capture thread abandoning the read) stops a decode
    between two 64 KiB blocks. File names go out as :func:`safe_name` makes them.

    Pacing uses a monotonic deadline schedule, so sleep overshoot does not accumulate; a
    consumer slower than ``fps`` resets the schedule instead of getting a burst of catch-up
    frames. The pacing wait does not count against ``read_timeout_s`` (:meth:`pace`).
    """

    def __init__(self, cfg: FilesSource, **pacing: Unpack[Pacing]) -> None:
        super().__init__(**pacing)
        self.cfg = cfg
        self._paths: list[Path] = []
        self._index = 0
        self._bad: set[Path] = set()
        self._open = False
        self._cancelled = False
        self._deadline = float("inf")
        self._warn = RateLimitedLog(log)
        if cfg.max_image_pixels > (Image.MAX_IMAGE_PIXELS or 0):
            # Pillow's own bomb check must not refuse what the configured limit allows.
            Image.MAX_IMAGE_PIXELS = cfg.max_image_pixels

    @property
    def paths(self) -> list[Path]:
        return list(self._paths)

    def open(self) -> None:
        self._paths = find_images(self.cfg.path)
        self._index = 0
        self._next_due = None
        self._open = True
        log.info("files source: %d image(s) from %s", len(self._paths), self.cfg.path)

    def close(self) -> None:
        self._open = False

    def cancel(self) -> None:
        self._cancelled = True

    def _check(self) -> None:
        """Between two blocks of a read or decode: abandoned, or past its deadline?"""
        if self._cancelled:
            raise FrameRejected("read abandoned (read_timeout_s)")
        if self._clock() > self._deadline:
            budget = 0.8 * self.cfg.read_timeout_s
            raise FrameRejected(f"decoding took longer than {budget:g} s")

    def _decode_next(self) -> tuple[Path, np.ndarray] | None:
        """The next readable image, or None at the end (once mode)."""
        failures_in_a_row = 0
        while True:
            if self._index >= len(self._paths):
                if not self.cfg.loop:
                    return None
                self._index = 0
            path = self._paths[self._index]
            self._index += 1
            self._deadline = self._clock() + 0.8 * self.cfg.read_timeout_s
            try:
                image = load_rgb(
                    path,
                    max_pixels=self.cfg.max_image_pixels,
                    max_bytes=self.cfg.max_image_bytes,
                    check=self._check,
                )
            except Exception as err:  # refused or any other failure: skip the file, never raise
                if self._cancelled:
                    raise SourceError("read abandoned") from None
                self._skip(path, err)
                failures_in_a_row += 1
                if self.cfg.loop and failures_in_a_row >= len(self._paths):
                    # Looping over nothing but unreadable files would spin forever.
                    raise SourceError(
                        f"source.path: none of the {len(self._paths)} image(s) "
                        f"from {self.cfg.path!r} can be read"
                    ) from None
                continue
            if path in self._bad:
                self._bad.discard(path)
                log.info("files source: %s is readable again", safe_name(path.name))
            return path, image

    def _skip(self, path: Path, err: BaseException) -> None:
        if path in self._bad:
            return
        self._bad.add(path)
        self.skipped += 1
        self._warn.warning(
            "files source: skipping unreadable image %s: %s", safe_name(str(path)), one_line(err)
        )

    def _wait_until_due(self) -> None:
        due, now = self._take_due(self.cfg.fps)
        if due > now:
            self.pace(self._sleep, due - now)

    def read(self) -> Frame | None:
        if not self._open:
            raise SourceError("files source is not open")
        item = self._decode_next()
        if item is None:
            return None
        path, image = item
        image = np.ascontiguousarray(transform(image, self.cfg.roi, self.cfg.rotate))
        self._wait_until_due()
        return Frame(image=image, name=safe_name(path.name))
