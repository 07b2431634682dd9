"""PNG figures: learning curves, prediction overlays and confusion matrices.

Matplotlib runs on its non-interactive Agg backend, so nothing needs a display.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

__all__ = [
    "class_palette",
    "middle_slice",
    "overlay_mask",
    "panel_titles",
    "plot_confusion_matrix",
    "plot_learning_curves",
    "save_overlay_panel",
]


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def class_palette(num_classes: int) -> np.ndarray:
    """``(num_classes, 3)`` uint8 colours; class 0 (background) is black."""
    base = np.array(
        [
            [0, 0, 0],
            [46, 204, 113],
            [231, 76, 60],
            [52, 152, 219],
            [241, 196, 15],
            [155, 89, 182],
            [26, 188, 156],
            [230, 126, 34],
        ],
        dtype=np.uint8,
    )
    if num_classes <= len(base):
        return base[:num_classes]
    rng = np.random.default_rng(0)
    extra = rng.integers(40, 256, size=(num_classes - len(base), 3), dtype=np.uint8)
    return np.concatenate([base, extra])


def _display_rgb(image: np.ndarray) -> np.ndarray:
    """Any ``(H, W)``, ``(H, W, 3)`` or ``(C, H, W)`` image as uint8 RGB, contrast-stretched."""
    image = np.asarray(image, dtype=np.float64)
    if image.ndim == 3 and image.shape[0] in (1, 3) and image.shape[-1] not in (1, 3):
        image = np.moveaxis(image, 0, -1)
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    low, high = np.percentile(image, [0.5, 99.5])
    scaled = np.clip((image - low) / max(high - low, 1e-8), 0, 1)
    if scaled.ndim == 2:
        scaled = np.repeat(scaled[..., None], 3, axis=-1)
    return (scaled * 255).round().astype(np.uint8)


def overlay_mask(
    image: np.ndarray, mask: np.ndarray, num_classes: int, alpha: float = 0.45
) -> np.ndarray:
    """Blend class colours over an image; class 0 and ignored pixels stay uncoloured.

    Args:
        image: ``(H, W)``, ``(H, W, 3)`` or ``(C, H, W)`` image, any range.
        mask: ``(H, W)`` class indices.
        num_classes: Number of classes (sets the palette).
        alpha: Opacity of the colours.

    Returns:
        uint8 ``(H, W, 3)`` array.
    """
    rgb = _display_rgb(image).astype(np.float64)
    mask = np.asarray(mask)
    palette = class_palette(max(num_classes, int(mask.max(initial=0)) + 1)).astype(np.float64)
    coloured = (mask > 0)[..., None]
    colours = palette[np.clip(mask, 0, None)]
    blended = np.where(coloured, (1 - alpha) * rgb + alpha * colours, rgb)
    return blended.round().astype(np.uint8)


def save_overlay_panel(
    path: str | Path,
    image: np.ndarray,
    prediction: np.ndarray,
    num_classes: int,
    target: np.ndarray | None = None,
    min_side: int = 256,
    *,
    class_names: Sequence[str] | None = None,
) -> Path:
    """Save ``[image | truth | prediction]`` side by side as a labelled PNG.

    Each part has its title written above it (``image``, ``truth``, ``prediction``; the
    truth part is left out without ``target``) and a legend below gives every class's
    colour (:func:`class_palette`, the one scheme of every overlay). Small images are
    enlarged (nearest neighbour) so the parts are at least ``min_side`` pixels high.
    For volumes (a ``(D, H, W)`` prediction) the middle slice along depth is shown.

    Args:
        path: Destination ``.png``.
        image: The input image; for volumes ``(C, D, H, W)`` or ``(D, H, W)``.
        prediction: ``(H, W)`` predicted classes, or ``(D, H, W)`` for volumes.
        num_classes: Number of classes.
        target: True classes shaped like ``prediction``, or ``None`` (the panel then has
            two parts).
        min_side: Smallest height of the image parts.
        class_names: Name of each class for the legend (default ``class 0``, ...).
    """
    if prediction.ndim == 3:
        image, prediction, target = middle_slice(image, prediction, target)
    height, width = prediction.shape
    parts = [_display_rgb(image)]
    if target is not None:
        parts.append(overlay_mask(image, target, num_classes))
    parts.append(overlay_mask(image, prediction, num_classes))
    gap_width = max(2, width // 64)
    gap = np.full((height, gap_width, 3), 255, dtype=np.uint8)
    panel = np.concatenate([p for part in parts for p in (part, gap)][:-1], axis=1)
    picture = Image.fromarray(panel)
    factor = 1
    if height < min_side:
        factor = int(np.ceil(min_side / height))
        picture = picture.resize(
            (panel.shape[1] * factor, height * factor), Image.Resampling.NEAREST
        )
    names = list(class_names) if class_names is not None else []
    names += [f"class {index}" for index in range(len(names), num_classes)]
    labelled = _label(picture, panel_titles(target is not None), width * factor, gap_width * factor)
    labelled = _add_legend(labelled, names[:num_classes])
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    labelled.save(path)
    return path


def panel_titles(with_truth: bool) -> tuple[str, ...]:
    """Titles of an overlay panel's parts, left to right."""
    return ("image", "truth", "prediction") if with_truth else ("image", "prediction")


