"""Tests for concatnets.training.checkpoint."""

from __future__ import annotations

import errno
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from concatnets.training import checkpoint as checkpoint_module
from concatnets.training.checkpoint import (
    Checkpoint,
    CheckpointError,
    check_compatible,
    load_checkpoint,
    load_model_weights,
    save_checkpoint,
)


def _tiny_model(width: int = 3) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, width), nn.BatchNorm1d(width), nn.Linear(width, 2))


def _save(directory: Path, name: str = "last", **overrides: Any) -> Path:
    arguments: dict[str, Any] = {
        "model_state": _tiny_model().state_dict(),
        "metadata": {"architecture": "tiny", "epoch": 1, "step": 10},
    }
    arguments.update(overrides)
    return save_checkpoint(directory, name, **arguments)


def _weights_files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.glob("*.safetensors"))


def _all_files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def _assert_same_tensors(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]):
    assert actual.keys() == expected.keys()
    for key, value in expected.items():
        assert actual[key].dtype == value.dtype, key
        assert torch.equal(actual[key], value), key


def test_round_trip_of_tensors_metadata_and_awkward_layouts(tmp_path: Path) -> None:
    base = torch.arange(12.0).reshape(3, 4)
    model_state = {
        "transposed": base.t(),  # non-contiguous
        "tied_a": base,
        "tied_b": base,  # shares storage with tied_a
        "slice": base[1],  # a view into a bigger storage
        "scalar": torch.tensor(3, dtype=torch.int64),
        "mask": torch.tensor([True, False]),
        "half": torch.ones(2, dtype=torch.bfloat16),
    }
    metadata = {
        "architecture": "tiny",
        "config": {"layers": (1, 2), "paths": [Path("a/b")], 3: "int key", "__x": 1},
        "best_metric": float("inf"),
        "data_position": {"epoch": 2, "batch": 7},
    }
    extra = {"rng.torch.cpu": torch.get_rng_state()}
    json_path = save_checkpoint(
        tmp_path, "last", model_state=model_state, extra_tensors=extra, metadata=metadata
    )

    assert json_path == tmp_path / "last.json"
    record = json.loads(json_path.read_text())
    assert record["format_version"] == 1
    assert len(record["weights_sha256"]) == 64
    assert record["weights_file"] == f"last-{record['weights_sha256'][:16]}.safetensors"
    assert record["metadata"]["architecture"] == "tiny"

    loaded = load_checkpoint(json_path)
    _assert_same_tensors(loaded.model_state, {k: v.contiguous() for k, v in model_state.items()})
    assert list(loaded.model_state) == list(model_state)  # order survives
    _assert_same_tensors(loaded.extra_tensors, extra)
    assert loaded.metadata == {
        **metadata,
        "config": {"layers": (1, 2), "paths": ["a/b"], 3: "int key", "__x": 1},
    }
    assert loaded.optimizer_state is None and loaded.scheduler_state is None
    assert loaded.path == json_path


def test_load_accepts_json_stem_weights_file_and_run_folder(tmp_path: Path) -> None:
    json_path = _save(tmp_path)
    _save(tmp_path, "best")
    weights = tmp_path / json.loads(json_path.read_text())["weights_file"]
    for spelling in (json_path, tmp_path / "last", str(tmp_path / "last"), weights, tmp_path):
        assert load_checkpoint(spelling).path == json_path
    assert load_checkpoint(tmp_path / "best").path == tmp_path / "best.json"


def test_metadata_refuses_tensors_and_unknown_objects(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match=r"metadata.loss is a tensor.*extra_tensors"):
        _save(tmp_path, metadata={"loss": torch.tensor(1.0)})
    with pytest.raises(TypeError, match=r"metadata.fn is a function"):
        _save(tmp_path, metadata={"fn": lambda: None})
    assert _all_files(tmp_path) == []


@pytest.mark.parametrize("name", ["", ".hidden", "a/b", "a\\b", " last"])
def test_invalid_names_are_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(ValueError, match=r"checkpoint name"):
        _save(tmp_path, name)


