from __future__ import annotations


def center_crop_to(x, reference):  # placeholder
    raise NotImplementedError


def pad_to(x, reference, mode="constant", value=0.0):  # placeholder
    raise NotImplementedError
