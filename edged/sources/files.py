"""Frames from image files: a directory (every image in it, sorted) or a glob, paced at ``fps``."""

from __future__ import annotations

import glob
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from edged.config import FilesSource
from edged.errors import SourceError
from edged.sources.base import Frame, FrameSource, transform

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


def find_images(pattern: str) -> list[Path]:
    """The image files ``pattern`` names, sorted: a directory, a glob or one file.

    Raises :class:`SourceError` (one line) when nothing matches.
    """
    expanded = os.path.expanduser(pattern)
    if any(c in _GLOB_CHARS for c in expanded):
        matches = [Path(p) for p in glob.glob(expanded, recursive=True)]
        found = sorted((p for p in matches if p.is_file() and is_image_name(p)), key=str)
        where = f"glob {pattern!r}"
    else:
        root = Path(expanded)
        if root.is_dir():
            # Hidden files are left out, as glob does (e.g. macOS "._x.jpg" resource forks).
            found = sorted(
                (
                    p
                    for p in root.iterdir()
                    if not p.name.startswith(".") and p.is_file() and is_image_name(p)
                ),
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


def load_rgb(path: Path) -> np.ndarray:
    """Decode an image file to an RGB uint8 array (h, w, 3); EXIF orientation applied.

    Grayscale, palette, RGBA, CMYK, ... are converted; alpha is dropped. Raises
    whatever PIL raises for an unreadable file (the caller decides what to do).
    """
    with Image.open(path) as im:
        im.load()
        upright = ImageOps.exif_transpose(im)
        rgb = upright if upright.mode == "RGB" else upright.convert("RGB")
        arr = np.asarray(rgb, dtype=np.uint8)
    if arr.ndim != 3 or arr.shape[2] != 3:  # pragma: no cover - convert("RGB") guarantees it
        raise ValueError(f"unexpected decoded shape {arr.shape}")
    return arr


class FilesFrameSource(FrameSource):
    """Emit the images at ``cfg.fps``, once or looping.

    Unreadable images are skipped (``self.skipped`` counts distinct files; each is
    logged once at warning) and never raise. Pacing uses a monotonic deadline
    schedule, so sleep overshoot does not accumulate; a consumer slower than
    ``fps`` resets the schedule instead of getting a burst of catch-up frames.
    """

    def __init__(
        self,
        cfg: FilesSource,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.cfg = cfg
        self.skipped = 0
        self._clock = clock
        self._sleep = sleep
        self._paths: list[Path] = []
        self._index = 0
        self._next_due: float | None = None
        self._bad: set[Path] = set()
        self._open = False

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
            try:
                image = load_rgb(path)
            except Exception as err:  # any decoder failure: skip the file, never raise
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
                log.info("files source: %s is readable again", path.name)
            return path, image

    def _skip(self, path: Path, err: BaseException) -> None:
        if path in self._bad:
            return
        self._bad.add(path)
        self.skipped += 1
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        log.warning("files source: skipping unreadable image %s: %s", path, reason)

    def _wait_until_due(self) -> None:
        period = 1.0 / self.cfg.fps
        now = self._clock()
        if self._next_due is None or now - self._next_due > period:
            self._next_due = now  # first frame, or the consumer fell behind: restart
        delay = self._next_due - now
        if delay > 0:
            self._sleep(delay)
        self._next_due += period

    def read(self) -> Frame | None:
        if not self._open:
            raise SourceError("files source is not open")
        item = self._decode_next()
        if item is None:
            return None
        path, image = item
        image = np.ascontiguousarray(transform(image, self.cfg.roi, self.cfg.rotate))
        self._wait_until_due()
        return Frame(image=image, name=path.name)
