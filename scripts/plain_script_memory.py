"""Resident memory of a plain user training script, for checking `bench memory` against.

Does what a user's script does, nothing more: ``import concatnets``, build a model,
``torch.optim.SGD``, train a few steps; no environment variables set by us, no
``malloc_trim``. Prints, per step, the growth of the resident-set peak over the resident
size before the first step (after one tiny sanity batch that sizes the target).

    python scripts/plain_script_memory.py densenet121 efficient 8 224 3
    CONCATNETS_MALLOC=system python scripts/plain_script_memory.py densenet121 efficient 8 224 3

The resident figure depends on the order of glibc's heap allocations, which address space
randomisation changes: one PYTHONHASHSEED gave 740, 866 and 1016 MiB (densenet_bc_100
batch 64, step 3) in three runs. For an A/B comparison run every variant under
``setarch x86_64 -R`` (randomisation off for that process only; repeated runs then agree
to 0.2 MiB) over several PYTHONHASHSEED values, and compare ranges: any change of the
allocation order moves the figure (editing this docstring moved seed 0's step 3 from 960
to 905 MiB), so a difference within the spread over seeds is no effect.

    PYTHONHASHSEED=0 setarch x86_64 -R \
        python scripts/plain_script_memory.py densenet_bc_100 efficient 64 32 3
"""

from __future__ import annotations

import json
import resource
import sys
import time

import torch
import torch.nn.functional as F

import concatnets
from concatnets._allocator import allocator_setting
from concatnets._process_memory import reset_resident_peak, resident_peak_bytes


def _resident_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize()


def main(model_name: str, mode: str, batch: int, size: int, steps: int) -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = concatnets.create_model(model_name, memory_efficient=mode == "efficient").train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    inputs = torch.randn(batch, 3, size, size)
    shape = model(inputs[:2]).shape
    if len(shape) == 2:
        target = torch.randint(shape[1], (batch,))
    else:
        target = torch.randint(0, 2, (batch, *shape[1:])).float()
    baseline = _resident_bytes()
    rows = []
    for _ in range(steps):
        reset_resident_peak()
        start, cpu_start = time.perf_counter(), time.process_time()
        output = model(inputs)
        if target.is_floating_point():
            loss = F.binary_cross_entropy_with_logits(output, target)
        else:
            loss = F.cross_entropy(output, target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        del output, loss
        peak = max(resident_peak_bytes(), _resident_bytes()) - baseline
        rows.append(
            {
                "peak_growth_mib": round(peak / 2**20, 1),
                "wall_s": round(time.perf_counter() - start, 3),
                "cpu_s": round(time.process_time() - cpu_start, 3),
            }
        )
    print(
        json.dumps(
            {
                "model": model_name,
                "mode": mode,
                "allocator": allocator_setting().detail,
                "steps": rows,
            }
        )
    )


if __name__ == "__main__":
    name, mode, batch, size, steps = sys.argv[1:6]
    main(name, mode, int(batch), int(size), int(steps))
