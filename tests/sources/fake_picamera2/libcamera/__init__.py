"""Stand-in for the few ``libcamera`` names edged and the fake picamera2 touch (tests only)."""

from __future__ import annotations


class ColorSpace:
    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"<libcamera.ColorSpace '{self.name}'>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ColorSpace) and other.name == self.name

    def __hash__(self) -> int:
        return hash(self.name)

    @staticmethod
    def Sycc() -> ColorSpace:
        return ColorSpace("sYCC")

    @staticmethod
    def Smpte170m() -> ColorSpace:
        return ColorSpace("SMPTE170M")

    @staticmethod
    def Rec709() -> ColorSpace:
        return ColorSpace("Rec709")


class Transform:
    def __init__(self, hflip: int = 0, vflip: int = 0, transpose: int = 0) -> None:
        self.hflip, self.vflip, self.transpose = hflip, vflip, transpose
