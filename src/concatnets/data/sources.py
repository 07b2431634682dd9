"""Opening a labelled dataset from a ``--data`` address.

An address is either ``builtin:cells`` / ``builtin:cells3d`` / ``builtin:shapes``
(generated, no download) or a folder in one of the layouts of
:mod:`concatnets.data.folders`. Whether a folder holds 2-D images or 3-D volumes is
read from its arrays (see :mod:`concatnets.data.io`); a folder mixing both is refused.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from concatnets.data.folders import (
    detect_layout,
    find_classification_files,
    find_segmentation_pairs,
)
from concatnets.data.io import ImageInfo, probe_image, read_image, read_mask
from concatnets.data.masks import MaskValueMap, infer_mask_value_map
from concatnets.data.notices import notice
from concatnets.data.synthetic import (
    CELL_CLASSES,
    SHAPE_CLASSES,
    make_cells,
    make_cells3d,
    make_shapes,
)

__all__ = [
    "BUILTIN_DATASETS",
    "LabelledData",
    "describe_dims",
    "format_size",
    "open_labelled_data",
]

BUILTIN_DATASETS: dict[str, str] = {
    "cells": "segmentation: synthetic microscopy, touching cells with thin borders (2 classes)",
    "cells3d": "segmentation: synthetic 3-D volumes of cells with thin membranes (2 classes)",
    "shapes": "classification: circles, squares and triangles with noise (3 classes)",
}
_DEFAULT_BUILTIN_SIZE = {"cells": 64, "cells3d": 32, "shapes": 32}
_VOLUME_LAYOUT_HELP = (
    "2-D images are (H, W) or (H, W, C) arrays or image files; 3-D volumes are .npy "
    "arrays (D, H, W) or (D, H, W, C)"
)


def format_size(size: Sequence[int]) -> str:
    """``(H, W)`` as ``'WxH'`` (width first, as image viewers do); ``(D, H, W)`` as ``'DxHxW'``."""
    if len(size) == 2:
        return f"{size[1]}x{size[0]}"
    return "x".join(str(v) for v in size)


def describe_dims(spatial_dims: int) -> str:
    """``'2-D images'`` or ``'3-D volumes'``."""
    return "2-D images" if spatial_dims == 2 else "3-D volumes"


@dataclass
class LabelledData:
    """A labelled dataset, loaded lazily one sample at a time.

    Args:
        address: The ``--data`` value it was opened from.
        task: ``'segmentation'`` or ``'classification'``.
        class_names: Name of each class; its length is the number of classes.
        in_channels: 1 (grayscale) or 3 (colour); other images are converted.
            Volumes keep their channel count.
        sizes: ``(height, width)`` of each sample, ``(depth, height, width)`` for volumes.
        names: A short name per sample (file stem or ``cells-0007``).
        labels: Class of each sample for classification, else ``None``.
        value_map: How stored mask values become classes (segmentation folders).
        images: In-memory images (built-in data), else ``None``.
        masks: In-memory masks (built-in data), else ``None``.
        image_paths: Image files (folders), else ``None``.
        mask_paths: Mask files (segmentation folders), else ``None``.
        spatial_dims: 2 for images, 3 for volumes.
    """

    address: str
    task: str
    class_names: list[str]
    in_channels: int
    sizes: list[tuple[int, ...]]
    names: list[str]
    labels: list[int] | None = None
    value_map: MaskValueMap | None = None
    images: list[np.ndarray] | None = field(default=None, repr=False)
    masks: list[np.ndarray] | None = field(default=None, repr=False)
    image_paths: list[Path] | None = None
    mask_paths: list[Path] | None = None
    spatial_dims: int = 2

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.names)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray | int]:
        """Return sample ``index`` as ``(image, target)``.

        ``image`` is ``(H, W)`` or ``(H, W, 3)`` in its stored dtype (volumes:
        ``(D, H, W)`` or ``(D, H, W, C)``); ``target`` is an int64 class mask of the
        image's spatial shape or an integer class.
        """
        if self.images is not None:
            image = self.images[index]
        else:
            assert self.image_paths is not None
            image = read_image(self.image_paths[index])
        if self.task == "classification":
            assert self.labels is not None
            return image, self.labels[index]
        if self.masks is not None:
            return image, self.masks[index].astype(np.int64)
        assert self.mask_paths is not None and self.value_map is not None
        path = self.mask_paths[index]
        mask = self.value_map(read_mask(path, self.spatial_dims), source=str(path))
        spatial = image.shape[: self.spatial_dims]
        if mask.shape != spatial:
            raise ValueError(
                f"{path}: mask is {format_size(mask.shape)} but its image is "
                f"{format_size(spatial)}; masks must match their images pixel for pixel"
            )
        return image, mask

    def size_summary(self) -> str:
        """Distinct sizes as ``'64x64 (12), 80x60 (3)'``, most common first.

        Images show width x height, volumes depth x height x width.
        """
        counts = Counter(self.sizes).most_common()
        return ", ".join(f"{format_size(size)} ({n})" for size, n in counts)


def _open_builtin(name: str, num_images: int, image_size: int | None, seed: int) -> LabelledData:
    if name not in BUILTIN_DATASETS:
        raise ValueError(
            f"unknown built-in dataset 'builtin:{name}'; choose from "
            + ", ".join(f"builtin:{n}" for n in BUILTIN_DATASETS)
        )
    if num_images < 2:
        raise ValueError(f"--num-images {num_images} is too small; use at least 2")
    size = image_size or _DEFAULT_BUILTIN_SIZE[name]
    address = f"builtin:{name}"
    if name in ("cells", "cells3d"):
        spatial_dims = 3 if name == "cells3d" else 2
        make = make_cells3d if spatial_dims == 3 else make_cells
        images, masks = make(num_images, size, seed)
        return LabelledData(
            address,
            "segmentation",
            list(CELL_CLASSES),
            1,
            [(size,) * spatial_dims] * num_images,
            [f"{name}-{i:04d}" for i in range(num_images)],
            images=images,
            masks=masks,
            spatial_dims=spatial_dims,
        )
    images, labels = make_shapes(num_images, size, seed)
    return LabelledData(
        address,
        "classification",
        list(SHAPE_CLASSES),
        3,
        [(size, size)] * num_images,
        [f"shapes-{i:04d}" for i in range(num_images)],
        labels=labels,
        images=images,
    )


def _spatial_dims_of(paths: Sequence[Path], infos: Sequence[ImageInfo]) -> int:
    """The one dimensionality of a folder's files; mixing 2-D and 3-D is an error."""
    found = {info.spatial_dims: path for path, info in zip(paths, infos, strict=True)}
    if len(found) > 1:
        raise ValueError(
            f"{found[2].parent} mixes 2-D images (e.g. {found[2].name}) and 3-D volumes "
            f"(e.g. {found[3].name}); keep one kind per folder ({_VOLUME_LAYOUT_HELP})"
        )
    return next(iter(found), 2)


