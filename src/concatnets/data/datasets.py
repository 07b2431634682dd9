"""The torch ``Dataset`` that feeds training and evaluation."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from concatnets.data.io import to_float_image
from concatnets.data.sources import LabelledData
from concatnets.data.transforms import (
    SIZE_POLICIES,
    Augment,
    ChannelStatistics,
    SizePolicy,
    match_channels,
    normalize_image,
)

__all__ = [
    "STATISTICS_MAX_IMAGES",
    "LabelledDataset",
    "channel_statistics",
    "load_input_tensor",
    "resolve_size_policy",
    "sample_generator",
]

STATISTICS_MAX_IMAGES = 2048
"""Training images read to compute ``--normalization dataset`` statistics (evenly spaced)."""

WeightMapFn = Callable[[np.ndarray], np.ndarray]


def sample_generator(seed: int, epoch: int, index: int) -> torch.Generator:
    """A generator whose stream depends only on ``(seed, epoch, index)``."""
    state = np.random.SeedSequence([seed, epoch, index]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def resolve_size_policy(
    data: LabelledData, policy: str | None, patch_size: int | Sequence[int] | None
) -> SizePolicy | None:
    """Choose how samples of ``data`` are brought to one size.

    Without a policy all images must share one size. The default target size is the
    most common size for ``resize``, the largest for ``pad`` and the smallest for ``crop``
    (per axis; volumes have three axes).

    Args:
        data: The dataset.
        policy: ``'resize'``, ``'pad'``, ``'crop'`` or ``None``.
        patch_size: Target side (int, the same on every axis) or one side per axis;
            ``None`` picks the default.
    """
    sizes = set(data.sizes)
    if policy is None:
        if patch_size is not None:
            raise ValueError(
                "--patch-size needs a --size-policy (resize, pad or crop) to say how to reach it"
            )
        if len(sizes) > 1:
            raise ValueError(
                f"images in {data.address} have {len(sizes)} different sizes "
                f"({data.size_summary()}); pass --size-policy resize|pad|crop "
                "(optionally with --patch-size N)"
            )
        return None
    if policy not in SIZE_POLICIES:
        choices = ", ".join(SIZE_POLICIES)
        raise ValueError(f"unknown --size-policy {policy!r}; choose from {choices}")
    if patch_size is not None:
        target = _patch_target(patch_size, data.spatial_dims)
    elif policy == "resize":
        target = Counter(data.sizes).most_common(1)[0][0]
    elif policy == "pad":
        target = tuple(max(sides) for sides in zip(*sizes, strict=True))
    else:
        target = tuple(min(sides) for sides in zip(*sizes, strict=True))
    return SizePolicy(policy, target)


def _patch_target(patch_size: int | Sequence[int], spatial_dims: int) -> tuple[int, ...]:
    """``--patch-size`` as one side per spatial axis."""
    if isinstance(patch_size, int):
        target = (patch_size,) * spatial_dims
    else:
        target = tuple(int(v) for v in patch_size)
        if len(target) != spatial_dims:
            axes = "(height, width)" if spatial_dims == 2 else "(depth, height, width)"
            raise ValueError(
                f"--patch-size {patch_size} has {len(target)} sides but the data needs "
                f"{spatial_dims} {axes}; give one side for all axes or one per axis"
            )
    if min(target) < 1:
        raise ValueError(f"--patch-size {patch_size} must be positive")
    return target


def load_input_tensor(
    image: np.ndarray,
    channels: int,
    normalization: str,
    spatial_dims: int = 2,
    statistics: ChannelStatistics | None = None,
) -> Tensor:
    """Turn a stored image into the normalized ``(C, H, W)`` float tensor models see.

    Args:
        image: ``(H, W)`` or ``(H, W, 3)`` array as read from disk; with
            ``spatial_dims=3`` a ``(D, H, W)`` or ``(D, H, W, C)`` volume, which becomes
            ``(C, D, H, W)``.
        channels: Channels the model expects (1 or 3; volumes: exactly theirs).
        normalization: ``'dataset'``, ``'image'`` or ``'unit'`` (see :func:`normalize_image`).
        spatial_dims: 2 for images, 3 for volumes.
        statistics: The training split's channel statistics, for ``'dataset'``.
    """
    array = to_float_image(match_channels(image, channels, spatial_dims), spatial_dims)
    return normalize_image(torch.from_numpy(array), normalization, statistics)


def channel_statistics(
    data: LabelledData, indices: Sequence[int], max_images: int = STATISTICS_MAX_IMAGES
) -> ChannelStatistics:
    """Per-channel mean and std of the training images of ``data``, in [0, 1] units.

    Read once before training, from the stored images (before size policy and
    augmentation); beyond ``max_images`` an evenly spaced subset of the split is read.

    Args:
        data: The dataset.
        indices: The training split.
        max_images: Most images read.
    """
    chosen = list(indices)
    if len(chosen) > max_images:
        chosen = [chosen[i * len(chosen) // max_images] for i in range(max_images)]

    def images() -> Iterator[Tensor]:
        for index in chosen:
            raw_image, _ = data.load(index)
            yield load_input_tensor(raw_image, data.in_channels, "unit", data.spatial_dims)

    return ChannelStatistics.of_images(images())


class LabelledDataset(Dataset[dict[str, Tensor]]):
    """Samples of a :class:`LabelledData` as dicts of tensors.

    Each item has ``image`` (``(C, H, W)`` float32), ``target`` (``(H, W)`` int64 mask
    or scalar class), ``index`` and, with ``weight_map``, ``weight`` (``(H, W)``
    float32). Volumes have ``(C, D, H, W)`` images and ``(D, H, W)`` masks. Random
    augmentation and cropping draw from :func:`sample_generator`, so
    call :meth:`set_epoch` before each epoch.

    Args:
        data: The dataset.
        indices: Which samples of ``data`` this split holds.
        size_policy: How to bring samples to one size, or ``None``.
        augment: Augmentation applied in training, or ``None``.
        normalization: ``'dataset'``, ``'image'`` or ``'unit'``.
        statistics: The training split's channel statistics, for ``'dataset'``.
        seed: Seed of the augmentation streams.
        train: Random crops and augmentation on; off gives deterministic samples.
        weight_map: Computes a per-pixel loss weight from the final class mask.
    """

    def __init__(
        self,
        data: LabelledData,
        indices: Sequence[int],
        *,
        size_policy: SizePolicy | None = None,
        augment: Augment | None = None,
        normalization: str = "image",
        statistics: ChannelStatistics | None = None,
        seed: int = 0,
        train: bool = False,
        weight_map: WeightMapFn | None = None,
    ) -> None:
        self.data = data
        self.indices = list(indices)
        self.size_policy = size_policy
        self.augment = augment
        self.normalization = normalization
        self.statistics = statistics
        self.seed = seed
        self.train = train
        self.weight_map = weight_map
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation streams of ``epoch``."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, position: int) -> dict[str, Tensor]:
        index = self.indices[position]
        raw_image, raw_target = self.data.load(index)
        image = load_input_tensor(
            raw_image,
            self.data.in_channels,
            self.normalization,
            self.data.spatial_dims,
            self.statistics,
        )
        mask = None
        if self.data.task == "segmentation":
            mask = torch.from_numpy(np.asarray(raw_target, dtype=np.int64))
        generator = sample_generator(self.seed, self.epoch, index) if self.train else None
        if self.size_policy is not None:
            image, mask = self.size_policy(image, mask, generator)
        if self.augment is not None and generator is not None:
            image, mask = self.augment(image, mask, generator)
        item = {"image": image.float().contiguous(), "index": torch.tensor(index)}
        if mask is None:
            item["target"] = torch.tensor(int(raw_target))  # type: ignore[arg-type]
            return item
        item["target"] = mask.long()
        if self.weight_map is not None:
            item["weight"] = torch.from_numpy(self.weight_map(mask.numpy()).astype(np.float32))
        return item
