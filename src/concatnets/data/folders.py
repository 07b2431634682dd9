"""Discovering labelled image folders on disk.

Two layouts are understood::

    segmentation/            classification/
      images/a.png             cat/001.jpg
      masks/a.png              dog/002.jpg

Volumes use the same layouts with ``.npy`` files (see :mod:`concatnets.data.io`).
Segmentation masks are matched to images by file stem (``a.png`` <-> ``a.tif``; a
``_mask`` suffix on the mask's stem is allowed). Classification classes are the
sub-folder names, sorted.
"""

from __future__ import annotations

from pathlib import Path

from concatnets.data.io import IMAGE_EXTENSIONS, list_image_files
from concatnets.data.notices import notice

__all__ = [
    "LAYOUT_HELP",
    "detect_layout",
    "find_classification_files",
    "find_input_images",
    "find_segmentation_pairs",
]

LAYOUT_HELP = (
    "for segmentation put images in DIR/images/ and masks in DIR/masks/ (same file stems); "
    "for classification put one sub-folder per class in DIR"
)
_MASK_SUFFIXES = ("_mask", "-mask", "_masks", "_label", "_labels")


def detect_layout(root: Path) -> str:
    """Return ``'segmentation'`` or ``'classification'`` for the folder ``root``.

    Args:
        root: Dataset folder.
    """
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"data folder {root} does not exist; {LAYOUT_HELP}")
    if not root.is_dir():
        raise ValueError(f"--data {root} is a file; {LAYOUT_HELP}")
    if (root / "images").is_dir() and (root / "masks").is_dir():
        return "segmentation"
    if (root / "images").is_dir():
        raise ValueError(f"{root} has images/ but no masks/ folder; {LAYOUT_HELP}")
    if any(d.is_dir() and list_image_files(d) for d in root.iterdir()):
        return "classification"
    raise ValueError(f"no labelled images found in {root}; {LAYOUT_HELP}")


def _stem_index(files: list[Path], folder: Path, strip_suffixes: bool) -> dict[str, Path]:
    index: dict[str, Path] = {}
    for path in files:
        stem = path.stem
        if strip_suffixes:
            for suffix in _MASK_SUFFIXES:
                if stem.endswith(suffix) and len(stem) > len(suffix):
                    stem = stem[: -len(suffix)]
                    break
        if stem in index:
            raise ValueError(
                f"{folder} holds both {index[stem].name} and {path.name} for stem {stem!r}; "
                "keep one file per stem"
            )
        index[stem] = path
    return index


def find_segmentation_pairs(root: Path) -> list[tuple[Path, Path]]:
    """Pair ``root/images/*`` with ``root/masks/*`` by stem, sorted by stem.

    Args:
        root: Folder holding ``images/`` and ``masks/``.
    """
    root = Path(root)
    images = _stem_index(list_image_files(root / "images"), root / "images", False)
    masks = _stem_index(list_image_files(root / "masks"), root / "masks", True)
    if not images:
        raise ValueError(
            f"{root / 'images'} holds no images; supported types: {', '.join(IMAGE_EXTENSIONS)}"
        )
    missing = sorted(set(images) - set(masks))
    if missing:
        first = images[missing[0]]
        suffix = ".npy" if first.suffix.lower() == ".npy" else ".png"
        raise ValueError(
            f"{len(missing)} image(s) in {root / 'images'} have no mask in {root / 'masks'} "
            f"(first: {first.name}); name each mask like its image, e.g. "
            f"masks/{missing[0]}{suffix}"
        )
    unused = sorted(set(masks) - set(images))
    if unused:
        notice(f"ignoring {len(unused)} mask(s) without an image, e.g. {masks[unused[0]].name}")
    return [(images[stem], masks[stem]) for stem in sorted(images)]


def find_classification_files(root: Path) -> tuple[list[Path], list[int], list[str]]:
    """List images of a one-sub-folder-per-class dataset.

    Args:
        root: Folder whose sub-folders are classes.

    Returns:
        ``(files, labels, class_names)`` with ``labels[i]`` indexing ``class_names``.
    """
    root = Path(root)
    class_dirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    files: list[Path] = []
    labels: list[int] = []
    class_names: list[str] = []
    for directory in class_dirs:
        found = list_image_files(directory)
        if not found:
            notice(f"skipping {directory}: it holds no supported images")
            continue
        class_names.append(directory.name)
        files.extend(found)
        labels.extend([len(class_names) - 1] * len(found))
    if len(class_names) < 2:
        raise ValueError(
            f"{root} has {len(class_names)} class folder(s) with images; classification "
            "needs at least 2 (one sub-folder per class)"
        )
    return files, labels, class_names


def find_input_images(path: Path) -> list[Path]:
    """Images to predict on: ``path`` itself, or the images in a folder.

    A folder with an ``images/`` sub-folder (a labelled segmentation folder) is read
    from there.

    Args:
        path: An image file or a folder of images.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"input {path} does not exist; pass an image file or a folder")
    if path.is_file():
        if path.suffix.lower() not in IMAGE_EXTENSIONS:
            raise ValueError(
                f"{path}: unsupported file type {path.suffix!r}; "
                f"use one of {', '.join(IMAGE_EXTENSIONS)}"
            )
        return [path]
    folder = path / "images" if (path / "images").is_dir() else path
    files = list_image_files(folder)
    if not files:
        raise ValueError(
            f"{folder} holds no images; supported types: {', '.join(IMAGE_EXTENSIONS)}"
        )
    return files
