"""The training loop, with every piece of state it needs to resume exactly.

The state a run carries is explicit (:class:`TrainerState`: epochs done, global step,
position inside an unfinished epoch and its running sums, best metric and its epoch,
the metric history), and every random choice is either drawn from a stream seeded by
``(seed, epoch, index)`` (data order, augmentation) or from the global generators, whose
states (one set per process) are saved with each checkpoint. The data loaders draw their
worker seeds from private generators, so iterating them leaves the global generators
alone. Resuming from ``last`` therefore replays the rest of the run as an uninterrupted
run would, bit for bit on CPU.

Each epoch writes ``last`` (and ``best`` on improvement, and optionally ``epoch-NNNN``)
through :func:`~concatnets.training.checkpoint.save_checkpoint`. Ctrl-C or SIGTERM stops
after the current optimizer step and writes ``last`` at that exact position (see
:mod:`concatnets.training.interrupt`); a ``kill -9`` loses at most the unfinished epoch.

Under ``torchrun`` every process calls :meth:`Trainer.save` (it gathers the processes'
RNG states); only rank 0 writes files.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler
from torch.utils.data import DataLoader, Sampler
from tqdm import tqdm

from concatnets.data.datasets import LabelledDataset
from concatnets.data.notices import notice
from concatnets.engine.choices import engine_choice_rows
from concatnets.training.checkpoint import Checkpoint, save_checkpoint
from concatnets.training.distributed import (
    DistributedContext,
    all_gather_objects,
    all_reduce_sum_,
    any_process,
    barrier,
    make_sampler,
    unwrap_model,
)
from concatnets.training.evaluation import autocast, evaluate_model, to_device
from concatnets.training.interrupt import StopRequest, TrainingInterrupted
from concatnets.training.logging import MetricsLogger
from concatnets.training.losses import LossFn, crop_to_output
from concatnets.training.memory import (
    format_bytes,
    peak_memory_bytes,
    peak_memory_label,
    reset_peak_memory,
)
from concatnets.training.metrics import MetricAccumulator, primary_metric
from concatnets.training.optim import advance_schedule
from concatnets.training.plots import plot_learning_curves, save_overlay_panel
from concatnets.training.rng import capture_rng_state, restore_rng_state

__all__ = ["EpochSampler", "Trainer", "TrainerState", "TrainingDivergedError"]

_RNG_PREFIX = "rng."  # rank 0; rank r > 0 uses "rng<r>."
_LOADER_SEED_TAG = 0x10AD


def _rng_prefix(rank: int) -> str:
    return _RNG_PREFIX if rank == 0 else f"rng{rank}."


def _loader_seed(seed: int, epoch: int) -> int:
    state = np.random.SeedSequence([seed, epoch, _LOADER_SEED_TAG]).generate_state(2)
    return int(state[0]) << 32 | int(state[1])


class TrainingDivergedError(RuntimeError):
    """The loss became NaN or infinite."""


@dataclass
class TrainerState:
    """Progress of a run, saved in every checkpoint's metadata.

    Args:
        epoch: Epochs completed (the next epoch to run is ``epoch + 1``).
        global_step: Optimizer steps taken.
        best_metric: Best monitored metric so far, or ``None``.
        best_epoch: Epoch that reached ``best_metric``.
        history: One record per completed epoch (what ``metrics.json`` holds).
        epoch_step: Optimizer steps already taken in epoch ``epoch + 1`` (non-zero only
            in a checkpoint written by a stop in the middle of an epoch).
        partial: That unfinished epoch's running sums over all processes
            (``loss_sum``, ``images``, ``confusion``, ``top5_hits``), or ``None``.
    """

    epoch: int = 0
    global_step: int = 0
    best_metric: float | None = None
    best_epoch: int | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    epoch_step: int = 0
    partial: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        """The state as a JSON-friendly dict."""
        return asdict(self)

    @classmethod
    def from_json(cls, values: Any) -> TrainerState:
        """Rebuild a state saved by :meth:`to_json`, checking every field.

        Raises:
            ValueError: A field is missing, of the wrong type, out of range, or
                inconsistent with the others (the message names it).
        """
        if not isinstance(values, dict):
            raise ValueError("its 'trainer' state is not a mapping")
        epoch = _count(values, "epoch", MAX_EPOCHS)
        global_step = _count(values, "global_step", MAX_STEPS)
        epoch_step = _count(values, "epoch_step", MAX_STEPS, default=0)
        history = values.get("history", [])
        if not isinstance(history, list) or not all(isinstance(r, dict) for r in history):
            raise ValueError("its history is not a list of per-epoch records")
        if len(history) != epoch:
            raise ValueError(f"its history holds {len(history)} epoch(s) but epoch is {epoch}")
        numbers = [record.get("epoch") for record in history]
        if numbers != list(range(1, epoch + 1)):
            raise ValueError("its history's epochs are not 1, 2, ... in order")
        if epoch_step > global_step:
            raise ValueError(f"epoch_step {epoch_step} exceeds global_step {global_step}")
        best_metric, best_epoch = values.get("best_metric"), values.get("best_epoch")
        if (best_metric is None) != (best_epoch is None):
            raise ValueError("best_metric and best_epoch must both be set or both be null")
        if best_metric is not None and not (
            isinstance(best_metric, (int, float))
            and not isinstance(best_metric, bool)
            and math.isfinite(best_metric)
        ):
            raise ValueError(f"best_metric {best_metric!r} is not a finite number")
        if best_epoch is not None and not _is_count_in(best_epoch, 1, epoch):
            raise ValueError(f"best_epoch {best_epoch!r} is not an epoch in 1..{epoch}")
        partial = values.get("partial")
        if epoch_step and not _valid_partial(partial):
            raise ValueError("its running sums of the unfinished epoch ('partial') are malformed")
        return cls(
            epoch=epoch,
            global_step=global_step,
            best_metric=None if best_metric is None else float(best_metric),
            best_epoch=best_epoch,
            history=[dict(r) for r in history],
            epoch_step=epoch_step,
            partial=partial if epoch_step else None,
        )


# Bounds on numbers read back from a checkpoint: far above any real run, low enough that
# nothing derived from them (loops, schedules) can hang.
MAX_EPOCHS = 1_000_000
MAX_STEPS = 10**12


def _is_count_in(value: Any, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _count(values: dict[str, Any], key: str, bound: int, default: int | None = None) -> int:
    value = values.get(key, default)
    if not _is_count_in(value, 0, bound):
        raise ValueError(f"its {key} {value!r} is not a whole number in 0..{bound:,}")
    return value


def _valid_partial(partial: Any) -> bool:
    if not isinstance(partial, dict):
        return False
    loss_sum, images, hits = (partial.get(k) for k in ("loss_sum", "images", "top5_hits"))
    confusion = partial.get("confusion")
    return (
        isinstance(loss_sum, (int, float))
        and math.isfinite(loss_sum)
        and isinstance(images, int)
        and images >= 0
        and isinstance(hits, int)
        and hits >= 0
        and isinstance(confusion, list)
        and all(
            isinstance(row, list) and all(isinstance(v, int) and v >= 0 for v in row)
            for row in confusion
        )
    )


class EpochSampler(Sampler[int]):
    """A shuffled order that depends only on ``(seed, epoch)``, not on the global RNG.

    With several processes the epoch's one global order is padded (by repeating its
    start) to a multiple of ``world_size`` and dealt out round-robin, so process ``r``
    takes positions ``r, r + W, r + 2W, ...``. Step ``j`` of a job with ``W`` processes
    and batch size ``B`` then sees exactly the samples of step ``j`` of one process with
    batch size ``W * B`` (when ``W * B`` divides the dataset).

    Args:
        length: Dataset length.
        seed: Base seed.
        shuffle: Shuffle (``False`` keeps ``0..length-1``).
        rank: This process's index.
        world_size: Number of processes.
    """

    def __init__(
        self, length: int, seed: int, shuffle: bool = True, *, rank: int = 0, world_size: int = 1
    ) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside 0..{world_size - 1}")
        self.length = length
        self.seed = seed
        self.shuffle = shuffle
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Select the order of ``epoch``, skipping this process's first ``start`` samples."""
        self.epoch = epoch
        self.start = start

    def order(self) -> list[int]:
        """This process's full share of the current epoch, before skipping."""
        if self.shuffle:
            rng = np.random.default_rng([self.seed, self.epoch, 0x5A17])
            order = rng.permutation(self.length).tolist()
        else:
            order = list(range(self.length))
        if self.world_size == 1 or not order:
            return order
        total = math.ceil(self.length / self.world_size) * self.world_size
        repeats = math.ceil(total / self.length)
        return (order * repeats)[:total][self.rank :: self.world_size]

    def __iter__(self) -> Iterator[int]:
        return iter(self.order()[self.start :])

    def __len__(self) -> int:
        share = math.ceil(self.length / self.world_size) if self.length else 0
        return max(share - self.start, 0)