def _font(size: int) -> Any:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: one small bitmap font
        return ImageFont.load_default()


def _text_size(font: Any, text: str) -> tuple[int, int]:
    left, top, right, bottom = ImageDraw.Draw(Image.new("RGB", (1, 1))).textbbox(
        (0, 0), text, font=font
    )
    return right - left, bottom - top


def _draw_text(draw: Any, left: int, middle: int, text: str, font: Any) -> None:
    """Draw ``text`` with its ink vertically centred on ``middle``."""
    _, top, _, bottom = draw.textbbox((0, 0), text, font=font)
    draw.text((left, middle - (top + bottom) // 2), text, fill=(0, 0, 0), font=font)


def _font_size(picture: Image.Image) -> int:
    return int(np.clip(picture.height // 16, 12, 48))


def _label(picture: Image.Image, titles: Sequence[str], part: int, gap: int) -> Image.Image:
    """``picture`` with a white strip above it holding each part's centred title."""
    font = _font(_font_size(picture))
    strip = int(_text_size(font, "Ag")[1] * 2) + 4
    labelled = Image.new("RGB", (picture.width, picture.height + strip), (255, 255, 255))
    labelled.paste(picture, (0, strip))
    draw = ImageDraw.Draw(labelled)
    for index, title in enumerate(titles):
        text_width = _text_size(font, title)[0]
        left = index * (part + gap) + max(0, (part - text_width) // 2)
        _draw_text(draw, left, strip // 2, title, font)
    return labelled


def _add_legend(picture: Image.Image, names: Sequence[str]) -> Image.Image:
    """``picture`` with rows of ``[colour] name`` below it; class 0 stays uncoloured."""
    font = _font(max(12, _font_size(picture) * 3 // 4))
    line = int(_text_size(font, "Ag")[1] * 1.8) + 4
    palette = class_palette(len(names))
    entries = [
        (f"{name} (no colour)" if index == 0 else name, None if index == 0 else palette[index])
        for index, name in enumerate(names)
    ]
    margin = line // 2
    rows: list[list[tuple[str, Any, int]]] = [[]]
    x = margin
    for text, colour in entries:
        entry_width = (line if colour is not None else 0) + _text_size(font, text)[0] + line
        if rows[-1] and x + entry_width > picture.width:
            rows.append([])
            x = margin
        rows[-1].append((text, colour, x))
        x += entry_width
    legend = Image.new("RGB", (picture.width, picture.height + line * len(rows)), (255, 255, 255))
    legend.paste(picture, (0, 0))
    draw = ImageDraw.Draw(legend)
    for row_index, row in enumerate(rows):
        top = picture.height + row_index * line
        for text, colour, left in row:
            if colour is not None:
                box = line * 2 // 3
                offset = (line - box) // 2
                draw.rectangle(
                    (left, top + offset, left + box, top + offset + box),
                    fill=tuple(int(c) for c in colour),
                    outline=(0, 0, 0),
                )
                left += line
            _draw_text(draw, left, top + line // 2, text, font)
    return legend


def middle_slice(
    volume: np.ndarray, prediction: np.ndarray, target: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """The middle depth slice of a volume and of its ``(D, H, W)`` masks.

    Args:
        volume: ``(C, D, H, W)`` or ``(D, H, W)`` volume.
        prediction: ``(D, H, W)`` predicted classes.
        target: ``(D, H, W)`` true classes, or ``None``.
    """
    depth = prediction.shape[0]
    middle = depth // 2
    if volume.ndim == 4:
        picture = volume[:, middle]
        if picture.shape[0] not in (1, 3):
            picture = picture[0]  # shown in grey: the first of C != 1, 3 channels
    elif volume.ndim == 3 and volume.shape[0] == depth:
        picture = volume[middle]
    else:
        raise ValueError(
            f"volume of shape {volume.shape} does not match its {prediction.shape} mask; "
            "pass (C, D, H, W) or (D, H, W)"
        )
    return picture, prediction[middle], None if target is None else target[middle]


def plot_learning_curves(
    history: Sequence[dict[str, Any]], path: str | Path, metric: str
) -> Path | None:
    """Plot train/validation loss and ``metric`` per epoch into one PNG.

    Args:
        history: Per-epoch records with ``epoch``, ``train_loss``, ``val_loss``,
            ``train_<metric>`` and ``val_<metric>`` where available.
        path: Destination ``.png``.
        metric: Name of the metric to plot, e.g. ``'dice'``.
    """
    if not history:
        return None
    plt = _pyplot()
    epochs = [row["epoch"] for row in history]
    figure, (loss_axis, metric_axis) = plt.subplots(1, 2, figsize=(10, 4))
    for axis, key, label in ((loss_axis, "loss", "loss"), (metric_axis, metric, metric)):
        for split, style in (("train", "-o"), ("val", "-s")):
            values = [row.get(f"{split}_{key}") for row in history]
            if any(v is not None for v in values):
                points = [(e, v) for e, v in zip(epochs, values, strict=True) if v is not None]
                axis.plot(*zip(*points, strict=True), style, markersize=3, label=split)
        axis.set_xlabel("epoch")
        axis.set_ylabel(label)
        axis.grid(alpha=0.3)
        axis.legend()
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def plot_confusion_matrix(
    confusion: np.ndarray, class_names: Sequence[str], path: str | Path
) -> Path:
    """Save a row-normalized confusion matrix (rows: true class) with counts as a PNG.

    Args:
        confusion: ``(C, C)`` counts.
        class_names: Name of each class.
        path: Destination ``.png``.
    """
    plt = _pyplot()
    counts = np.asarray(confusion, dtype=np.float64)
    rows = counts.sum(axis=1, keepdims=True)
    normalized = np.divide(counts, rows, out=np.zeros_like(counts), where=rows > 0)
    size = max(4.0, 0.6 * len(class_names) + 2)
    figure, axis = plt.subplots(figsize=(size, size))
    axis.imshow(normalized, cmap="Blues", vmin=0, vmax=1)
    axis.set_xticks(range(len(class_names)), labels=class_names, rotation=45, ha="right")
    axis.set_yticks(range(len(class_names)), labels=class_names)
    axis.set_xlabel("predicted")
    axis.set_ylabel("true")
    if len(class_names) <= 20:
        for row in range(len(class_names)):
            for column in range(len(class_names)):
                colour = "white" if normalized[row, column] > 0.5 else "black"
                axis.text(
                    column,
                    row,
                    f"{normalized[row, column]:.2f}\n{int(counts[row, column])}",
                    ha="center",
                    va="center",
                    fontsize=8,
                    color=colour,
                )
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