def _channels_of(paths: Sequence[Path]) -> tuple[int, list[tuple[int, ...]], int]:
    """Channels, sizes and spatial dims of a folder's images (probed, not decoded)."""
    infos = [probe_image(p) for p in paths]
    spatial_dims = _spatial_dims_of(paths, infos)
    channels = {i.channels for i in infos}
    if len(channels) > 1 and spatial_dims == 3:
        raise ValueError(
            f"volumes in {paths[0].parent} have different channel counts "
            f"({', '.join(str(c) for c in sorted(channels))}); give every volume the same "
            "channels (D, H, W, C)"
        )
    if len(channels) > 1:
        notice("folder mixes grayscale and colour images: reading all as 3-channel colour")
    return max(channels), [i.size for i in infos], spatial_dims


def _open_folder(root: Path, mask_values: dict[int, int] | None, task: str | None) -> LabelledData:
    layout = detect_layout(root)
    if task is not None and layout != task:
        raise ValueError(
            f"--data {root} is laid out for {layout} but the model does {task}; "
            "pick a matching model or folder"
        )
    if layout == "classification":
        files, labels, class_names = find_classification_files(root)
        channels, sizes, spatial_dims = _channels_of(files)
        return LabelledData(
            str(root),
            layout,
            class_names,
            channels,
            sizes,
            [f"{p.parent.name}/{p.stem}" for p in files],
            labels=labels,
            image_paths=files,
            spatial_dims=spatial_dims,
        )
    pairs = find_segmentation_pairs(root)
    image_paths = [p[0] for p in pairs]
    mask_paths = [p[1] for p in pairs]
    channels, sizes, spatial_dims = _channels_of(image_paths)
    values: set[int] = set()
    for path in mask_paths:
        values.update(int(v) for v in np.unique(read_mask(path, spatial_dims)))
    value_map = infer_mask_value_map(values, mask_values)
    class_names = [f"class{i}" for i in range(value_map.num_classes)]
    if value_map.num_classes == 2:
        class_names = ["background", "foreground"]
    return LabelledData(
        str(root),
        layout,
        class_names,
        channels,
        sizes,
        [p.stem for p in image_paths],
        value_map=value_map,
        image_paths=image_paths,
        mask_paths=mask_paths,
        spatial_dims=spatial_dims,
    )


def open_labelled_data(
    address: str,
    *,
    num_images: int = 64,
    image_size: int | None = None,
    seed: int = 0,
    mask_values: dict[int, int] | None = None,
    task: str | None = None,
) -> LabelledData:
    """Open ``builtin:NAME`` or a dataset folder.

    Args:
        address: ``builtin:cells``, ``builtin:cells3d``, ``builtin:shapes`` or a folder.
        num_images: Number of images of a built-in dataset.
        image_size: Side length of built-in images (default 64 for cells, 32 for
            cells3d volumes and shapes).
        seed: Seed of built-in data generation.
        mask_values: Explicit stored-value -> class map for segmentation masks.
        task: Expected task, checked against the data when given.
    """
    if address.startswith("builtin:"):
        data = _open_builtin(address.split(":", 1)[1], num_images, image_size, seed)
        if task is not None and data.task != task:
            raise ValueError(
                f"--data {address} is a {data.task} dataset but the model does {task}; use "
                + ("builtin:cells" if task == "segmentation" else "builtin:shapes")
            )
        return data
    return _open_folder(Path(address).expanduser(), mask_values, task)
