"""The report directory: ``report.json``, ``confusion.json`` and ``confusion.png``.

``report.json`` holds everything (data, model, training phases, per-class precision / recall /
F1 and confusion matrices for the float and the int8 model, accuracy drop, sizes, timings);
``confusion.json`` the two confusion matrices alone; ``confusion.png`` draws them side by side
with PIL (no plotting library): rows are true labels, columns predictions, cells shaded by the
share of their row and labelled with the count. :func:`headline` is the part that goes into
the bundle manifest's ``report``.
"""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

REPORT_JSON = "report.json"
CONFUSION_JSON = "confusion.json"
CONFUSION_PNG = "confusion.png"


def drop_points(acc_float: float, acc_int8: float) -> float:
    """Accuracy lost by quantisation, in percentage points (negative: int8 did better)."""
    return round(100.0 * (acc_float - acc_int8), 2)


def headline(report: dict[str, Any]) -> dict[str, Any]:
    """The manifest's ``report``: the figures a device or an operator wants at a glance."""
    ev_float, ev_int8 = report["float"], report["int8"]
    return {
        "val_accuracy_float": ev_float["accuracy"],
        "val_accuracy_int8": ev_int8["accuracy"],
        "int8_drop_points": report["int8_drop_points"],
        "val_samples": report["data"]["val_samples"],
        "train_samples": report["data"]["train_samples"],
        "model_bytes": report["model"]["int8_bytes"],
        "arch": report["model"]["arch"],
        "weights": report["model"]["weights"],
        "weights_source": report["model"].get("weights_source", report["model"]["weights"]),
        "epochs": report["training"]["epochs_run"],
        "seed": report["data"]["seed"],
        "val_fraction": report["data"]["val_fraction"],
        "per_class_recall_int8": {label: v["recall"] for label, v in ev_int8["per_class"].items()},
        "macro_f1_int8": ev_int8["macro_f1"],
        "train_seconds": report["timings_s"]["train"],
        "eval": report["eval"],
        **({"quality": _quality_headline(report["quality"])} if "quality" in report else {}),
    }


def _quality_headline(q: dict[str, Any]) -> dict[str, Any]:
    keys = ("passed", "forced", "reasons", "chance", "p_value", "top1_share")
    return {k: q[k] for k in keys if k in q}


def write_report(out_dir: Path, report: dict[str, Any], labels: Sequence[str]) -> list[Path]:
    """Write the three files; returns their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / REPORT_JSON, out_dir / CONFUSION_JSON, out_dir / CONFUSION_PNG]
    paths[0].write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    confusion = {
        "labels": list(labels),
        "axes": "rows: true label, columns: predicted label",
        "float": report["float"]["confusion"],
        "int8": report["int8"]["confusion"],
    }
    paths[1].write_text(json.dumps(confusion, indent=2) + "\n", encoding="utf-8")
    panels = [
        (f"float: {_pct(report['float'])}", np.asarray(report["float"]["confusion"])),
        (f"int8: {_pct(report['int8'])}", np.asarray(report["int8"]["confusion"])),
    ]
    draw_confusion(panels, labels).save(paths[2], optimize=True)
    return paths


def _pct(ev: dict[str, Any]) -> str:
    return f"{100 * ev['accuracy']:.1f} % ({ev['correct']}/{ev['total']})"


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError, ImportError):  # Pillow without FreeType: the bitmap font
        return ImageFont.load_default()


def _text_size(font: Any, text: str) -> tuple[int, int]:
    left, top, right, bottom = font.getbbox(text)
    return int(right - left), int(bottom - top)


def draw_confusion(panels: Sequence[tuple[str, np.ndarray]], labels: Sequence[str]) -> Image.Image:
    """Confusion matrices side by side, one panel per ``(title, matrix)``."""
    k = len(labels)
    cell = max(28, min(64, 640 // max(k, 1)))
    font = _font(max(10, cell // 4))
    title_font = _font(16)
    label_w = max(_text_size(font, str(lab))[0] for lab in labels) + 12
    head_h = 34 + label_w  # title line, then column labels written upwards
    panel_w = label_w + k * cell + 24
    width = panel_w * len(panels)
    height = head_h + k * cell + 34
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    for p, (title, cm) in enumerate(panels):
        x0 = p * panel_w + label_w
        y0 = head_h
        draw.text((p * panel_w + 8, 8), title, fill="black", font=title_font)
        rows = cm.sum(axis=1, keepdims=True).astype(np.float64)
        share = np.divide(cm, rows, out=np.zeros(cm.shape, np.float64), where=rows > 0)
        for i in range(k):
            for j in range(k):
                v = float(share[i, j])
                base = (40, 110, 200) if i == j else (210, 60, 50)
                colour = tuple(int(255 - v * (255 - c)) for c in base)
                box = (x0 + j * cell, y0 + i * cell, x0 + (j + 1) * cell, y0 + (i + 1) * cell)
                draw.rectangle(box, fill=colour, outline=(180, 180, 180))
                text = str(int(cm[i, j]))
                tw, th = _text_size(font, text)
                ink = "white" if v > 0.55 else "black"
                draw.text(
                    (box[0] + (cell - tw) / 2, box[1] + (cell - th) / 2 - 1),
                    text,
                    fill=ink,
                    font=font,
                )
        for i, lab in enumerate(labels):
            tw, th = _text_size(font, str(lab))
            draw.text(
                (x0 - tw - 6, y0 + i * cell + (cell - th) / 2), str(lab), fill="black", font=font
            )
            # Column label: rendered sideways on its own strip, then pasted above the column.
            strip = Image.new("RGB", (label_w, cell), "white")
            ImageDraw.Draw(strip).text((4, (cell - th) / 2), str(lab), fill="black", font=font)
            rotated = strip.rotate(90, expand=True)
            img.paste(rotated, (x0 + i * cell, y0 - label_w))
        draw.text(
            (x0, y0 + k * cell + 8),
            "rows: true label, columns: predicted",
            fill=(90, 90, 90),
            font=font,
        )
    return img


def environment() -> dict[str, str]:
    """Versions and machine, for the report (imports TensorFlow: call it while training)."""
    import keras
    import tensorflow as tf
    from PIL import __version__ as pil_version

    return {
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "numpy": np.__version__,
        "pillow": pil_version,
        "machine": platform.machine(),
        "cpus": str(os.cpu_count()),
    }