def _unwrap_worker_error(exc: Exception) -> Exception:
    """A data error from a DataLoader worker with its own one-line message again.

    DataLoader re-raises a worker's ``ValueError`` as ``ValueError("Caught ValueError in
    DataLoader worker process 0. Original Traceback ...")``; the last line holds the
    original message (e.g. which image file is corrupt).
    """
    text = str(exc)
    if not isinstance(exc, ValueError) or "Original Traceback" not in text:
        return exc
    last = text.strip().splitlines()[-1]
    prefix = f"{type(exc).__name__}: "
    return ValueError(last[len(prefix) :] if last.startswith(prefix) else last)


def _format_metrics(values: dict[str, Any], keys: Sequence[str]) -> str:
    parts = []
    for key in keys:
        value = values.get(key)
        if isinstance(value, float) and math.isfinite(value):
            parts.append(f"{key} {value:.4f}")
    return " ".join(parts)


class Trainer:
    """Trains a model epoch by epoch, validates, logs, plots and checkpoints.

    Args:
        model: The model, already on its device (and DDP-wrapped when distributed).
        task: ``'segmentation'`` or ``'classification'``.
        class_names: One name per class.
        loss_fn: ``(logits, batch) -> loss``.
        optimizer: The optimizer.
        scheduler: Per-epoch learning-rate schedule.
        train_set: Training samples.
        val_set: Validation samples, or ``None`` (the training metric is then monitored).
        run_dir: Folder for checkpoints, logs and plots.
        metadata: Facts stored in every checkpoint (``architecture``, ``model_kwargs``,
            ``config``, class names, ...); progress fields are added per save.
        ctx: Where this process sits in a (possibly) distributed job.
        batch_size: Samples per step and process.
        workers: DataLoader worker processes.
        seed: Base seed of data order.
        bf16: bfloat16 autocast.
        progress: Show progress bars.
        keep_epochs: Also keep the last ``keep_epochs`` per-epoch checkpoints.
        prepare_folder: Called once (rank 0) just before the first file is written into
            ``run_dir`` (e.g. to write ``config.json``), so a run that fails before it
            saves anything leaves the folder as it found it.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        task: str,
        class_names: Sequence[str],
        loss_fn: LossFn,
        optimizer: Optimizer,
        scheduler: LRScheduler,
        train_set: LabelledDataset,
        val_set: LabelledDataset | None,
        run_dir: str | Path,
        metadata: dict[str, Any],
        ctx: DistributedContext,
        batch_size: int = 8,
        workers: int = 0,
        seed: int = 0,
        bf16: bool = False,
        progress: bool = True,
        keep_epochs: int = 0,
        prepare_folder: Callable[[], None] | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"--batch-size {batch_size} must be at least 1")
        self.model = model
        self.task = task
        self.class_names = list(class_names)
        self.loss_fn = loss_fn
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.train_set = train_set
        self.val_set = val_set
        self.run_dir = Path(run_dir)
        self.metadata = dict(metadata)
        self.ctx = ctx
        self.device = ctx.device
        self.seed = seed
        self.bf16 = bf16
        self.progress = progress and ctx.is_main
        self.keep_epochs = keep_epochs
        self.monitor = primary_metric(task)
        self.state = TrainerState()
        self.logger: MetricsLogger | None = None  # opened with the folder, on first write
        self._prepare_folder = prepare_folder
        self._folder_ready = False

        self.batch_size = batch_size
        self.stop = StopRequest()
        self.train_sampler = EpochSampler(
            len(train_set), seed, rank=ctx.rank, world_size=ctx.world_size
        )
        # Private generators: iterating a DataLoader draws its worker base seed from its
        # generator, which would otherwise advance the global torch generator.
        self._train_generator = torch.Generator()
        self._val_generator = torch.Generator()
        # A last batch of one sample breaks batch norm; drop it only in that case.
        per_process = math.ceil(len(train_set) / ctx.world_size)
        loader_options: dict[str, Any] = dict(
            num_workers=workers, pin_memory=self.device.type == "cuda"
        )
        self.train_loader = DataLoader(
            train_set,
            batch_size=batch_size,
            sampler=self.train_sampler,
            drop_last=per_process % batch_size == 1 and per_process > 1,
            generator=self._train_generator,
            **loader_options,
        )
        self.val_loader = None
        if val_set is not None and len(val_set):
            val_sampler = make_sampler(val_set, ctx, shuffle=False, seed=seed)
            self.val_loader = DataLoader(
                val_set,
                batch_size=batch_size,
                sampler=val_sampler,
                generator=self._val_generator,
                **loader_options,
            )

    # --- state ------------------------------------------------------------------------

    def prepare_folder(self) -> None:
        """Make the run folder ready for writing (once; rank 0): the caller's preparation,
        then the metrics logger, which continues the current history."""
        if self._folder_ready or not self.ctx.is_main:
            return
        self._folder_ready = True
        if self._prepare_folder is not None:
            self._prepare_folder()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.logger = MetricsLogger(self.run_dir, history=self.state.history)

    def checkpoint_metadata(self, record: dict[str, Any] | None) -> dict[str, Any]:
        """Metadata for a checkpoint taken now: the run's facts plus its progress."""
        return {
            **self.metadata,
            "epoch": self.state.epoch,
            "step": self.state.global_step,
            "best_metric": self.state.best_metric,
            "best_epoch": self.state.best_epoch,
            "monitor": self.monitor,
            "metrics": record or {},
            "world_size": self.ctx.world_size,
            "batch_size": self.batch_size,
            "data_order": {
                "seed": self.seed,
                "next_epoch": self.state.epoch + 1,
                "steps_done_in_next_epoch": self.state.epoch_step,
            },
            "trainer": self.state.to_json(),
            # Timed kernel and layout choices, restored on --resume (engine.choices).
            "engine_choices": engine_choice_rows(),
        }

    def rng_tensors(self) -> dict[str, Tensor]:
        """The RNG states of every process, keyed ``rng.`` (rank 0) and ``rng<r>.``.

        Every process must call it under DDP (the states are gathered).
        """
        local = {key: value.numpy().tobytes() for key, value in capture_rng_state().items()}
        tensors: dict[str, Tensor] = {}
        for rank, states in enumerate(all_gather_objects(local, self.ctx)):
            assert isinstance(states, dict)
            for key, data in states.items():
                tensors[_rng_prefix(rank) + key] = torch.frombuffer(
                    bytearray(data), dtype=torch.uint8
                )
        return tensors

    def save(
        self,
        name: str,
        record: dict[str, Any] | None = None,
        *,
        rng: dict[str, Tensor] | None = None,
    ) -> Path | None:
        """Save checkpoint ``name`` (model, optimizer, scheduler, RNG, state) in the run folder.

        Every process must call it under DDP; rank 0 writes and returns the JSON path,
        the others return ``None``.

        Args:
            name: Checkpoint name (``last``, ``best``, ``epoch-0003``).
            record: The epoch's metrics, stored in the metadata.
            rng: From :meth:`rng_tensors` (gathered now when not given).
        """
        if rng is None:
            rng = self.rng_tensors()
        if not self.ctx.is_main:
            return None
        self.prepare_folder()
        return save_checkpoint(
            self.run_dir,
            name,
            model_state=unwrap_model(self.model).state_dict(),
            optimizer_state=self.optimizer.state_dict(),
            scheduler_state=self.scheduler.state_dict(),
            extra_tensors=rng,
            metadata=self.checkpoint_metadata(record),
        )

    def restore(self, checkpoint: Checkpoint, *, scheduler: bool = True) -> None:
        """Continue from ``checkpoint``: weights, optimizer, schedule, RNG and progress.

        Each process restores its own RNG states; a process the saved run did not have
        keeps its freshly seeded generators.

        Args:
            checkpoint: A checkpoint saved by :meth:`save`.
            scheduler: Also restore the schedule's state; pass ``False`` when the run's
                length changed and the schedule is rebuilt with :meth:`replay_schedule`.
        """
        unwrap_model(self.model).load_state_dict(checkpoint.model_state)
        if checkpoint.optimizer_state is not None:
            self.optimizer.load_state_dict(checkpoint.optimizer_state)
        if scheduler and checkpoint.scheduler_state is not None:
            self.scheduler.load_state_dict(checkpoint.scheduler_state)
        self.state = TrainerState.from_json(checkpoint.metadata["trainer"])
        prefix = _rng_prefix(self.ctx.rank)
        rng = {
            k[len(prefix) :]: v for k, v in checkpoint.extra_tensors.items() if k.startswith(prefix)
        }
        if rng:
            restore_rng_state(rng)
        if self.logger is not None:
            self.logger.history = [dict(r) for r in self.state.history]

    def rewrite_metrics(self) -> None:
        """Rewrite ``metrics.csv``, ``metrics.json`` and the curves from the state's history.

        For a resumed run whose last epoch was committed but not logged (a kill between
        the two writes); rank 0 only.
        """
        if not self.ctx.is_main or not self.state.history:
            return
        self.prepare_folder()
        assert self.logger is not None
        self.logger.history = [dict(r) for r in self.state.history[:-1]]
        self.logger.log(dict(self.state.history[-1]))
        plot_learning_curves(self.state.history, self.run_dir / "learning_curves.png", self.monitor)

    def replay_schedule(self, scheduler_factory: Callable[[Optimizer], LRScheduler]) -> None:
        """Replace the schedule by a fresh one advanced to the current epoch.

        Used when a resumed run changes its number of epochs: the learning rate then
        follows the new schedule as if the run had been planned that long.

        Args:
            scheduler_factory: Builds the new schedule for an optimizer.
        """
        for group in self.optimizer.param_groups:
            group["lr"] = group.get("initial_lr", group["lr"])
        self.scheduler = scheduler_factory(self.optimizer)
        advance_schedule(self.scheduler, self.state.epoch)

    # --- loop -------------------------------------------------------------------------

    def fit(self, epochs: int) -> TrainerState:
        """Train until ``epochs`` epochs are complete (continuing after a restore).

        Ctrl-C or SIGTERM stops after the current step, saves ``last`` at that position
        and raises :class:`~concatnets.training.interrupt.TrainingInterrupted`; a second
        Ctrl-C raises :class:`KeyboardInterrupt` at once.

        Args:
            epochs: Total epochs of the run, counting those already done.
        """
        try:
            with self.stop.installed():
                for epoch in range(self.state.epoch + 1, epochs + 1):
                    self.run_epoch(epoch, epochs)
                    if epoch < epochs and any_process(self.stop.requested, self.ctx):
                        self._stopped(f"after epoch {epoch}")
        except TrainingInterrupted:
            raise
        except KeyboardInterrupt:
            if self.ctx.is_main and (self.run_dir / "last.json").exists():
                notice(
                    f"interrupted without saving; {self.run_dir / 'last.json'} holds the last "
                    f"saved position; continue with --resume {self.run_dir}"
                )
            raise
        finally:
            if self.logger is not None:
                self.logger.close()
        return self.state

    def _stopped(self, where: str) -> None:
        if self.ctx.is_main:
            notice(
                f"stopped by {self.stop.signal_name or 'a signal'} {where} (step "
                f"{self.state.global_step}); saved in {self.run_dir / 'last.json'}; "
                f"continue with --resume {self.run_dir}"
            )
        raise TrainingInterrupted(f"training stopped {where}; continue with --resume")

    def run_epoch(self, epoch: int, epochs: int) -> dict[str, Any]:
        """Train one epoch, validate, log and checkpoint; return the epoch's record.

        Continues epoch ``epoch`` from ``state.epoch_step`` when a checkpoint written in
        the middle of it was restored.
        """
        started = time.perf_counter()
        train_metrics, train_loss, images = self._train_one_epoch(epoch, epochs)
        elapsed = time.perf_counter() - started
        record: dict[str, Any] = {
            "epoch": epoch,
            "lr": self.optimizer.param_groups[0]["lr"],
            "train_loss": train_loss,
            **{f"train_{k}": v for k, v in train_metrics.items()},
        }
        if self.val_loader is not None:
            result = evaluate_model(
                self.model,
                self.val_loader,
                task=self.task,
                class_names=self.class_names,
                device=self.device,
                loss_fn=self.loss_fn,
                bf16=self.bf16,
                progress=self.progress,
                ctx=self.ctx,
                description="validate",
            )
            record["val_loss"] = result.loss
            record.update({f"val_{k}": v for k, v in result.metrics.items()})
        record["time_s"] = round(elapsed, 3)
        record["images_per_s"] = round(images / max(elapsed, 1e-9), 2)
        record["peak_memory_mb"] = round(peak_memory_bytes(self.device) / 2**20, 1)
        self.scheduler.step()
        self._finish_epoch(epoch, epochs, record)
        return record

    def _train_one_epoch(self, epoch: int, epochs: int) -> tuple[dict[str, float], float, int]:
        """Train ``epoch``; return its metrics and mean loss over all processes, and the
        number of images all processes trained on in this call."""
        first_step = self.state.epoch_step
        self.train_set.set_epoch(epoch)
        self.train_sampler.set_epoch(epoch, first_step * self.batch_size)
        self._train_generator.manual_seed(_loader_seed(self.seed, epoch))
        self.model.train()
        reset_peak_memory(self.device)
        accumulator = MetricAccumulator(self.task, self.class_names, self.device)
        sums = self._partial_sums(accumulator)
        images = 0
        started = time.perf_counter()
        bar = tqdm(
            total=len(self.train_loader) + first_step,
            initial=first_step,
            desc=f"epoch {epoch}/{epochs}",
            leave=False,
            disable=None if self.progress else True,  # None: only on a terminal
            dynamic_ncols=True,
        )
        batches = iter(self.train_loader)
        while True:
            try:
                batch = next(batches)
            except StopIteration:
                break
            except Exception as exc:
                # Ctrl-C also reaches DataLoader workers, which then die: stop cleanly.
                if not self.stop.requested:
                    cleaned = _unwrap_worker_error(exc)
                    if cleaned is exc:
                        raise
                    raise cleaned from exc
                batch = None
            if any_process(self.stop.requested, self.ctx):
                bar.close()
                self._save_mid_epoch(accumulator, sums)
                self._stopped(f"in epoch {epoch} after step {self.state.epoch_step}")
            assert batch is not None
            batch = to_device(batch, self.device)
            with autocast(self.device, self.bf16):
                logits = self.model(batch["image"])
            loss = self.loss_fn(logits.float(), batch)
            if any_process(not bool(torch.isfinite(loss)), self.ctx):
                bar.close()
                raise TrainingDivergedError(self._divergence_message(loss, epoch))
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            self.state.global_step += 1
            self.state.epoch_step += 1
            count = batch["image"].shape[0]
            sums["loss_sum"] += float(loss.detach()) * count
            sums["images"] += count
            images += count
            accumulator.update(logits.detach().float(), batch["target"])
            bar.update(1)
            if self.progress:
                speed = images / max(time.perf_counter() - started, 1e-9)
                bar.set_postfix_str(
                    f"loss {sums['loss_sum'] / sums['images']:.4f} "
                    f"{self.monitor} {accumulator.compute()[self.monitor]:.3f} "
                    f"{speed:.1f} img/s {peak_memory_label(self.device)} "
                    f"{format_bytes(peak_memory_bytes(self.device))}",
                    refresh=False,
                )
        bar.close()
        totals = self._reduce_sums(accumulator, sums)
        if totals["images"] == 0:
            raise ValueError(
                "the training split is empty for this batch size; lower --batch-size or "
                "--val-fraction, or add images"
            )
        return (
            accumulator.compute(),
            totals["loss_sum"] / totals["images"],
            images * (self.ctx.world_size),
        )

    def _partial_sums(self, accumulator: MetricAccumulator) -> dict[str, Any]:
        """Running sums of the epoch, seeded from a restored mid-epoch checkpoint.

        The saved sums already cover all processes, so only rank 0 takes them up.
        """
        sums: dict[str, Any] = {"loss_sum": 0.0, "images": 0}
        partial = self.state.partial
        if partial and self.state.epoch_step and self.ctx.is_main:
            sums["loss_sum"] = float(partial["loss_sum"])
            sums["images"] = int(partial["images"])
            accumulator.confusion += torch.tensor(
                partial["confusion"], dtype=torch.int64, device=accumulator.confusion.device
            )
            accumulator.top5_hits += int(partial["top5_hits"])
        return sums

    def _reduce_sums(self, accumulator: MetricAccumulator, sums: dict[str, Any]) -> dict[str, Any]:
        """Sum the running sums over all processes (in place for the accumulator)."""
        all_reduce_sum_(accumulator.confusion, self.ctx)
        all_reduce_sum_(accumulator.top5_hits, self.ctx)
        if not self.ctx.is_distributed:
            return dict(sums)
        values = torch.tensor(
            [sums["loss_sum"], float(sums["images"])], dtype=torch.float64, device=self.device
        )
        all_reduce_sum_(values, self.ctx)
        return {"loss_sum": float(values[0]), "images": int(values[1])}

    def _save_mid_epoch(self, accumulator: MetricAccumulator, sums: dict[str, Any]) -> None:
        """Write ``last`` at the current step of an unfinished epoch (all processes call)."""
        totals = self._reduce_sums(accumulator, sums)
        self.state.partial = {
            "loss_sum": totals["loss_sum"],
            "images": totals["images"],
            "confusion": accumulator.confusion.cpu().tolist(),
            "top5_hits": int(accumulator.top5_hits),
        }
        self.save("last")
        barrier(self.ctx)

    def _divergence_message(self, loss: Tensor, epoch: int) -> str:
        last = self.run_dir / "last.json"
        kept = (
            f"the last good checkpoint {last} (epoch {self.state.epoch}) is kept"
            if last.exists() and self.state.epoch
            else "no checkpoint was written yet"
        )
        return (
            f"loss became {loss.item()} at epoch {epoch}, step {self.state.global_step + 1}; "
            f"training stopped and {kept}; lower --lr (now "
            f"{self.optimizer.param_groups[0]['lr']:g})"
            + (" or drop --bf16" if self.bf16 else "")
            + " and check the data for NaN or infinite values"
        )

    def _finish_epoch(self, epoch: int, epochs: int, record: dict[str, Any]) -> None:
        split = "val" if self.val_loader is not None else "train"
        current = record.get(f"{split}_{self.monitor}")
        improved = (
            isinstance(current, float)
            and math.isfinite(current)
            and (self.state.best_metric is None or current > self.state.best_metric)
        )
        self.prepare_folder()  # before the history grows: the logger continues it
        self.state.epoch = epoch
        self.state.epoch_step = 0
        self.state.partial = None
        self.state.history.append(record)
        if improved:
            self.state.best_metric = current
            self.state.best_epoch = epoch
        rng = self.rng_tensors()
        self.save("last", record, rng=rng)
        if improved:
            self.save("best", record, rng=rng)
        if self.keep_epochs > 0:
            self.save(f"epoch-{epoch:04d}", record, rng=rng)
        if self.ctx.is_main:
            if self.keep_epochs > 0:
                self._prune_epoch_checkpoints()
            assert self.logger is not None
            self.logger.log(record)
            plot_learning_curves(
                self.state.history, self.run_dir / "learning_curves.png", self.monitor
            )
            line = (
                f"epoch {epoch}/{epochs}  train loss {record['train_loss']:.4f} "
                + _format_metrics(record, [f"train_{self.monitor}"]).replace("train_", "")
            )
            if self.val_loader is not None:
                line += "  |  val " + _format_metrics(
                    record, ["val_loss", f"val_{self.monitor}", "val_iou"]
                ).replace("val_", "")
            line += (
                f"  |  {record['images_per_s']:.1f} img/s, {peak_memory_label(self.device)} "
                f"{format_bytes(record['peak_memory_mb'] * 2**20)}"
                + ("  *best*" if improved else "")
            )
            print(line, flush=True)
        barrier(self.ctx)

    def _prune_epoch_checkpoints(self) -> None:
        records = sorted(self.run_dir.glob("epoch-[0-9][0-9][0-9][0-9].json"))
        for stale in records[: -self.keep_epochs]:
            for path in self.run_dir.glob(f"{stale.stem}-*.safetensors"):
                path.unlink(missing_ok=True)
            stale.unlink(missing_ok=True)

    # --- outputs ----------------------------------------------------------------------

    @torch.no_grad()
    def write_overlays(self, count: int, directory: str | Path | None = None) -> list[Path]:
        """Save prediction overlays of the first ``count`` validation samples.

        Segmentation only; uses the model as it is now (after the last epoch).

        Args:
            count: How many samples.
            directory: Destination (default ``run_dir/overlays``).
        """
        if self.task != "segmentation" or not self.ctx.is_main or count <= 0:
            return []
        dataset = self.val_set if self.val_set is not None and len(self.val_set) else self.train_set
        self.prepare_folder()
        directory = Path(directory) if directory is not None else self.run_dir / "overlays"
        model = unwrap_model(self.model)
        was_training = model.training
        model.eval()
        written = []
        dataset_train_flag = dataset.train
        dataset.train = False
        try:
            for position in range(min(count, len(dataset))):
                item = dataset[position]
                with autocast(self.device, self.bf16):
                    logits = model(item["image"][None].to(self.device))
                prediction = logits.float().argmax(1)[0].cpu().numpy()
                target = item["target"].numpy()
                image = item["image"].numpy()
                if prediction.shape != target.shape:  # valid-padding output: crop inputs
                    target = crop_to_output(item["target"], prediction.shape).numpy()
                    image = crop_to_output(item["image"], prediction.shape).numpy()
                name = dataset.data.names[dataset.indices[position]].replace("/", "_")
                written.append(
                    save_overlay_panel(
                        directory / f"{name}.png",
                        image,
                        prediction,
                        len(self.class_names),
                        target=np.where(target < 0, 0, target),
                        class_names=self.class_names,
                    )
                )
        finally:
            dataset.train = dataset_train_flag
            model.train(was_training)
        return written
