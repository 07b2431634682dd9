"""DenseNet family: published sizes, torchvision names, and equal results in every mode."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from concatnets import create_model, list_models
from concatnets.models.densenet import DenseNet, densenet_bc_config

# Parameter counts: torchvision's densenet builders (1000 classes) and the DenseNet paper's
# Table 2 for the CIFAR DenseNet-BC variants (0.8 M, 15.3 M, 25.6 M, rounded there).
PUBLISHED_COUNTS = {
    "densenet121": 7_978_856,
    "densenet161": 28_681_000,
    "densenet169": 14_149_480,
    "densenet201": 20_013_928,
}
PAPER_COUNTS_MILLIONS = {"densenet_bc_100": 0.8, "densenet_bc_250": 15.3, "densenet_bc_190": 25.6}


def count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", sorted(PUBLISHED_COUNTS))
def test_imagenet_parameter_counts(name: str) -> None:
    with torch.device("meta"):
        assert count(create_model(name)) == PUBLISHED_COUNTS[name]


@pytest.mark.parametrize("name", sorted(PAPER_COUNTS_MILLIONS))
def test_cifar_parameter_counts(name: str) -> None:
    with torch.device("meta"):
        millions = count(create_model(name)) / 1e6
    assert millions == pytest.approx(PAPER_COUNTS_MILLIONS[name], abs=0.05)


def test_registry_lists_family_and_passes_overrides() -> None:
    names = set(list_models(family="densenet"))
    assert {"densenet121", "densenet264", "densenet_bc_100", "densenet_bc"} <= names
    model = create_model("densenet_bc", depth=22, growth_rate=6, num_classes=7, in_channels=1)
    assert isinstance(model, DenseNet)
    assert model.classifier.out_features == 7
    assert model.features.conv0.in_channels == 1
    assert [len(getattr(model.features, f"denseblock{i}")) for i in (1, 2, 3)] == [3, 3, 3]


def test_invalid_depth_names_the_nearest_valid_ones() -> None:
    with pytest.raises(ValueError, match=r"6n \+ 4.*40, 46"):
        densenet_bc_config(41, 12)


def test_unknown_mode_is_rejected() -> None:
    with pytest.raises(ValueError, match="memory_efficient"):
        create_model("densenet_bc", depth=10, memory_efficient="fast")


def test_torchvision_state_dict_names() -> None:
    with torch.device("meta"):
        keys = set(create_model("densenet121").state_dict())
    expected = {
        "features.conv0.weight",
        "features.norm0.running_mean",
        "features.denseblock1.denselayer1.norm1.weight",
        "features.denseblock1.denselayer6.conv2.weight",
        "features.transition1.conv.weight",
        "features.denseblock4.denselayer16.norm2.num_batches_tracked",
        "features.norm5.bias",
        "classifier.weight",
    }
    assert expected <= keys


def tiny(memory_efficient: object, **overrides: object) -> DenseNet:
    torch.manual_seed(0)
    config = {"depth": 10, "growth_rate": 4, "num_classes": 5, "drop_rate": 0.0}
    config.update(overrides)
    return create_model("densenet_bc", memory_efficient=memory_efficient, **config)  # type: ignore[return-value]


@pytest.mark.parametrize("mode", ["checkpoint", True])
def test_state_dict_loads_strictly_across_modes(mode: object) -> None:
    naive = tiny(False)
    other = tiny(mode)
    other.load_state_dict(naive.state_dict(), strict=True)
    naive.load_state_dict(other.state_dict(), strict=True)


CONFIGS = [
    pytest.param({"spatial_dims": 2}, torch.float32, id="2d-f32"),
    pytest.param({"spatial_dims": 2, "drop_rate": 0.2}, torch.float32, id="2d-dropout"),
    pytest.param({"spatial_dims": 3}, torch.float64, id="3d-f64"),
    pytest.param({"spatial_dims": 2, "small_inputs": False}, torch.float64, id="imagenet-stem"),
]


def train_steps(model: nn.Module, x: torch.Tensor, target: torch.Tensor, steps: int) -> list[float]:
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    losses = []
    for step in range(steps):
        torch.manual_seed(step)  # same dropout masks in every mode
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(model(x), target)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("mode", ["checkpoint", True])
@pytest.mark.parametrize(("config", "dtype"), CONFIGS)
def test_modes_match_naive_after_two_steps(
    mode: object, config: dict[str, object], dtype: torch.dtype
) -> None:
    naive = tiny(False, **config).to(dtype)
    other = tiny(mode, **config).to(dtype)
    other.load_state_dict(naive.state_dict())
    spatial = (8,) * int(config["spatial_dims"])  # type: ignore[call-overload]
    if config.get("small_inputs") is False:
        spatial = (16,) * len(spatial)
    x = torch.randn(4, 3, *spatial, dtype=dtype)
    target = torch.randint(0, 5, (4,))
    losses_naive = train_steps(naive, x, target, 2)
    losses_other = train_steps(other, x, target, 2)
    tol = 1e-4 if dtype == torch.float32 else 1e-9
    assert losses_other == pytest.approx(losses_naive, rel=tol, abs=tol)
    for (name, p_naive), p_other in zip(naive.named_parameters(), other.parameters(), strict=True):
        assert p_other.grad is not None, f"{name} got no gradient"
        torch.testing.assert_close(p_other, p_naive, atol=tol, rtol=tol, msg=name)
    if mode is True:  # running statistics updated exactly as often as the naive model's
        for (name, b_naive), b_other in zip(naive.named_buffers(), other.buffers(), strict=True):
            torch.testing.assert_close(b_other, b_naive, atol=tol, rtol=tol, msg=name)


def test_eval_and_no_grad_in_every_mode() -> None:
    naive = tiny(False)
    x = torch.randn(2, 3, 8, 8)
    naive.eval()
    with torch.no_grad():
        expected = naive(x)
    for mode in ("checkpoint", True):
        other = tiny(mode)
        other.load_state_dict(naive.state_dict())
        other.eval()
        with torch.no_grad():
            torch.testing.assert_close(other(x), expected)
        torch.testing.assert_close(other(x), expected)  # eval with grad enabled


def test_wrong_channel_count_says_how_to_fix() -> None:
    with pytest.raises(ValueError, match="in_channels=1"):
        tiny(True)(torch.randn(1, 1, 8, 8))


def test_torch_compile_runs_the_engine() -> None:
    model = tiny(True)
    compiled = torch.compile(model, backend="eager")
    x = torch.randn(2, 3, 8, 8)
    out = compiled(x)
    out.sum().backward()
    model.eval()
    reference = copy.deepcopy(model)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), reference(x))


def test_engine_transitions_reuse_the_blocks_moments(monkeypatch: pytest.MonkeyPatch) -> None:
    # Each dense block hands its output's per-channel moments to the transition after it:
    # the transitions' norm_stats never measure their input again.
    from concatnets.engine import stats

    model = tiny(True, depth=16)

    def forbidden(x: torch.Tensor) -> None:
        raise AssertionError(f"batch moments of a {tuple(x.shape)} input computed again")

    monkeypatch.setattr(stats, "batch_moments", forbidden)
    model(torch.randn(2, 3, 8, 8)).sum().backward()
    assert model.features.transition2.norm.num_batches_tracked.item() == 1
