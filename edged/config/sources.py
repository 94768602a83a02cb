"""The ``[source]`` section: one model per frame source type (``type`` picks it), and the crop.

The source implementations (edged.sources) take these models as they are.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from edged.config.section import MAX_SECONDS, Section


class Roi(Section):
    """Region of interest cropped from each frame before inference (pixels of the raw frame)."""

    x: int = Field(0, ge=0, le=65535, description="Left edge in pixels.")
    y: int = Field(0, ge=0, le=65535, description="Top edge in pixels.")
    width: int = Field(..., gt=0, le=65535, description="Width in pixels.")
    height: int = Field(..., gt=0, le=65535, description="Height in pixels.")


class _SourceBase(Section):
    roi: Roi | None = Field(None, description="Optional crop applied before rotation.")
    rotate: Literal[0, 90, 180, 270] = Field(0, description="Clockwise rotation in degrees.")
    read_timeout_s: float = Field(
        5.0, gt=0, le=MAX_SECONDS, description="A read that takes longer than this is a fault."
    )
    retry_min_s: float = Field(
        0.5, gt=0, le=MAX_SECONDS, description="First retry delay after a source fault."
    )
    retry_max_s: float = Field(
        30.0, gt=0, le=MAX_SECONDS, description="Longest retry delay (exponential backoff)."
    )
    max_image_pixels: int = Field(
        4096 * 4096,
        ge=1,
        le=1_000_000_000,
        description="A frame or image of more pixels is skipped and counted (checked before "
        "an image file is decoded).",
    )


class FilesSource(_SourceBase):
    type: Literal["files"] = Field("files", description="Source type.")
    path: str = Field(
        ..., description="A directory (all images in it, sorted) or a glob such as 'img/*.jpg'."
    )
    fps: float = Field(1.0, gt=0, le=1000, description="Frames per second to emit.")
    loop: bool = Field(False, description="Start again after the last image instead of ending.")
    max_image_bytes: int = Field(
        64 * 1024 * 1024,
        ge=1,
        le=4 * 1024**3,
        description="An image file larger than this is skipped and counted without reading it.",
    )


class OpenCVSource(_SourceBase):
    type: Literal["opencv"] = Field("opencv", description="Source type.")
    device: int | str = Field(
        0, description="V4L2 device index (0 = /dev/video0), an rtsp:// or http:// URL, or a file."
    )
    width: int | None = Field(
        None, gt=0, le=65535, description="Requested capture width (device sources)."
    )
    height: int | None = Field(None, gt=0, le=65535, description="Requested capture height.")
    fps: float | None = Field(
        None,
        gt=0,
        le=1000,
        description="Cap on frames per second read (None = as fast as the source).",
    )
    loop: bool = Field(False, description="Rewind a video file at its end.")


class Picamera2Source(_SourceBase):
    type: Literal["picamera2"] = Field("picamera2", description="Source type.")
    camera: int = Field(
        0, ge=0, le=64, description="Camera index as listed by Picamera2.global_camera_info()."
    )
    main_size: tuple[int, int] = Field(
        (1280, 960), description="Main stream size; the lores stream is sized to the model input."
    )
    lores_format: Literal["auto", "YUV420", "RGB888"] = Field(
        "auto", description="'auto' = RGB888 on Pi 5, YUV420 on Pi 4 and earlier."
    )
    fps: float | None = Field(
        None, gt=0, le=120, description="Frame rate requested from the sensor."
    )


SourceConfig = Annotated[FilesSource | OpenCVSource | Picamera2Source, Field(discriminator="type")]
