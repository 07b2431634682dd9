"""What one engine switch costs a training step, and what it saves: A/B in one process.

Switches: ``trim`` (``CONCATNETS_MALLOC=trim``, the heap release, off vs on) and
``pointwise`` (the 1x1 convolution kernel, ``conv`` vs ``gemm``). One process trains one
engine model, as a user's script does, and alternates steps with the switch off and on
(both are read at every engine call), so machine drift hits both alike. Prints the
median per-pair CPU-time ratio (on / off), the heap releases made, and each setting's
resident peak growth per step. ``bench time`` cannot show the trim's cost: its naive
model shares the process, and the release then also returns the pages the naive model's
freed tensors left, which both models fault in again.

    python scripts/engine_switch_cost.py densenet121 8 224 --pairs 4
    python scripts/engine_switch_cost.py densenet_bc_100 64 32 --switch pointwise --amp bf16
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import resource
import statistics
import time

import torch

from concatnets import _allocator
from concatnets._allocator import AllocatorSetting
from concatnets._process_memory import reset_resident_peak, resident_peak_bytes
from concatnets.bench.config import BenchConfig
from concatnets.bench.memory import _make_batch, _train_step, prepare_model
from concatnets.engine import heap_release_stats, set_pointwise_kernel

_TRIM = {
    False: AllocatorSetting(False, "trim cost: off", "system"),
    True: AllocatorSetting(False, "trim cost: on", "trim"),
}
_POINTWISE = {False: "conv", True: "gemm"}


def _switch(name: str, on: bool) -> None:
    if name == "trim":
        _allocator._setting = _TRIM[on]
    else:
        set_pointwise_kernel(_POINTWISE[on])


def _resident() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model")
    parser.add_argument("batch", type=int)
    parser.add_argument("image_size", type=int)
    parser.add_argument("--pairs", type=int, default=4, help="off/on step pairs (default 4)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--switch", choices=("trim", "pointwise"), default="trim")
    parser.add_argument("--amp", choices=("bf16",), default=None, help="CPU bfloat16 autocast")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = BenchConfig(args.model, "efficient", args.batch, args.image_size)
    model = prepare_model(config, torch.device("cpu"))
    inputs, target, _ = _make_batch(model, config, torch.device("cpu"))
    parameters = [p for p in model.parameters() if p.requires_grad]

    def autocast() -> contextlib.AbstractContextManager | None:
        return torch.autocast("cpu", torch.bfloat16) if args.amp else None

    for on in (False, True):  # warm-up: kernels built, probes and first faults done
        _switch(args.switch, on)
        _train_step(model, inputs, target, parameters, autocast())
    gc.collect()
    base = _resident()
    cpu: dict[bool, list[float]] = {False: [], True: []}
    peaks: dict[bool, list[float]] = {False: [], True: []}
    for pair in range(args.pairs):
        for on in (False, True) if pair % 2 == 0 else (True, False):
            _switch(args.switch, on)
            reset_resident_peak()
            start = time.process_time()
            _train_step(model, inputs, target, parameters, autocast())
            cpu[on].append(time.process_time() - start)
            peaks[on].append((max(resident_peak_bytes(), _resident()) - base) / 2**20)
    ratios = [a / b for a, b in zip(cpu[True], cpu[False], strict=True)]
    print(
        json.dumps(
            {
                "model": args.model,
                "switch": args.switch,
                "on_off": "gemm / conv" if args.switch == "pointwise" else "trim / system",
                "amp": args.amp,
                "batch": args.batch,
                "image_size": args.image_size,
                "cpu_time_ratio_on_over_off": statistics.median(ratios),
                "cpu_step_s": {"off": cpu[False], "on": cpu[True]},
                "resident_peak_growth_mib": {"off": peaks[False], "on": peaks[True]},
                "releases": heap_release_stats().releases,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
