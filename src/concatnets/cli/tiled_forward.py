"""A segmentation model run whole on small inputs and tile by tile on large ones.

``evaluate`` feeds each image to the model in one pass; a 4000 x 4000 image then needs
the activations of 16 million pixels. :class:`TiledForward` sends inputs with a side
above ``tile_size`` through :func:`~concatnets.inference.predict_tiled` instead (the
U-Net paper's overlap-tile strategy, Ronneberger et al. 2015, arXiv 1505.04597), so
memory is set by the tile, as in ``predict``.
"""

from __future__ import annotations

from torch import Tensor, nn

from concatnets.cli.predict_command import tile_size_for
from concatnets.inference import predict_tiled

__all__ = ["TiledForward"]


class TiledForward(nn.Module):
    """``model(x)``, tiled where a spatial side of ``x`` exceeds ``tile_size``.

    Valid-padding U-Nets give, tiled, logits for every input pixel (the image mirrored
    at its border); they are cropped to the centre that whole-image inference returns,
    so the pixels scored and their logits are those of an untiled pass. Same-padding
    models' tiles are blended (:func:`~concatnets.inference.predict_tiled`): logits
    equal whole-image ones where every covering tile holds the pixel's whole receptive
    field, and are a weighted mean of tile predictions elsewhere.

    Args:
        model: A segmentation model in eval mode, ``(N, C, *spatial)`` to
            ``(N, classes, *spatial')``.
        tile_size: Largest side run in one pass (rounded to a size the model takes).
        batch_size: Tiles per forward pass.
    """

    def __init__(self, model: nn.Module, tile_size: int, batch_size: int = 4) -> None:
        super().__init__()
        self.model = model
        self.tile_size = tile_size
        self.batch_size = batch_size
        self.tiled = 0
        """Inputs (samples) tiled so far."""

    def forward(self, x: Tensor) -> Tensor:
        spatial = tuple(int(s) for s in x.shape[2:])
        if max(spatial) <= self.tile_size:
            return self.model(x)
        self.tiled += int(x.shape[0])
        valid = getattr(self.model, "padding", "same") == "valid"
        tile = tile_size_for(self.model, self.tile_size)
        logits = predict_tiled(self.model, x, tile_size=tile, batch_size=self.batch_size)
        if not valid:
            return logits
        output = self.model.output_size(spatial)  # raises for sizes the model refuses
        centre = (
            slice((s - o) // 2, (s - o) // 2 + o) for s, o in zip(spatial, output, strict=True)
        )
        return logits[(..., *centre)]
