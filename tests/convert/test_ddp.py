"""A converted model under DistributedDataParallel: two gloo processes on the CPU.

Each process holds the same tiny DenseNet twice, plain and converted by
:func:`concatnets.memory_efficient`, each wrapped in DDP, and trains both on its own share
of the data for two SGD steps. The converted copy must end each step with the same
all-reduced gradients, the same weights and the same running statistics as the plain one
(float64), and its batch norms must have counted each step once (``num_batches_tracked``):
the engine updates running statistics in its forward only, not again in the backward as
``torch.utils.checkpoint`` does.

Run by the test through ``torchrun``; the file is also the workers' script.
"""

from __future__ import annotations

import argparse
import copy
import json
from collections.abc import Callable, Sequence
from pathlib import Path

_TIMEOUT_S = 120
_STEPS = 2


def _tiny_densenet():  # type: ignore[no-untyped-def]
    import torch

    import concatnets

    torch.manual_seed(0)
    model = concatnets.create_model(
        "densenet_bc", depth=16, growth_rate=4, num_classes=3, memory_efficient=False
    )
    return model.double()


def _gaps(a: dict, b: dict) -> dict[str, float]:  # type: ignore[type-arg]
    return {k: float((a[k].double() - b[k].double()).abs().max()) for k in a}


def _step_facts(plain: dict, other: dict, grads: dict, other_grads: dict) -> dict:  # type: ignore[type-arg]
    """How one converted copy compares with the plain model after a step."""
    tracked = {int(v) for k, v in other.items() if k.endswith("num_batches_tracked")}
    running_var = other["features.denseblock1.denselayer1.norm1.running_var"]
    return {
        "grad_gap": max(_gaps(grads, other_grads).values()),
        "state_gap": max(_gaps(plain, other).values()),
        "batches_tracked": sorted(tracked),
        "stats_moved": float(running_var.sub(1).abs().max()),
    }


def _worker(output: Path) -> None:
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    import concatnets

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    plain = _tiny_densenet()
    example = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    converted, report = concatnets.memory_efficient(
        copy.deepcopy(plain), example_input=example, report=True
    )
    wrapped = [DistributedDataParallel(m) for m in (plain, converted)]
    # Converting the DDP wrapper itself converts the model inside it.
    wrapped.append(
        concatnets.memory_efficient(
            DistributedDataParallel(copy.deepcopy(plain)), example_input=example
        )
    )
    optimizers = [torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9) for m in wrapped]
    data = torch.Generator().manual_seed(100 + rank)  # each process its own share
    steps = []
    for _ in range(_STEPS):
        x = torch.randn(4, 3, 8, 8, dtype=torch.float64, generator=data)
        y = torch.randint(0, 3, (4,), generator=data)
        for model, optimizer in zip(wrapped, optimizers, strict=True):
            optimizer.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(model(x), y).backward()
        grads = [{n: p.grad.clone() for n, p in m.module.named_parameters()} for m in wrapped]
        # All-reduced: every process holds the same averaged gradient.
        mine = grads[1]["classifier.weight"].clone()
        everyone = [torch.empty_like(mine) for _ in range(dist.get_world_size())]
        dist.all_gather(everyone, mine)
        for optimizer in optimizers:
            optimizer.step()
        states = [m.module.state_dict() for m in wrapped]
        steps.append(
            {
                "ranks_agree": float((everyone[0] - everyone[1]).abs().max()),
                "converted": _step_facts(states[0], states[1], grads[0], grads[1]),
                "wrapper_converted": _step_facts(states[0], states[2], grads[0], grads[2]),
            }
        )
    if rank == 0:
        engine = [n for n, m in wrapped[2].module.named_modules() if "forward" in m.__dict__]
        result = {
            "converted": [s.path for s in report.converted],
            "wrapper_converted": engine,
            "steps": steps,
        }
        output.write_text(json.dumps(result))
    dist.destroy_process_group()


def test_ddp_gradients_weights_and_running_stats_match_the_plain_model(
    tmp_path: Path, torchrun: Callable[[Sequence[str], float], tuple[int, str]]
) -> None:
    output = tmp_path / "ddp.json"
    code, log = torchrun([__file__, "--output", str(output)], _TIMEOUT_S)
    assert code == 0, log[-6000:]
    result = json.loads(output.read_text())
    assert "features.denseblock1" in result["converted"], result
    assert "features.denseblock1" in result["wrapper_converted"], result
    for index, step in enumerate(result["steps"], 1):
        assert step["ranks_agree"] == 0.0, step
        for variant in ("converted", "wrapper_converted"):
            facts = step[variant]
            assert facts["grad_gap"] < 1e-10, (variant, step)
            assert facts["state_gap"] < 1e-10, (variant, step)
            assert facts["batches_tracked"] == [index], (variant, step)  # once, not twice
            assert facts["stats_moved"] > 0.0, (variant, step)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--output", type=Path, required=True)
    _worker(parser.parse_args().output)
