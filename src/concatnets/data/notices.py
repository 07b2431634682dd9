"""One-line notices to the user about how their data was interpreted."""

from __future__ import annotations

import os
import sys

__all__ = ["channel_conversion_notice", "notice"]


def notice(message: str) -> None:
    """Print ``notice: message`` on standard error (only on rank 0 under ``torchrun``).

    Args:
        message: One line saying what was done and how to change it.
    """
    if os.environ.get("RANK", "0") not in ("", "0"):
        return  # every process reads the same data; one notice is enough
    print(f"notice: {message}", file=sys.stderr, flush=True)


def channel_conversion_notice(image_channels: list[int], model_channels: int) -> None:
    """One notice for all the images converted to the channels a model takes.

    Colour images given to a 1-channel model become grayscale (ITU-R 601 luma weights);
    grayscale images given to a 3-channel model are repeated to RGB.

    Args:
        image_channels: Channels of each image, as stored (1 or 3).
        model_channels: Channels the model takes.
    """
    converted = sum(1 for c in image_channels if c != model_channels)
    if not converted or model_channels not in (1, 3):
        return
    of = f"{converted} of {len(image_channels)}" if converted < len(image_channels) else "all"
    if model_channels == 1:
        notice(
            f"{of} image(s) are colour but the model takes 1 channel: converting them to "
            "grayscale (ITU-R 601 luma); train on colour images for a colour model"
        )
    else:
        notice(
            f"{of} image(s) are grayscale but the model takes 3 channels: repeating the "
            "gray channel as RGB"
        )
