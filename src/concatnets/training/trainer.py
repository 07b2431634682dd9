"""The training loop, with every piece of state it needs to resume exactly.

The state a run carries from epoch to epoch is explicit (:class:`TrainerState`: epochs
done, global step, best metric and its epoch, the metric history), and every random
choice is either drawn from a stream seeded by ``(seed, epoch, index)`` (data order,
augmentation) or from the global generators, whose states are saved with each
checkpoint. Resuming from ``last`` therefore replays the remaining epochs as an
uninterrupted run would.

Each epoch writes ``last`` (and ``best`` on improvement, and optionally ``epoch-NNNN``)
through :func:`~concatnets.training.checkpoint.save_checkpoint`.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler
from torch.utils.data import DataLoader, Sampler
from tqdm import tqdm

from concatnets.data.datasets import LabelledDataset
from concatnets.data.notices import notice
from concatnets.training.checkpoint import Checkpoint, save_checkpoint
from concatnets.training.distributed import (
    DistributedContext,
    all_reduce_mean,
    barrier,
    make_sampler,
    unwrap_model,
)
from concatnets.training.evaluation import autocast, evaluate_model, to_device
from concatnets.training.logging import MetricsLogger
from concatnets.training.losses import LossFn, crop_to_output
from concatnets.training.memory import format_bytes, peak_memory_bytes, reset_peak_memory
from concatnets.training.metrics import MetricAccumulator, primary_metric
from concatnets.training.plots import plot_learning_curves, save_overlay_panel
from concatnets.training.rng import capture_rng_state, restore_rng_state

__all__ = ["EpochSampler", "Trainer", "TrainerState", "TrainingDivergedError"]

_RNG_PREFIX = "rng."


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
    """

    epoch: int = 0
    global_step: int = 0
    best_metric: float | None = None
    best_epoch: int | None = None
    history: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """The state as a JSON-friendly dict."""
        return asdict(self)

    @classmethod
    def from_json(cls, values: dict[str, Any]) -> TrainerState:
        """Rebuild a state saved by :meth:`to_json`."""
        return cls(
            epoch=int(values["epoch"]),
            global_step=int(values["global_step"]),
            best_metric=values.get("best_metric"),
            best_epoch=values.get("best_epoch"),
            history=[dict(r) for r in values.get("history", [])],
        )