def test_saving_again_replaces_the_pair_and_removes_old_weights(tmp_path: Path) -> None:
    _save(tmp_path, metadata={"step": 1})
    first_weights = _weights_files(tmp_path)
    changed = {k: v + 1 for k, v in _tiny_model().state_dict().items()}
    _save(tmp_path, model_state=changed, metadata={"step": 2})
    assert len(_weights_files(tmp_path)) == 1
    assert _weights_files(tmp_path) != first_weights
    assert _all_files(tmp_path) == sorted(["last.json", *_weights_files(tmp_path)])
    loaded = load_checkpoint(tmp_path)
    assert loaded.metadata == {"step": 2}
    _assert_same_tensors(loaded.model_state, changed)


def test_identical_resave_keeps_the_weights_file(tmp_path: Path) -> None:
    _save(tmp_path, metadata={"step": 1})
    _save(tmp_path, metadata={"step": 2})  # same tensors, same content-addressed file
    assert len(_weights_files(tmp_path)) == 1
    assert load_checkpoint(tmp_path).metadata == {"step": 2}


def _fail_on_write(monkeypatch: pytest.MonkeyPatch, failing_call: int, error: BaseException):
    calls = {"count": 0}
    original = checkpoint_module._write_bytes

    def write(handle: Any, data: bytes) -> None:
        calls["count"] += 1
        if calls["count"] == failing_call:
            handle.write(data[: len(data) // 2])  # a half-written temporary file
            raise error
        original(handle, data)

    monkeypatch.setattr(checkpoint_module, "_write_bytes", write)


@pytest.mark.parametrize("failing_call", [1, 2], ids=["weights", "json"])
def test_full_disk_leaves_previous_checkpoint_intact(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing_call: int
) -> None:
    _save(tmp_path, metadata={"step": 1})
    before = _all_files(tmp_path)
    _fail_on_write(monkeypatch, failing_call, OSError(errno.ENOSPC, "No space left on device"))
    changed = {k: v + 1 for k, v in _tiny_model().state_dict().items()}

    with pytest.raises(OSError, match=r"no space left on device while saving") as caught:
        _save(tmp_path, model_state=changed, metadata={"step": 2})

    message = str(caught.value)
    assert caught.value.errno == errno.ENOSPC
    assert str(tmp_path / "last.json") in message
    assert "free space or choose --output elsewhere" in message
    assert "the previous checkpoint" in message and "is intact" in message
    assert _all_files(tmp_path) == before  # no temporary or half-committed files remain
    loaded = load_checkpoint(tmp_path)
    assert loaded.metadata == {"step": 1}
    _assert_same_tensors(loaded.model_state, _tiny_model().state_dict())


def test_full_disk_on_first_save_says_nothing_existed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fail_on_write(monkeypatch, 1, OSError(errno.ENOSPC, "No space left on device"))
    with pytest.raises(OSError, match=r"no previous checkpoint .* existed"):
        _save(tmp_path)
    assert _all_files(tmp_path) == []


def test_crash_between_weights_and_json_keeps_old_pair_and_next_save_cleans_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _save(tmp_path, metadata={"step": 1})
    crashed_weights = {k: v * 2 for k, v in _tiny_model().state_dict().items()}
    # Simulate the process dying right after the new weights file was committed.
    original_write = checkpoint_module._write_atomically

    def die_before_json(path: Path, data: bytes) -> None:
        if path.suffix == ".json":
            raise KeyboardInterrupt
        original_write(path, data)

    monkeypatch.setattr(checkpoint_module, "_write_atomically", die_before_json)
    monkeypatch.setattr(checkpoint_module, "_remove_quietly", lambda path: None)  # hard crash
    with pytest.raises(KeyboardInterrupt):
        _save(tmp_path, model_state=crashed_weights, metadata={"step": 2})
    monkeypatch.undo()

    assert len(_weights_files(tmp_path)) == 2  # the orphan is there
    assert load_checkpoint(tmp_path).metadata == {"step": 1}
    (tmp_path / ".last.json.abc.tmp").write_text("stale temporary")
    (tmp_path / "lastly.json").write_text("{}")  # another name must not be touched

    _save(tmp_path, metadata={"step": 3})
    assert _all_files(tmp_path) == sorted(["last.json", "lastly.json", *_weights_files(tmp_path)])
    assert len(_weights_files(tmp_path)) == 1
    assert load_checkpoint(tmp_path).metadata == {"step": 3}


def test_truncated_weights_name_the_file_and_the_alternative(tmp_path: Path) -> None:
    json_path = _save(tmp_path)
    _save(tmp_path, "best")
    weights = tmp_path / json.loads(json_path.read_text())["weights_file"]
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(tmp_path)
    message = str(caught.value)
    assert str(weights) in message and "truncated" in message
    assert "other checkpoints in" in message and "best.json" in message


def test_flipped_byte_fails_the_hash(tmp_path: Path) -> None:
    json_path = _save(tmp_path)
    weights = tmp_path / json.loads(json_path.read_text())["weights_file"]
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"corrupt .SHA-256 differs.*no other checkpoint"):
        load_checkpoint(json_path)


def test_truncated_json_and_missing_weights_are_clear(tmp_path: Path) -> None:
    json_path = _save(tmp_path)
    text = json_path.read_text()
    json_path.write_text(text[: len(text) // 2])
    with pytest.raises(CheckpointError, match=r"last.json cannot be used: it is truncated"):
        load_checkpoint(json_path)

    json_path.write_text(text)
    for weights in tmp_path.glob("*.safetensors"):
        weights.unlink()
    with pytest.raises(CheckpointError, match=r"weights file last-.* it names is missing"):
        load_checkpoint(json_path)


def test_missing_checkpoint_and_newer_format_are_clear(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"has no last.json"):
        load_checkpoint(tmp_path)
    with pytest.raises(CheckpointError, match=r"best.json does not exist"):
        load_checkpoint(tmp_path / "best")
    json_path = _save(tmp_path)
    record = json.loads(json_path.read_text())
    record["format_version"] = 99
    json_path.write_text(json.dumps(record))
    with pytest.raises(CheckpointError, match=r"format version 99.*upgrade concatnets"):
        load_checkpoint(json_path)
    record.update(format_version=1, weights_file="../elsewhere.safetensors")
    json_path.write_text(json.dumps(record))
    with pytest.raises(CheckpointError, match=r"'weights_file' is not a plain file name"):
        load_checkpoint(json_path)


def test_check_compatible_reports_every_problem_in_one_message(tmp_path: Path) -> None:
    _save(tmp_path)
    loaded = load_checkpoint(tmp_path)
    check_compatible(loaded, _tiny_model(), "tiny")  # fits: no error

    other = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 2), nn.Linear(2, 2))
    with pytest.raises(CheckpointError) as caught:
        check_compatible(loaded, other, "bigger")
    message = str(caught.value)
    assert "\n" not in message
    assert "saved from 'tiny'" in message
    assert "missing keys: 3.weight, 3.bias" in message
    assert "5 unexpected keys: 1.weight, 1.bias, 1.running_mean" in message
    assert "0.weight (3, 4) in checkpoint vs (5, 4) in model" in message
    assert "build the model with the checkpoint's architecture" in message


def _train_steps(
    model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any, steps: range
) -> None:
    for step in steps:
        generator = torch.Generator().manual_seed(100 + step)
        inputs = torch.randn(8, 4, generator=generator)
        targets = torch.randn(8, 2, generator=generator)
        optimizer.zero_grad()
        nn.functional.mse_loss(model(inputs), targets).backward()
        optimizer.step()
        scheduler.step()


def _optimizer_for(kind: str, model: nn.Module) -> tuple[torch.optim.Optimizer, Any]:
    if kind == "adamw":
        optimizer: torch.optim.Optimizer = torch.optim.AdamW(
            model.parameters(), lr=1e-2, betas=(0.8, 0.95), weight_decay=0.1
        )
        scheduler: Any = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=0.05, total_steps=8)
    else:
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True)
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=2, gamma=0.5)
    return optimizer, scheduler


