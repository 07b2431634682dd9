"""``LIBRARY:NAME`` resolves to a third-party constructor with the library's argument names."""

from __future__ import annotations

import sys

import pytest
import torch

from concatnets.models import create_model, get_model_spec
from concatnets.models.external import (
    LIBRARIES,
    check_keywords,
    conversion_report,
    external_model_spec,
    library_arguments,
)


def test_unknown_library_names_the_closest_and_all_libraries():
    with pytest.raises(KeyError) as caught:
        get_model_spec("tochvision:densenet121")
    message = str(caught.value)
    assert "torchvision:densenet121?" in message and "smp:NAME" in message


def test_unknown_model_names_the_closest_one():
    pytest.importorskip("torchvision")
    with pytest.raises(KeyError, match="Did you mean torchvision:densenet121"):
        get_model_spec("torchvision:densnet121")


def test_missing_library_names_its_pip_package(monkeypatch):
    # None in sys.modules makes every import of the package fail, whether or not an earlier
    # test imported it already (a patched builtins.__import__ misses importlib's cache).
    monkeypatch.setitem(sys.modules, "segmentation_models_pytorch", None)
    with pytest.raises(ImportError, match="pip install segmentation-models-pytorch"):
        external_model_spec("smp:NotCachedName")


@pytest.mark.parametrize(
    ("prefix", "expected"),
    [
        ("torchvision", {"weights": None, "num_classes": 5}),
        ("timm", {"pretrained": False, "in_chans": 1, "num_classes": 5}),
        ("monai", {"spatial_dims": 2, "in_channels": 1, "out_channels": 5}),
        ("smp", {"encoder_weights": None, "in_channels": 1, "classes": 5}),
    ],
)
def test_channels_and_classes_become_each_librarys_names(prefix, expected):
    channels = 3 if prefix == "torchvision" else 1

    def constructor(**kwargs):  # stands in for the library's own
        raise AssertionError

    settings = {"in_channels": channels, "num_classes": 5}
    assert library_arguments(LIBRARIES[prefix], constructor, settings) == expected


def test_user_settings_win_over_the_no_download_defaults():
    args = library_arguments(LIBRARIES["smp"], lambda: None, {"encoder_weights": "imagenet"})
    assert args["encoder_weights"] == "imagenet"


def test_torchvision_refuses_images_that_are_not_rgb():
    with pytest.raises(ValueError, match="3-channel"):
        library_arguments(LIBRARIES["torchvision"], lambda: None, {"in_channels": 1})


def test_monai_tasks_are_found_by_a_probe_forward():
    pytest.importorskip("monai")
    assert get_model_spec("monai:BasicUNet").task == "segmentation"
    assert get_model_spec("monai:DenseNet121").task == "classification"
    assert get_model_spec("monai:BasicUNet").defaults == {"spatial_dims": 2}


def test_library_tasks_and_family():
    pytest.importorskip("timm")
    pytest.importorskip("segmentation_models_pytorch")
    assert get_model_spec("timm:densenet121").task == "classification"
    assert get_model_spec("smp:Unet").task == "segmentation"
    assert get_model_spec("smp:Unet").family == "external"


def test_memory_efficient_builds_a_converted_model_with_the_same_keys():
    pytest.importorskip("monai")
    small = {"init_features": 8, "growth_rate": 4, "block_config": (2, 2), "num_classes": 3}
    plain = create_model("monai:DenseNet", in_channels=3, **small)
    converted = create_model("monai:DenseNet", in_channels=3, memory_efficient=True, **small)
    assert conversion_report(plain) is None
    report = conversion_report(converted)
    assert report is not None and report.converted
    assert list(plain.state_dict()) == list(converted.state_dict())
    assert converted(torch.randn(2, 3, 32, 32)).shape == (2, 3)


def test_unknown_constructor_argument_is_a_clear_error():
    pytest.importorskip("monai")
    with pytest.raises(ValueError, match="monai:BasicUNet does not take these arguments"):
        create_model("monai:BasicUNet", features=[4, 4, 8, 8, 16, 4], no_such_argument=1)


def test_a_misspelt_smp_argument_is_caught_not_dropped():
    pytest.importorskip("segmentation_models_pytorch")
    with pytest.raises(
        ValueError, match=r"'encoder_dpth' \(did you mean 'encoder_depth'\?\)"
    ) as caught:
        create_model("smp:Unet", encoder_name="resnet18", encoder_dpth=3)
    assert "Valid: encoder_name, encoder_depth" in str(caught.value)


def test_smp_passes_extra_arguments_to_timm_encoders_which_check_them():
    pytest.importorskip("segmentation_models_pytorch")
    tiny = {"encoder_name": "tu-resnet18", "encoder_depth": 3, "decoder_channels": [8, 8, 8]}
    model = create_model("smp:Unet", drop_path_rate=0.1, **tiny)  # a timm argument
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 1, 32, 32)  # smp: classes=1
    with pytest.raises(ValueError, match=r"does not take these arguments.*no_such_argument"):
        create_model("smp:Unet", no_such_argument=1, **tiny)


def test_constructors_without_extra_keywords_are_not_second_guessed():
    def constructor(*, depth: int = 2, **kwargs):  # stands in for a checking library
        raise AssertionError

    check_keywords(LIBRARIES["torchvision"], constructor, {"dpth": 3}, "torchvision:x")
    with pytest.raises(ValueError, match=r"'dpth' \(did you mean 'depth'\?\)"):
        check_keywords(LIBRARIES["smp"], constructor, {"dpth": 3}, "smp:x")
    check_keywords(LIBRARIES["smp"], constructor, {"encoder_name": "tu-x", "dpth": 3}, "smp:x")


@pytest.mark.parametrize(
    ("name", "package", "settings", "output"),
    [
        ("torchvision:resnet18", "torchvision", {"in_channels": 3}, (2, 4)),
        ("timm:resnet18", "timm", {"in_channels": 1}, (2, 4)),
        ("monai:BasicUNet", "monai", {"in_channels": 1, "features": [4] * 6}, (2, 4, 32, 32)),
        (
            "smp:Unet",
            "segmentation_models_pytorch",
            {"in_channels": 1, "encoder_depth": 3, "decoder_channels": [8, 8, 4]},
            (2, 4, 32, 32),
        ),
    ],
)
def test_real_constructors_get_the_channels_and_classes(name, package, settings, output):
    pytest.importorskip(package)
    model = create_model(name, num_classes=4, **settings)
    assert model(torch.randn(2, settings["in_channels"], 32, 32)).shape == output
