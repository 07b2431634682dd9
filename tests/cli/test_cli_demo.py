from __future__ import annotations

import json
import sys
from pathlib import Path

from concatnets.cli import demo_command
from concatnets.cli.demo_command import _print_memory, compare_memory
from concatnets.cli.main import main


def test_demo_trains_and_reports_dice_and_overlay(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(demo_command.shutil, "which", lambda name: None)  # as after make demo
    output = tmp_path / "demo"
    args = ["demo", "--output", str(output), "--epochs", "1", "--num-images", "8"]
    args += ["--image-size", "32", "--model-arg", "features=4", "--model-arg", "depth=2"]
    args += ["--no-memory", "--no-progress", "--device", "cpu"]
    code = main(args)
    assert code == 0
    out = capsys.readouterr().out
    assert "validation Dice" in out and "overlay PNG:" in out
    assert "img/s, process peak RSS " in out  # the training log names what its peak is
    assert "next: the concatnets command is " in out and "/activate` to put it on PATH" in out
    summary = json.loads((output / "demo.json").read_text())
    assert summary["overlays"] and 0.0 <= summary["best_val_dice"] <= 1.0
    assert (output / "config.json").exists()


def test_memory_comparison_measures_both_modes():
    rows = compare_memory("unet_small", {"in_channels": 1, "features": 4, "depth": 2}, 2, 32, "cpu")
    assert [r["mode"] for r in rows] == ["naive", "efficient"]
    for row in rows:
        assert row["status"] == "ok", row.get("error")
        assert row["peak_mib"] >= 0 and row["step_s"] > 0


def test_memory_table_says_it_shows_growth_over_a_baseline(capsys):
    rows = [
        {"mode": m, "status": "ok", "peak_mib": p, "step_s": 0.5, "cpu_s": 0.5}
        for m, p in (("naive", 200.0), ("efficient", 100.0))
    ]
    rows[0]["memory_metric"] = "cpu_rss"
    _print_memory(rows, 16, 128)
    out = capsys.readouterr().out
    assert "growth of the peak over the process's baseline before the step (cpu_rss)" in out
    assert "naive      +200.0 MiB peak growth" in out and "0.50x memory" in out


def test_no_cli_hint_when_concatnets_on_path_is_this_one(monkeypatch):
    script = Path(sys.executable).parent / "concatnets"
    monkeypatch.setattr(demo_command.shutil, "which", lambda name: str(script))
    monkeypatch.setattr(demo_command.sys, "argv", [str(script)])
    assert demo_command.cli_hint() is None
