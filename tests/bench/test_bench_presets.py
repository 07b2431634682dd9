"""Presets and their expansion over modes."""

from __future__ import annotations

import pytest
import torch

from concatnets.bench import PRESETS, PlanSettings, Row, build_plan
from concatnets.bench.presets import family_modes, fc_densenet_sweep_rows, sweep_rows


def _rows(preset: str) -> dict[str, Row]:
    return {row.label or row.model: row for row in PRESETS[preset]}


def test_targets_preset_matches_the_project_targets() -> None:
    rows = _rows("targets")
    assert (rows["densenet_bc_100"].batch, rows["densenet_bc_100"].image_size) == (64, 32)
    assert (rows["densenet121"].batch, rows["densenet121"].image_size) == (8, 224)
    assert (rows["unet"].batch, rows["unet"].image_size) == (4, 256)
    nested = rows["unet_plusplus (deep supervision)"]
    assert (nested.model, nested.batch, nested.image_size) == ("unet_plusplus", 4, 256)
    assert nested.model_kwargs == {"deep_supervision": True}
    tiramisu = rows["fc_densenet103 (11 classes)"]
    assert (tiramisu.model, tiramisu.batch, tiramisu.image_size) == ("fc_densenet103", 2, 224)
    assert tiramisu.model_kwargs == {"num_classes": 11}


def test_segmentation_preset_is_the_two_dense_segmentation_target_rows() -> None:
    assert PRESETS["segmentation"] == [
        row for row in PRESETS["targets"] if row.model in ("fc_densenet103", "unet_plusplus")
    ]
    plan = build_plan(family_modes(PRESETS["segmentation"])[0], PlanSettings())
    assert [(c.model, c.mode) for c in plan] == [
        (model, mode)
        for model in ("fc_densenet103", "unet_plusplus")
        for mode in ("naive", "checkpoint", "efficient")
    ]


def test_fc_densenet_sweep_varies_depth_at_one_growth_rate() -> None:
    from concatnets.models import create_model

    rows = PRESETS["fc_densenet_sweep"]
    assert [(r.depth, r.group, r.batch, r.image_size) for r in rows] == [
        (depth, "sweep", 2, 96) for depth in (56, 67, 100, 144)
    ]
    for row in rows:
        model = create_model(row.model, **row.model_kwargs)
        convs = [m for m in model.modules() if isinstance(m, torch.nn.modules.conv._ConvNd)]
        assert len(convs) == row.depth and model.growth_rate == 16
    # 67 layers at k = 16 is the paper's FC-DenseNet67 itself.
    assert rows[1].model_kwargs["down_layers"] == [5] * 5 and rows[1].model == "fc_densenet67"
    with pytest.raises(ValueError, match="11 L \\+ 12"):
        fc_densenet_sweep_rows([103])


def test_sweep_preset_sweeps_depth_and_runs_1000_layers_efficient_only() -> None:
    rows = PRESETS["sweep"]
    sweep = [r for r in rows if r.group == "sweep"]
    assert [r.depth for r in sweep] == [40, 100, 160, 250]
    assert all(r.model_kwargs["growth_rate"] == 12 and r.batch == 64 for r in rows)
    (deep,) = [r for r in rows if r.group == "deep"]
    assert deep.depth == 1000 and deep.modes == ("efficient",)
    assert (deep.steps, deep.warmup) == (1, 0)
    plan = build_plan([deep], PlanSettings())
    assert [c.mode for c in plan] == ["efficient"]


def test_plan_expands_modes_and_applies_overrides() -> None:
    rows = [Row("densenet_bc_100", batch=64, image_size=32)]
    plan = build_plan(rows, PlanSettings(modes=("naive", "efficient"), batch=2, steps=1))
    assert [(c.mode, c.memory_efficient, c.batch, c.steps) for c in plan] == [
        ("naive", False, 2, 1),
        ("efficient", True, 2, 1),
    ]
    checkpoint = build_plan(rows, PlanSettings(modes=("checkpoint",)))[0]
    assert checkpoint.memory_efficient == "checkpoint"
    assert checkpoint.batch == 64


