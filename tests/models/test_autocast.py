"""The engine under torch.autocast matches the naive model for DenseNet and U-Net.

Both modes compute in the autocast dtype, so neither equals the float64 result; the
check is that the engine's error against a float64 reference is of the size of the naive
model's (at most twice it, plus one rounding step of the dtype), for outputs, input and
parameter gradients and running statistics. Separate tests show what the engine stores
(autocast dtype) and what stays float32.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest
import torch
from torch import Tensor, nn

from concatnets.models.densenet import DenseNet
from concatnets.models.unet import UNet

MakeModel = Callable[[bool], nn.Module]

CPU_BF16 = pytest.param("cpu", torch.bfloat16, id="cpu-bf16")
CUDA = [
    pytest.param("cuda", torch.float16, id="cuda-fp16", marks=pytest.mark.cuda),
    pytest.param("cuda", torch.bfloat16, id="cuda-bf16", marks=pytest.mark.cuda),
]


def densenet(spatial_dims: int) -> MakeModel:
    def make(engine: bool) -> nn.Module:
        torch.manual_seed(1)
        return DenseNet(
            growth_rate=4,
            block_config=(2, 2),
            num_init_features=8,
            small_inputs=True,
            num_classes=3,
            spatial_dims=spatial_dims,
            memory_efficient=engine,
        )

    return make


def unet(spatial_dims: int, normalization: str) -> MakeModel:
    def make(engine: bool) -> nn.Module:
        torch.manual_seed(1)
        return UNet(
            spatial_dims=spatial_dims,
            depth=2,
            features=4,
            normalization=normalization,  # type: ignore[arg-type]
            num_groups=2 if normalization == "group" else None,
            memory_efficient=engine,
        )

    return make


# bf16 conv3d weight gradients on 2x2x2 maps are wrong on CPU in torch 2.13, so the 3-D
# inputs are 16^3 (the DenseNet's second block still sees 8^3).
CASES = {
    "densenet2d": (densenet(2), (4, 3, 8, 8)),
    "densenet3d": (densenet(3), (2, 3, 16, 16, 16)),
    "unet2d-batch": (unet(2, "batch"), (2, 1, 16, 16)),
    "unet2d-group": (unet(2, "group"), (2, 1, 16, 16)),
    "unet2d-instance": (unet(2, "instance"), (2, 1, 16, 16)),
    "unet3d-batch": (unet(3, "batch"), (2, 1, 16, 16, 16)),
    "unet3d-group": (unet(3, "group"), (2, 1, 16, 16, 16)),
}


class Step:
    """Outputs and gradients of one forward and backward."""

    def __init__(self, model: nn.Module, x: Tensor, device: str, dtype: torch.dtype | None):
        x = x.detach().clone().requires_grad_()
        with torch.autocast(device, dtype or torch.float32, enabled=dtype is not None):
            out = model(x)
        self.out_dtype = out.dtype
        weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(5))
        (out.double() * weights.to(device=device, dtype=torch.float64)).sum().backward()
        assert x.grad is not None
        self.out, self.grad_x = out.detach(), x.grad
        self.grads = {n: p.grad for n, p in model.named_parameters()}
        self.buffers = {n: b.detach().clone() for n, b in model.named_buffers() if "running" in n}


def relative_error(values: list[Tensor], reference: list[Tensor]) -> float:
    if not reference:  # e.g. running statistics of a model without batch norm
        return 0.0
    a = torch.cat([v.double().flatten().cpu() for v in values])
    b = torch.cat([v.double().flatten().cpu() for v in reference])
    return float((a - b).norm() / b.norm())


def errors(step: Step, ref: Step) -> dict[str, float]:
    return {
        "output": relative_error([step.out], [ref.out]),
        "input grad": relative_error([step.grad_x], [ref.grad_x]),
        "param grads": relative_error(list(step.grads.values()), list(ref.grads.values())),
        "running stats": relative_error(list(step.buffers.values()), list(ref.buffers.values())),
    }


def check_against_naive(case: str, device: str, dtype: torch.dtype) -> None:
    make, shape = CASES[case]
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0)).to(device)
    reference = Step(make(False).double().to(device), x.double(), device, None)
    naive = Step(make(False).to(device), x, device, dtype)
    engine_model = make(True).to(device)
    engine = Step(engine_model, x, device, dtype)
    assert naive.out_dtype == engine.out_dtype == dtype
    assert engine.grad_x.dtype == torch.float32
    for name, grad in engine.grads.items():
        assert grad is not None and grad.dtype == torch.float32, name
    for name, buffer in engine_model.named_buffers():
        assert buffer.dtype in (torch.float32, torch.int64), name
    step = 2.0**-8 if dtype == torch.bfloat16 else 2.0**-11
    naive_errors, engine_errors = errors(naive, reference), errors(engine, reference)
    for quantity, error in engine_errors.items():
        assert error <= 2 * naive_errors[quantity] + step, (quantity, error, naive_errors)


@pytest.mark.parametrize("case", list(CASES))
def test_engine_matches_naive_under_cpu_bf16_autocast(case: str) -> None:
    check_against_naive(case, "cpu", torch.bfloat16)


@pytest.mark.parametrize(("device", "dtype"), CUDA)
@pytest.mark.parametrize("case", ["densenet2d", "densenet3d", "unet2d-batch", "unet3d-group"])
def test_engine_matches_naive_under_cuda_autocast(
    case: str, device: str, dtype: torch.dtype
) -> None:
    check_against_naive(case, device, dtype)


def saved_activation_dtypes(model: nn.Module, x: Tensor, device: str, dtype: torch.dtype) -> dict:
    """Bytes per dtype of the feature maps ``(N, C, *spatial)`` autograd keeps after
    ``model(x)`` (per-channel statistics and parameters left out)."""
    parameters = {p.data_ptr() for p in model.parameters()}
    kept: dict[torch.dtype, int] = {}

    def pack(t: Tensor) -> Tensor:
        if t.is_floating_point() and t.data_ptr() not in parameters and t.dim() == x.dim():
            kept[t.dtype] = kept.get(t.dtype, 0) + t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), torch.autocast(device, dtype):
        model(x)
    return kept


@pytest.mark.parametrize(("device", "dtype"), [CPU_BF16, *CUDA])
@pytest.mark.parametrize("case", ["densenet2d", "unet2d-batch", "unet2d-group"])
def test_engine_stores_activations_in_the_autocast_dtype(
    case: str, device: str, dtype: torch.dtype
) -> None:
    make, shape = CASES[case]
    x = torch.randn(shape, device=device)
    kept = saved_activation_dtypes(make(True).to(device), x, device, dtype)
    assert set(kept) == {dtype}, kept
    naive = saved_activation_dtypes(make(False).to(device), x, device, dtype)
    # The engine keeps fewer bytes than the naive model under the same autocast.
    assert kept[dtype] < sum(naive.values())


@pytest.mark.parametrize(
    ("device", "dtype"),
    [
        pytest.param("cpu", torch.float16, id="cpu-fp16"),
        pytest.param("cuda", torch.float16, id="cuda-fp16", marks=pytest.mark.cuda),
    ],
)
@pytest.mark.parametrize("case", ["densenet2d", "unet2d-batch"])
@pytest.mark.parametrize("engine", [False, True], ids=["naive", "engine"])
def test_grad_scaler_skips_an_overflowing_step(
    case: str, engine: bool, device: str, dtype: torch.dtype
) -> None:
    make, shape = CASES[case]
    model = make(engine).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    # 2**40 times any gradient overflows float16 (max 65504): the step must be skipped.
    scaler = torch.amp.GradScaler(device, init_scale=2.0**40)
    x = torch.randn(shape, device=device)

    def step() -> None:
        optimizer.zero_grad()
        with torch.autocast(device, dtype):
            out = model(x)
        loss = out.float().square().mean()
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    before = copy.deepcopy(model.state_dict())
    step()
    assert any(not p.grad.isfinite().all() for p in model.parameters())  # type: ignore[union-attr]
    assert scaler.get_scale() == 2.0**39
    for name, p in model.named_parameters():
        assert torch.equal(p, before[name]), name
    scaler.update(2.0**4)  # a scale that fits: the next step is taken
    step()
    assert all(p.grad.isfinite().all() for p in model.parameters())  # type: ignore[union-attr]
    assert any(not torch.equal(p, before[n]) for n, p in model.named_parameters())


def test_gradients_of_a_float16_cpu_step_match_the_naive_model() -> None:
    """CPU float16 autocast (no scaler overflow): engine gradients as close as naive ones."""
    make, shape = CASES["densenet2d"]
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    reference = Step(make(False).double(), x.double(), "cpu", None)
    naive = errors(Step(make(False), x, "cpu", torch.float16), reference)
    engine = errors(Step(make(True), x, "cpu", torch.float16), reference)
    for quantity, error in engine.items():
        assert error <= 2 * naive[quantity] + 2.0**-11, (quantity, error, naive)


@pytest.mark.parametrize("case", ["densenet2d", "unet2d-batch", "unet2d-group"])
def test_inference_under_autocast_matches_the_naive_model(case: str) -> None:
    """Eval mode (running statistics, no autograd): outputs in bf16, as accurate as naive."""
    make, shape = CASES[case]
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    trained = make(False).double()
    with torch.no_grad():  # running statistics of a few batches, as after some training
        for seed in range(3):
            trained(torch.randn(shape, generator=torch.Generator().manual_seed(seed + 1)).double())
    state = trained.state_dict()
    models = {"reference": make(False).double(), "naive": make(False), "engine": make(True)}
    for model in models.values():
        model.load_state_dict(state)
        model.eval()
    with torch.no_grad():
        reference = models["reference"](x.double())
        with torch.autocast("cpu", torch.bfloat16):
            naive, engine = models["naive"](x), models["engine"](x)
    assert naive.dtype == engine.dtype == torch.bfloat16
    naive_error = relative_error([naive], [reference])
    assert relative_error([engine], [reference]) <= 2 * naive_error + 2.0**-8
