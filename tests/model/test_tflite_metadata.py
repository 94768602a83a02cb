from __future__ import annotations

import pytest

from edged.model.tflite_metadata import (
    ModelMetadata,
    check_model,
    custom_ops,
    is_tflite,
    read_metadata,
)
from tests.model.test_tiny_models import tiny_metadata, tiny_model, with_zip
from tests.realdata import MODELS, requires_realdata


@pytest.mark.parametrize(
    "data",
    [b"", b"TFL3", b"\0\0\0\0TFL3", b"\xff\xff\xff\x7fTFL3" + b"\0" * 64, b"PK\x05\x06" * 40],
)
def test_odd_bytes_give_empty_metadata(data: bytes) -> None:
    assert read_metadata(data) == ModelMetadata()
    assert custom_ops(data) == []


def test_check_model_names_the_problem() -> None:
    assert check_model(b"") == "the model file is empty"
    assert check_model(b"garbage!" * 4) == "not a TFLite model (no 'TFL3' identifier at bytes 4-8)"
    data = tiny_model()
    assert check_model(data) is None
    problem = check_model(data[: len(data) // 2])
    assert problem is not None and problem.startswith("the TFLite model is truncated or corrupt")
    assert is_tflite(data) and not is_tflite(b"PK\x03\x04")


def test_metadata_without_zip_and_with_a_single_txt() -> None:
    meta = tiny_metadata([127.5, 127.0, 126.0], [127.5, 128.0, 129.0], label_file="missing.txt")
    model = tiny_model(metadata=meta)
    md = read_metadata(model)
    assert md.mean == [127.5, 127.0, 126.0] and md.std == [127.5, 128.0, 129.0]
    assert md.labels == []
    # the named file is absent but the zip holds one .txt: that one
    assert read_metadata(with_zip(model, {"other.txt": "x\ny\n"})).labels == ["x", "y"]
    # two candidates and none named: no labels rather than a guess
    assert read_metadata(with_zip(model, {"a.txt": "x\n", "b.txt": "y\n"})).labels == []
    # a damaged zip is ignored
    broken = with_zip(model, {"labels.txt": "x\n"})
    assert read_metadata(broken[:-30]).labels == []


def test_model_without_metadata() -> None:
    md = read_metadata(tiny_model())
    assert md == ModelMetadata(name=None, version=None, labels=[], mean=None, std=None)


@pytest.mark.realdata
@requires_realdata
def test_codelab_flower_model_metadata() -> None:
    md = read_metadata((MODELS / "codelab_FlowerModel_with_metadata.tflite").read_bytes())
    assert md.name == "efficientnet_lite0" and md.version == "v1"
    assert md.labels == ["daisy", "dandelion", "roses", "sunflowers", "tulips"]
    assert (md.mean, md.std) == ([0.0], [255.0])


@pytest.mark.realdata
@requires_realdata
def test_coral_models_carry_imagenet_labels_and_minus_one_one() -> None:
    data = (MODELS / "coral_mobilenet_v2_1.0_224_quant.tflite").read_bytes()
    md = read_metadata(data)
    assert md.name == "ImageClassifier" and md.version is None
    assert len(md.labels) == 1001 and md.labels[653] == "military uniform"
    assert (md.mean, md.std) == ([127.5], [127.5])
    birds = read_metadata(
        (MODELS / "coral_mobilenet_v2_1.0_224_inat_bird_quant.tflite").read_bytes()
    )
    assert len(birds.labels) == 965 and birds.labels[-1] == "background"


@pytest.mark.realdata
@requires_realdata
def test_real_models_without_metadata_and_custom_ops() -> None:
    for name in ("mlperf_tiny_vww_96_int8", "tflm_xtensa_mobilenet_v2_quantized_1x3x224x224"):
        data = (MODELS / f"{name}.tflite").read_bytes()
        assert read_metadata(data) == ModelMetadata()
        assert check_model(data) is None and custom_ops(data) == []
    edgetpu = (MODELS / "coral_mobilenet_v1_0.25_128_quant_edgetpu.tflite").read_bytes()
    assert custom_ops(edgetpu) == ["edgetpu-custom-op"]