class EpochSampler(Sampler[int]):
    """A shuffled order that depends only on ``(seed, epoch)``, not on the global RNG.

    Args:
        length: Dataset length.
        seed: Base seed.
        shuffle: Shuffle (``False`` keeps ``0..length-1``).
    """

    def __init__(self, length: int, seed: int, shuffle: bool = True) -> None:
        self.length = length
        self.seed = seed
        self.shuffle = shuffle
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the order of ``epoch``."""
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        if not self.shuffle:
            return iter(range(self.length))
        rng = np.random.default_rng([self.seed, self.epoch, 0x5A17])
        return iter(rng.permutation(self.length).tolist())

    def __len__(self) -> int:
        return self.length


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
        self.logger = MetricsLogger(self.run_dir) if ctx.is_main else None

        self.train_sampler: Any = make_sampler(train_set, ctx, shuffle=True, seed=seed)
        if self.train_sampler is None:
            self.train_sampler = EpochSampler(len(train_set), seed)
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
            **loader_options,
        )
        self.val_loader = None
        if val_set is not None and len(val_set):
            val_sampler = make_sampler(val_set, ctx, shuffle=False, seed=seed)
            self.val_loader = DataLoader(
                val_set, batch_size=batch_size, sampler=val_sampler, **loader_options
            )

    # --- state ------------------------------------------------------------------------

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
            "data_order": {"seed": self.seed, "next_epoch": self.state.epoch + 1},
            "trainer": self.state.to_json(),
        }

    def save(self, name: str, record: dict[str, Any] | None = None) -> Path:
        """Save checkpoint ``name`` (model, optimizer, scheduler, RNG, state) in the run folder."""
        rng = {f"{_RNG_PREFIX}{k}": v for k, v in capture_rng_state().items()}
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
        rng = {
            k[len(_RNG_PREFIX) :]: v
            for k, v in checkpoint.extra_tensors.items()
            if k.startswith(_RNG_PREFIX)
        }
        if rng:
            restore_rng_state(rng)
        if self.logger is not None:
            self.logger.history = [dict(r) for r in self.state.history]

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
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "step() before optimizer.step()"
            for _ in range(self.state.epoch):
                self.scheduler.step()

    # --- loop -------------------------------------------------------------------------

    def fit(self, epochs: int) -> TrainerState:
        """Train until ``epochs`` epochs are complete (continuing after a restore).

        Args:
            epochs: Total epochs of the run, counting those already done.
        """
        try:
            for epoch in range(self.state.epoch + 1, epochs + 1):
                self.run_epoch(epoch, epochs)
        except KeyboardInterrupt:
            if self.ctx.is_main and self.state.epoch:
                notice(
                    f"interrupted; epoch {self.state.epoch} is saved in {self.run_dir}; "
                    f"continue with --resume {self.run_dir}"
                )
            raise
        finally:
            if self.logger is not None:
                self.logger.close()
        return self.state

    def run_epoch(self, epoch: int, epochs: int) -> dict[str, Any]:
        """Train one epoch, validate, log and checkpoint; return the epoch's record."""
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
        record["images_per_s"] = round(images * self.ctx.world_size / max(elapsed, 1e-9), 2)
        record["peak_memory_mb"] = round(peak_memory_bytes(self.device) / 2**20, 1)
        self.scheduler.step()
        self._finish_epoch(epoch, epochs, record)
        return record

    def _train_one_epoch(self, epoch: int, epochs: int) -> tuple[dict[str, float], float, int]:
        self.train_set.set_epoch(epoch)
        self.train_sampler.set_epoch(epoch)
        self.model.train()
        reset_peak_memory(self.device)
        accumulator = MetricAccumulator(self.task, self.class_names, self.device)
        loss_sum, images = 0.0, 0
        started = time.perf_counter()
        bar = tqdm(
            self.train_loader,
            desc=f"epoch {epoch}/{epochs}",
            leave=False,
            disable=not self.progress,
            dynamic_ncols=True,
        )
        for batch in bar:
            batch = to_device(batch, self.device)
            with autocast(self.device, self.bf16):
                logits = self.model(batch["image"])
            loss = self.loss_fn(logits.float(), batch)
            if not torch.isfinite(loss):
                raise TrainingDivergedError(
                    f"loss became {loss.item()} at epoch {epoch}, step "
                    f"{self.state.global_step + 1}; lower --lr (now "
                    f"{self.optimizer.param_groups[0]['lr']:g})"
                    + (" or drop --bf16" if self.bf16 else "")
                    + (
                        f"; the last good epoch is saved in {self.run_dir}"
                        if self.state.epoch
                        else ""
                    )
                )
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            self.state.global_step += 1
            count = batch["image"].shape[0]
            loss_sum += float(loss.detach()) * count
            images += count
            accumulator.update(logits.detach().float(), batch["target"])
            if self.progress:
                speed = images / max(time.perf_counter() - started, 1e-9)
                bar.set_postfix_str(
                    f"loss {loss_sum / images:.4f} "
                    f"{self.monitor} {accumulator.compute()[self.monitor]:.3f} "
                    f"{speed:.1f} img/s peak {format_bytes(peak_memory_bytes(self.device))}",
                    refresh=False,
                )
        bar.close()
        if images == 0:
            raise ValueError(
                "the training split is empty for this batch size; lower --batch-size or "
                "--val-fraction, or add images"
            )
        mean_loss = all_reduce_mean(loss_sum / images, self.ctx)
        return accumulator.compute(), mean_loss, images

    def _finish_epoch(self, epoch: int, epochs: int, record: dict[str, Any]) -> None:
        split = "val" if self.val_loader is not None else "train"
        current = record.get(f"{split}_{self.monitor}")
        improved = (
            isinstance(current, float)
            and math.isfinite(current)
            and (self.state.best_metric is None or current > self.state.best_metric)
        )
        self.state.epoch = epoch
        self.state.history.append(record)
        if improved:
            self.state.best_metric = current
            self.state.best_epoch = epoch
        if self.ctx.is_main:
            self.save("last", record)
            if improved:
                self.save("best", record)
            if self.keep_epochs > 0:
                self.save(f"epoch-{epoch:04d}", record)
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
                f"  |  {record['images_per_s']:.1f} img/s, peak "
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
                    )
                )
        finally:
            dataset.train = dataset_train_flag
            model.train(was_training)
        return written
