"""``bench memory`` and ``bench time`` measure a third-party model unconverted and converted."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from concatnets.bench import cli as bench_cli
from concatnets.bench.presets import FAMILY_MODES, Row, family_modes
from concatnets.cli.main import main
from concatnets.models import external

TINY_DENSENET = [
    *("--model-arg", "init_features=8"),
    *("--model-arg", "growth_rate=4"),
    *("--model-arg", "block_config=[2,2]"),
]
SHAPE = ["--batch", "2", "--image-size", "32", "--threads", "1", "--warmup", "0"]


def test_families_without_an_engine_mode_skip_it(monkeypatch: pytest.MonkeyPatch) -> None:
    assert FAMILY_MODES["fc_densenet"] == ("naive", "checkpoint", "efficient")
    assert FAMILY_MODES["unet_plusplus"] == ("naive", "checkpoint", "efficient")
    monkeypatch.setitem(FAMILY_MODES, "unet_plusplus", ("naive", "checkpoint"))
    rows, notes = family_modes([Row("unet_plusplus_small", batch=1, image_size=32)])
    assert rows[0].modes == ("naive", "checkpoint")
    assert notes == [
        "unet_plusplus_small: the unet_plusplus family has no 'efficient' mode; skipped"
    ]


def test_bench_memory_measures_naive_and_converted(tmp_path: Path, capsys) -> None:
    pytest.importorskip("monai")
    argv = ["bench", "memory", "--models", "monai:DenseNet", *TINY_DENSENET, *SHAPE]
    assert main([*argv, "--steps", "1", "--output", str(tmp_path)]) == 0
    assert "external family has no 'checkpoint' mode" in capsys.readouterr().err
    results = json.loads((tmp_path / "results.json").read_text())["results"]
    assert [(r["config"]["mode"], r["status"]) for r in results] == [
        ("naive", "ok"),
        ("efficient", "ok"),
    ]
    assert all(r["config"]["model"] == "monai:DenseNet" for r in results)


def test_bench_time_interleaves_naive_and_converted(tmp_path: Path) -> None:
    pytest.importorskip("monai")
    output = tmp_path / "time.json"
    argv = ["bench", "time", "--model", "monai:DenseNet", *TINY_DENSENET, *SHAPE]
    assert main([*argv, "--rounds", "1", "--output", str(output)]) == 0
    result = json.loads(output.read_text())
    assert list(result["modes"]) == ["naive", "efficient"]
    assert result["unsupported"] == ["checkpoint"]


def test_stand_alone_bench_names_a_missing_library(monkeypatch) -> None:
    absent = dataclasses.replace(external.LIBRARIES["smp"], module="no_such_module_for_smp")
    monkeypatch.setitem(external.LIBRARIES, "smp", absent)
    monkeypatch.setattr(external, "_SPECS", {})
    with pytest.raises(SystemExit, match="pip install segmentation-models-pytorch"):
        bench_cli.main(["memory", "--models", "smp:Unet"])
