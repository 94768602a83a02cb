"""Host-side training: image folder -> Keras model -> int8 TFLite -> report -> edged bundle.

    python -m tools train DATA_DIR --out X.edgb --name N [--version V] [--key private.pem] ...

Modules (TensorFlow and Keras are imported inside the functions that need them, so importing
any of these, or this package, does not):

=============  ==========================================================================
``data``       image folders, the seeded per-class split, device-preprocessed pixels
``arch``       tinycnn / dscnn (from scratch) and Keras application backbones
``fit``        augmentation, frozen-backbone and fine-tuning phases, early stopping
``quantize``   float32 and full-integer int8 TFLite conversion, calibration
``evaluate``   float and int8 models through edged's Classifier; metrics
``report``     report.json, confusion.json, confusion.png; the manifest headline
``cli``        argument parsing, defaults per architecture, the pipeline
=============  ==========================================================================
"""

from tools.train.cli import main
from tools.train.data import (
    IMAGE_SUFFIXES,
    DevicePixels,
    Sample,
    list_image_folder,
    load_pixels,
    load_rgb,
    normalize,
    split_dataset,
)

__all__ = [
    "IMAGE_SUFFIXES",
    "DevicePixels",
    "Sample",
    "list_image_folder",
    "load_pixels",
    "load_rgb",
    "main",
    "normalize",
    "split_dataset",
]
