"""Named benchmark plans and their expansion into per-process configurations.

The presets reproduce the project's targets, each compared with the naive reference
measured in the same run:

- ``targets``: ``densenet_bc_100`` batch 64 at 32x32, ``densenet121`` batch 8 at
  224x224 (plus torchvision's rows when it imports), ``unet`` batch 4 at 256x256,
  ``fc_densenet103`` (11 classes, as on CamVid) batch 2 at 224x224 and ``unet_plusplus``
  (the paper's configuration, deep supervision) batch 4 at 256x256.
- ``segmentation``: only the FC-DenseNet103 and UNet++ rows of ``targets``.
- ``sweep``: DenseNet-BC (k=12, batch 64, 32x32) at depths 40, 100, 160, 250, then one
  training step of a 1000-layer DenseNet-BC in efficient mode only (``deep``).
- ``fc_densenet_sweep``: FC-DenseNet (k=16, batch 2, 96x96, 11 classes) with 4, 5, 8
  and 12 layers in every dense block: depths 56, 67, 100, 144.
- ``all``: ``targets`` and ``sweep``. ``quick``: a small version of both, for a first look.

The targets these rows are read against (live-tensor peak and step time, engine vs naive)
are in the README's "Benchmarks" section; for the rows added with FC-DenseNet and UNet++:
FC-DenseNet103 <= 0.30x memory and <= 1.05x time, UNet++ <= 0.45x and <= 1.05x.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from concatnets.bench.config import MODE_VALUES, TORCHVISION_MODES, BenchConfig

__all__ = [
    "DEFAULT_SWEEP_DEPTHS",
    "FAMILY_MODES",
    "FC_DENSENET_SWEEP_DEPTHS",
    "PRESETS",
    "PlanSettings",
    "Row",
    "build_plan",
    "family_modes",
    "fc_densenet_sweep_rows",
    "model_rows",
    "sweep_rows",
]

DEFAULT_SWEEP_DEPTHS = (40, 100, 160, 250)
# FC-DenseNet depths of the sweep: L layers in each of the 11 dense blocks, depth 11 L + 12
# (first conv, 5 transitions down and up, head): 56 and 67 are the paper's block layouts.
FC_DENSENET_SWEEP_DEPTHS = (56, 67, 100, 144)

# Modes each model family implements. "checkpoint" is torchvision's DenseNet technique
# (torch.utils.checkpoint around cat + BN + ReLU + 1x1 conv); U-Nets do not have it,
# and a truthy ``memory_efficient="checkpoint"`` must not silently run another mode.
# Every built-in family has all its modes; third-party models
# (``torchvision:densenet121``, ...) run unconverted and converted by
# ``concatnets.memory_efficient``.
FAMILY_MODES: dict[str, tuple[str, ...]] = {
    "unet": ("naive", "efficient"),
    "fc_densenet": ("naive", "checkpoint", "efficient"),
    "unet_plusplus": ("naive", "checkpoint", "efficient"),
    "external": ("naive", "efficient"),
}
_TORCHVISION_MODEL = "densenet121"


@dataclass(frozen=True)
class Row:
    """A model at one batch and image size, before it is expanded over modes.

    Args:
        model: Registry name.
        batch: Batch size.
        image_size: Input side.
        group: Report section (``targets``, ``sweep``, ``deep``, ``custom``).
        label: Row name; defaults to ``model``.
        model_kwargs: Builder overrides (``depth``, ``growth_rate``, ...).
        depth: Depth for the sweep plot.
        modes: Modes this row is limited to; ``None`` means every requested mode.
        steps: Timed steps.
        warmup: Warm-up steps.
        channels_last: Model and input in the channels-last memory format.
    """

    model: str
    batch: int
    image_size: int
    group: str = "custom"
    label: str = ""
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    depth: int | None = None
    modes: tuple[str, ...] | None = None
    steps: int = 3
    warmup: int = 1
    channels_last: bool = False


@dataclass(frozen=True)
class PlanSettings:
    """Settings shared by every row; ``None`` keeps each row's own value.

    Args:
        modes: Modes to run, in report order.
        device: ``cpu`` or a CUDA device.
        threads: ``torch.set_num_threads`` in each child.
        steps: Override of every row's timed steps.
        warmup: Override of every row's warm-up steps.
        batch: Override of every row's batch size.
        image_size: Override of every row's input size.
        channels_last: Run every row in the channels-last memory format.
        model_kwargs: Builder arguments added to every row's own (``--model-arg``).
        amp: ``bf16`` or ``fp16`` autocast for every row; ``None`` is float32.
    """

    modes: tuple[str, ...] = tuple(MODE_VALUES)
    device: str = "cpu"
    threads: int | None = None
    steps: int | None = None
    warmup: int | None = None
    batch: int | None = None
    image_size: int | None = None
    channels_last: bool = False
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    amp: str | None = None


def sweep_rows(
    depths: Iterable[int],
    *,
    growth_rate: int = 12,
    batch: int = 64,
    image_size: int = 32,
    group: str = "sweep",
    modes: tuple[str, ...] | None = None,
    steps: int = 3,
    warmup: int = 1,
) -> list[Row]:
    """DenseNet-BC (CIFAR, 10 classes) rows, one per depth ``L = 6n + 4``."""
    rows = []
    for depth in depths:
        if depth < 10 or (depth - 4) % 6:
            raise ValueError(f"DenseNet-BC depth must be 6n + 4 with n >= 1, got {depth}")
        rows.append(
            Row(
                model="densenet_bc",
                batch=batch,
                image_size=image_size,
                group=group,
                label=f"densenet_bc-{depth}-k{growth_rate}",
                model_kwargs={"depth": depth, "growth_rate": growth_rate, "num_classes": 10},
                depth=depth,
                modes=modes,
                steps=steps,
                warmup=warmup,
            )
        )
    return rows


def fc_densenet_sweep_rows(
    depths: Iterable[int] = FC_DENSENET_SWEEP_DEPTHS,
    *,
    growth_rate: int = 16,
    batch: int = 2,
    image_size: int = 96,
) -> list[Row]:
    """FC-DenseNet rows (11 classes), one per depth ``11 L + 12``: ``L`` layers in every
    dense block, one growth rate, so that depth alone changes (Jégou et al. 2017: 56 is
    ``L = 4`` at k = 12, 67 is ``L = 5`` at k = 16)."""
    rows = []
    for depth in depths:
        layers, rest = divmod(depth - 12, 11)
        if rest or layers < 1:
            raise ValueError(
                f"FC-DenseNet sweep depth must be 11 L + 12 with L >= 1 (23, 34, ..., 56, "
                f"67, ...), got {depth}"
            )
        rows.append(
            Row(
                model="fc_densenet67",
                batch=batch,
                image_size=image_size,
                group="sweep",
                label=f"fc_densenet-{depth}-k{growth_rate}",
                model_kwargs={
                    "down_layers": [layers] * 5,
                    "bottleneck_layers": layers,
                    "growth_rate": growth_rate,
                    "num_classes": 11,
                },
                depth=depth,
                steps=2,
            )
        )
    return rows


def model_rows(models: Iterable[str], *, batch: int, image_size: int) -> list[Row]:
    """One ``custom`` row per registered model name."""
    return [Row(model=name, batch=batch, image_size=image_size) for name in models]


def _targets() -> list[Row]:
    return [
        Row("densenet_bc_100", batch=64, image_size=32, group="targets"),
        Row("densenet121", batch=8, image_size=224, group="targets"),
        Row("unet", batch=4, image_size=256, group="targets"),
        # The efficient U-Net computes in channels-last on CPU; this pair shows how much of
        # its gain a plain model gets from the layout alone.
        Row(
            "unet",
            batch=4,
            image_size=256,
            group="targets",
            label="unet (channels-last)",
            channels_last=True,
        ),
        *_segmentation(),
    ]


def _segmentation() -> list[Row]:
    return [
        # FC-DenseNet103 as the paper trains it on CamVid: 11 classes (also the default).
        Row(
            "fc_densenet103",
            batch=2,
            image_size=224,
            group="targets",
            label="fc_densenet103 (11 classes)",
            model_kwargs={"num_classes": 11},
        ),
        Row(
            "unet_plusplus",
            batch=4,
            image_size=256,
            group="targets",
            label="unet_plusplus (deep supervision)",
            model_kwargs={"deep_supervision": True},
        ),
    ]


def _sweep() -> list[Row]:
    deep = sweep_rows([1000], group="deep", modes=("efficient",), steps=1, warmup=0)
    return sweep_rows(DEFAULT_SWEEP_DEPTHS) + deep


def _quick() -> list[Row]:
    return [
        Row("densenet_bc_100", batch=8, image_size=32, group="targets", steps=2),
        *sweep_rows([16, 28, 40], batch=8, steps=2),
    ]


PRESETS: dict[str, list[Row]] = {
    "quick": _quick(),
    "targets": _targets(),
    "segmentation": _segmentation(),
    "sweep": _sweep(),
    "fc_densenet_sweep": fc_densenet_sweep_rows(),
    "all": _targets() + _sweep(),
}


def family_modes(
    rows: Sequence[Row], requested: Sequence[str] = tuple(MODE_VALUES)
) -> tuple[list[Row], list[str]]:
    """Limit each row to the modes its model family implements.

    Returns the rows and one note per requested mode removed. Names the registry does
    not know are left alone: their child process reports the error.
    """
    from concatnets.models import get_model_spec

    out, notes = [], []
    for row in rows:
        try:
            family = get_model_spec(row.model).family
        except KeyError:
            family = ""
        allowed = FAMILY_MODES.get(family)
        if allowed is None:
            out.append(row)
            continue
        current = row.modes or tuple(MODE_VALUES)
        out.append(replace(row, modes=tuple(m for m in current if m in allowed)))
        notes += [
            f"{row.label or row.model}: the {family} family has no {mode!r} mode; skipped"
            for mode in requested
            if mode in current and mode not in allowed
        ]
    return out, notes


def _pick(override: int | None, default: int) -> int:
    return default if override is None else override


def build_plan(
    rows: Sequence[Row], settings: PlanSettings, *, torchvision: bool = False
) -> list[BenchConfig]:
    """Expand rows over the requested modes (and torchvision's rows for densenet121).

    Args:
        rows: What to measure.
        settings: Modes, device and overrides shared by every row.
        torchvision: Add ``tv-naive``/``tv-checkpoint`` rows after each densenet121 row.
    """
    unknown = [m for m in settings.modes if m not in MODE_VALUES]
    if unknown:
        raise ValueError(f"unknown mode(s) {unknown}; choose from {list(MODE_VALUES)}")
    plan = []
    for row in rows:
        modes = [m for m in settings.modes if row.modes is None or m in row.modes]
        tv_modes = (
            list(TORCHVISION_MODES) if torchvision and row.model == _TORCHVISION_MODEL else []
        )
        channels_last = row.channels_last or settings.channels_last
        suffix = " (channels-last)" if channels_last and not row.channels_last else ""
        if settings.model_kwargs:
            suffix += " " + ",".join(f"{k}={v}" for k, v in sorted(settings.model_kwargs.items()))
        if settings.amp:
            suffix += f" {settings.amp}"
        for mode in modes + tv_modes:
            plan.append(
                BenchConfig(
                    model=row.model,
                    mode=mode,
                    batch=_pick(settings.batch, row.batch),
                    image_size=_pick(settings.image_size, row.image_size),
                    steps=_pick(settings.steps, row.steps),
                    warmup=_pick(settings.warmup, row.warmup),
                    device=settings.device,
                    threads=settings.threads,
                    model_kwargs={**row.model_kwargs, **settings.model_kwargs},
                    group=row.group,
                    label=(row.label or row.model) + suffix,
                    depth=row.depth,
                    source="torchvision" if mode in TORCHVISION_MODES else "concatnets",
                    channels_last=channels_last,
                    amp=settings.amp,
                )
            )
    return plan