@pytest.mark.parametrize("kind", ["adamw", "sgd"])
def test_resume_is_bit_identical_to_uninterrupted_training(tmp_path: Path, kind: str) -> None:
    reference = _tiny_model()
    reference_optimizer, reference_scheduler = _optimizer_for(kind, reference)
    _train_steps(reference, reference_optimizer, reference_scheduler, range(6))

    interrupted = _tiny_model()
    optimizer, scheduler = _optimizer_for(kind, interrupted)
    _train_steps(interrupted, optimizer, scheduler, range(3))
    save_checkpoint(
        tmp_path,
        "last",
        model_state=interrupted.state_dict(),
        optimizer_state=optimizer.state_dict(),
        scheduler_state=scheduler.state_dict(),
        metadata={"architecture": "tiny", "step": 3},
    )
    saved_optimizer_state = optimizer.state_dict()
    del interrupted, optimizer, scheduler

    loaded = load_checkpoint(tmp_path)
    resumed = _tiny_model()
    resumed.load_state_dict(loaded.model_state)
    optimizer, scheduler = _optimizer_for(kind, resumed)
    optimizer.load_state_dict(loaded.optimizer_state)
    scheduler.load_state_dict(loaded.scheduler_state)
    assert loaded.optimizer_state["param_groups"] == saved_optimizer_state["param_groups"]
    _train_steps(resumed, optimizer, scheduler, range(3, 6))

    _assert_same_tensors(resumed.state_dict(), reference.state_dict())
    for key, value in reference_optimizer.state_dict()["state"].items():
        _assert_same_tensors(optimizer.state_dict()["state"][key], value)
    assert scheduler.state_dict() == reference_scheduler.state_dict()


