"""Data: image folders, built-in synthetic sets, augmentation and splits."""

from __future__ import annotations

from concatnets.data.datasets import (
    LabelledDataset,
    load_input_tensor,
    resolve_size_policy,
    sample_generator,
)
from concatnets.data.folders import (
    detect_layout,
    find_classification_files,
    find_input_images,
    find_segmentation_pairs,
)
from concatnets.data.io import read_image, read_mask, to_float_image, write_mask_png
from concatnets.data.masks import MaskValueMap, infer_mask_value_map, parse_mask_values
from concatnets.data.sources import BUILTIN_DATASETS, LabelledData, open_labelled_data
from concatnets.data.split import split_indices
from concatnets.data.synthetic import CELL_CLASSES, SHAPE_CLASSES, make_cells, make_shapes
from concatnets.data.transforms import (
    AUGMENTATIONS,
    IGNORE_INDEX,
    SIZE_POLICIES,
    Augment,
    SizePolicy,
    elastic_deform,
    normalize_image,
    parse_augmentations,
)

__all__ = [
    "AUGMENTATIONS",
    "BUILTIN_DATASETS",
    "CELL_CLASSES",
    "IGNORE_INDEX",
    "SHAPE_CLASSES",
    "SIZE_POLICIES",
    "Augment",
    "LabelledData",
    "LabelledDataset",
    "MaskValueMap",
    "SizePolicy",
    "detect_layout",
    "elastic_deform",
    "find_classification_files",
    "find_input_images",
    "find_segmentation_pairs",
    "infer_mask_value_map",
    "load_input_tensor",
    "make_cells",
    "make_shapes",
    "normalize_image",
    "open_labelled_data",
    "parse_augmentations",
    "parse_mask_values",
    "read_image",
    "read_mask",
    "resolve_size_policy",
    "sample_generator",
    "split_indices",
    "to_float_image",
    "write_mask_png",
]
