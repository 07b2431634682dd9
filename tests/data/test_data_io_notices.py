from __future__ import annotations

from concatnets.data.notices import channel_conversion_notice


def test_channel_conversion_notice_counts_converted_images(capsys):
    channel_conversion_notice([1, 3, 3], 1)
    channel_conversion_notice([1, 1], 1)  # nothing converted
    channel_conversion_notice([1, 3], 3)
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2
    assert err[0].startswith("notice: 2 of 3 image(s) are colour but the model takes 1 channel")
    assert err[1].startswith("notice: 1 of 2 image(s) are grayscale but the model takes 3")