def test_plateau_scheduler_with_infinite_best_round_trips(tmp_path: Path) -> None:
    model = _tiny_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer)
    state = scheduler.state_dict()
    assert state["best"] == float("inf")
    _save(tmp_path, optimizer_state=optimizer.state_dict(), scheduler_state=state)
    assert load_checkpoint(tmp_path).scheduler_state == state


def test_load_model_weights_from_our_checkpoint_and_plain_safetensors(tmp_path: Path) -> None:
    expected = _tiny_model().state_dict()
    json_path = _save(tmp_path / "run")
    _assert_same_tensors(load_model_weights(json_path), expected)
    _assert_same_tensors(load_model_weights(tmp_path / "run"), expected)
    weights = tmp_path / "run" / json.loads(json_path.read_text())["weights_file"]
    _assert_same_tensors(load_model_weights(weights), expected)

    plain = tmp_path / "plain.safetensors"
    save_file({f"module.{k}": v for k, v in expected.items()}, str(plain))
    _assert_same_tensors(load_model_weights(plain), expected)
    plain.write_bytes(plain.read_bytes()[:50])
    with pytest.raises(CheckpointError, match=r"plain.safetensors is truncated or corrupt"):
        load_model_weights(plain)


@pytest.mark.parametrize(
    "wrap",
    [
        lambda state: state,
        lambda state: {"state_dict": state, "epoch": 3},
        lambda state: {"model": {f"module.{k}": v for k, v in state.items()}},
        lambda state: {"model_state_dict": state, "optimizer": {"lr": 0.1}},
    ],
    ids=["bare", "state_dict", "model+ddp", "model_state_dict"],
)
def test_load_model_weights_unwraps_foreign_pth(tmp_path: Path, wrap: Any) -> None:
    expected = _tiny_model().state_dict()
    path = tmp_path / "foreign.pth"
    torch.save(wrap(expected), path)
    _assert_same_tensors(load_model_weights(path), expected)


class _Exploit:
    """Unpickling this would create a file: proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (Path.touch, (str(self.marker),))  # type: ignore[return-value]


def test_load_model_weights_refuses_pickled_code(tmp_path: Path) -> None:
    marker = tmp_path / "code-ran"
    path = tmp_path / "exploit.pt"
    torch.save({"state_dict": {"w": torch.ones(1)}, "payload": _Exploit(marker)}, path)
    with pytest.raises(CheckpointError, match=r"\(Unsupported global.*pickle code execution"):
        load_model_weights(path)
    assert not marker.exists()


def test_load_model_weights_rejects_garbage_and_non_state_dicts(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a torch file at all")
    with pytest.raises(CheckpointError, match=r"garbage.pth is truncated, corrupt"):
        load_model_weights(garbage)
    config_only = tmp_path / "config.pt"
    torch.save({"epoch": 3, "lr": 0.1}, config_only)
    with pytest.raises(CheckpointError, match=r"keys epoch, lr, not a state dict of tensors"):
        load_model_weights(config_only)
    with pytest.raises(CheckpointError, match=r"does not exist"):
        load_model_weights(tmp_path / "absent.pth")


def test_checkpoint_dataclass_fields() -> None:
    empty = Checkpoint({}, None, None, {}, {})
    assert empty.model_state == {} and empty.metadata == {}