def test_torchvision_rows_follow_densenet121_only() -> None:
    rows = [Row("densenet121", batch=8, image_size=224), Row("unet", batch=4, image_size=256)]
    plan = build_plan(rows, PlanSettings(modes=("naive",)), torchvision=True)
    assert [(c.model, c.mode, c.source) for c in plan] == [
        ("densenet121", "naive", "concatnets"),
        ("densenet121", "tv-naive", "torchvision"),
        ("densenet121", "tv-checkpoint", "torchvision"),
        ("unet", "naive", "concatnets"),
    ]
    assert [c.memory_efficient for c in plan[1:3]] == [False, True]


def test_sweep_rejects_depths_that_are_not_6n_plus_4() -> None:
    with pytest.raises(ValueError, match="6n \\+ 4"):
        sweep_rows([41])
    assert [r.model_kwargs["depth"] for r in sweep_rows([10, 1000])] == [10, 1000]


def test_config_round_trips_through_json_and_checks_its_mode() -> None:
    (config,) = build_plan([Row("unet", batch=4, image_size=256)], PlanSettings(modes=("naive",)))
    assert type(config).from_json(config.to_json()) == config
    with pytest.raises(ValueError, match="mode"):
        type(config)(model="unet", mode="fast", batch=1, image_size=8)


def test_unet_rows_never_run_a_checkpoint_mode() -> None:
    rows = [Row("unet", batch=4, image_size=256), Row("densenet_bc_100", batch=2, image_size=8)]
    limited, notes = family_modes(rows, ("naive", "checkpoint"))
    plan = build_plan(limited, PlanSettings(modes=("naive", "checkpoint")))
    assert [(c.model, c.mode) for c in plan] == [
        ("unet", "naive"),
        ("densenet_bc_100", "naive"),
        ("densenet_bc_100", "checkpoint"),
    ]
    assert notes == ["unet: the unet family has no 'checkpoint' mode; skipped"]
    assert family_modes(rows, ("naive",))[1] == []


def test_targets_preset_adds_a_channels_last_unet_pair() -> None:
    row = _rows("targets")["unet (channels-last)"]
    assert row.channels_last and (row.batch, row.image_size) == (4, 256)
    plan = build_plan(family_modes([row])[0], PlanSettings())
    assert [(c.mode, c.channels_last) for c in plan] == [("naive", True), ("efficient", True)]


def test_channels_last_setting_labels_rows_and_keeps_them_apart() -> None:
    from concatnets.bench.config import comparison_key

    rows = [Row("densenet_bc_100", batch=2, image_size=8)]
    default = build_plan(rows, PlanSettings(modes=("naive",)))
    layout = build_plan(rows, PlanSettings(modes=("naive",), channels_last=True))
    assert layout[0].label == "densenet_bc_100 (channels-last)" and layout[0].channels_last
    # Each is compared with the naive row of its own layout, never across layouts.
    assert comparison_key(default[0]) != comparison_key(layout[0])


def test_amp_is_validated_and_fp16_needs_cuda() -> None:
    from concatnets.bench.config import BenchConfig, comparison_key

    bf16 = BenchConfig("unet", "naive", 1, 8, amp="bf16")
    assert comparison_key(bf16) != comparison_key(BenchConfig("unet", "naive", 1, 8))
    assert BenchConfig("unet", "naive", 1, 8, amp="fp16", device="cuda").amp == "fp16"
    with pytest.raises(ValueError, match="needs a CUDA device"):
        BenchConfig("unet", "naive", 1, 8, amp="fp16")
    with pytest.raises(ValueError, match="amp must be one of"):
        BenchConfig("unet", "naive", 1, 8, amp="fp8")
