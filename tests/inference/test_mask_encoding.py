from __future__ import annotations

import numpy as np
import pytest

from concatnets.inference.mask_encoding import (
    class_value_table,
    describe_table,
    stored_value_table,
)


def test_viewable_masks_use_the_training_masks_own_0_255_values():
    stored = stored_value_table({"0": 0, "255": 1}, 2)
    table = class_value_table(2, stored, "viewable")
    assert table.tolist() == [0, 255] and table.dtype == np.uint8


@pytest.mark.parametrize("mask_values", [None, {"0": 0, "1": 1, "2": 2}])
def test_viewable_masks_spread_classes_over_0_255_when_stored_values_look_black(mask_values):
    stored = stored_value_table(mask_values, 3)
    assert class_value_table(3, stored, "viewable").tolist() == [0, 128, 255]


def test_indices_and_original_values_on_request():
    stored = stored_value_table({"0": 0, "7": 1, "9": 1}, 2)  # smallest value of a class
    assert class_value_table(2, stored, "indices").tolist() == [0, 1]
    assert class_value_table(2, stored, "original").tolist() == [0, 7]
    assert class_value_table(2, None, "original").tolist() == [0, 1]


def test_more_classes_than_gray_levels_keep_their_indices_in_16_bit():
    table = class_value_table(300, None, "viewable")
    assert table.dtype == np.uint16 and table[-1] == 299


def test_unknown_encoding_and_description():
    with pytest.raises(ValueError, match="choose one of viewable, original, indices"):
        class_value_table(2, None, "pretty")
    assert describe_table(np.array([0, 255]), ["background", "cell"]) == "0=background, 255=cell"
