"""Damaged image files give one-line errors naming the file; pickled arrays never load."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from concatnets.data.io import probe_image, read_image, read_mask


def _png(path: Path) -> bytes:
    noise = np.random.default_rng(0).integers(0, 255, (16, 16), np.uint8)  # incompressible
    Image.fromarray(noise).save(path)
    return path.read_bytes()


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty"])
def test_damaged_png_is_named_when_probed_and_read(tmp_path: Path, damage: str) -> None:
    path = tmp_path / "a.png"
    content = _png(path)
    path.write_bytes(
        {"garbage": b"\x89PNG nonsense", "truncated": content[: len(content) // 2], "empty": b""}[
            damage
        ]
    )
    for reader in (probe_image, read_image, read_mask):
        with pytest.raises(ValueError, match=r"a\.png: cannot read this file \(") as caught:
            reader(path)
        assert "\n" not in str(caught.value)
        assert "replace it or move it out of the data folder" in str(caught.value)


def test_truncated_jpeg_passes_the_probe_but_not_the_decoder(tmp_path: Path) -> None:
    path = tmp_path / "a.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), np.uint8)).save(path)
    path.write_bytes(path.read_bytes()[:-200])
    assert probe_image(path).size == (32, 32)  # headers are intact
    with pytest.raises(ValueError, match=r"a\.jpg: cannot read this file \(image file is trunc"):
        read_image(path)


def test_pickled_npy_is_refused_without_running_code(tmp_path: Path) -> None:
    path = tmp_path / "a.npy"
    np.save(path, np.array([{"not": "pixels"}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="holds pickled Python objects, which are never loaded"):
        read_image(path)
    with pytest.raises(ValueError, match="pickled"):
        probe_image(path)
