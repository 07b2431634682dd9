"""Every bad input and fault of `concatnets train`, one named test each.

Each test checks the three promises: the command fails with exit status 2 (1 for a
diverged loss) and one ``error:`` line that names the thing and the fix, there is no
traceback, and nothing already written is lost (run folders are compared byte for byte).

Fault -> test:

- missing data folder -> test_fault_missing_data_folder
- empty data folders -> test_fault_empty_data_folder
- an image with no mask -> test_fault_image_without_mask
- unreadable or corrupt image file -> test_fault_unreadable_or_corrupt_image
- corrupt image met mid-training ->
  test_fault_corrupt_image_during_training_keeps_the_last_checkpoint
- mask values >= num_classes -> test_fault_mask_values_beyond_num_classes
- mixed image sizes, no size policy -> test_fault_mixed_sizes_without_size_policy
- a channel count the model does not take -> test_fault_channel_count_the_model_does_not_take
- a checkpoint of another architecture -> test_fault_checkpoint_of_another_architecture
- a truncated checkpoint -> test_fault_truncated_checkpoint
- a foreign .pth needing pickle code -> test_fault_foreign_pth_needing_code_is_refused
- NaN/inf loss -> test_fault_nan_loss_stops_and_keeps_last_good_checkpoint
- full disk while saving -> test_fault_full_disk_while_saving_keeps_previous_checkpoint
- output folder holding another run -> test_fault_output_folder_holds_another_run
- --resume of a run killed before its first save -> test_fault_resume_of_a_run_without_checkpoint
- a run folder in use by another process -> test_fault_run_folder_in_use_by_another_process
- a mask of the wrong size, a NaN image -> test_fault_sample_checks_run_before_anything_is_written
- settings out of range (--lr inf/nan, --keep-epochs -1, --image-size 0, ...) ->
  test_fault_settings_out_of_range_leave_the_run_untouched
- optimizer state of the wrong shapes ->
  test_fault_optimizer_state_that_does_not_fit_is_refused_before_a_step
- integer model tensors -> test_fault_integer_model_tensors_in_a_checkpoint_are_refused
- unknown --model-arg key -> test_fault_unknown_model_arg_names_the_valid_keys
- YAML alias bomb -> test_fault_yaml_alias_bomb_is_refused_quickly
- last.json nested 100,000 deep or with list metadata ->
  test_fault_tampered_last_json_structure_is_one_error_line
- --resume after the data changed (notice) -> test_fault_resume_after_the_data_changed_says_so
- --mask-values leaving empty classes -> test_fault_mask_values_leaving_empty_classes_are_refused
- pickled weights (blocked GLOBAL, raw pickle) ->
  test_fault_pickled_weights_are_named_for_what_they_are
- --resume of a missing folder -> test_fault_resume_of_a_missing_folder_says_it_does_not_exist
- temporary files of a killed write -> test_fault_temporary_files_of_a_killed_write_are_cleaned
- run files 0600 under umask 022 -> test_fault_run_files_follow_the_umask
- resume numbers out of range (epoch 10**9, -5, ...) ->
  test_fault_resume_numbers_out_of_range_are_refused_at_once
- kill -9 writing best after last was committed ->
  test_fault_killed_writing_best_after_last_committed_is_repaired_on_resume

Ctrl-C, SIGKILL and exact resume: tests/training/test_train_interrupt_resume.py and
tests/cli/test_train_sigkill.py; torchrun: tests/cli/test_train_torchrun.py.
"""

from __future__ import annotations

import errno
import json
import os
import pickle
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from concatnets.cli.main import main
from concatnets.models import create_model
from concatnets.training import checkpoint as checkpoint_module
from concatnets.training.checkpoint import load_checkpoint

UNET = ["--model", "unet_small", "--model-arg", "features=4", "--model-arg", "depth=2"]
FAST = ["--epochs", "1", "--batch-size", "2", "--no-progress", "--device", "cpu"]
FAST += ["--overlays", "0", "--augment", "none"]


def _write_folder(
    root: Path,
    count: int = 4,
    *,
    sizes: list[tuple[int, int]] | None = None,
    classes: int = 2,
    rgb: bool = False,
    suffix: str = ".png",
) -> Path:
    """A segmentation folder: images/ and masks/ holding class-index masks."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    for index in range(count):
        height, width = sizes[index] if sizes else (16, 16)
        mask = np.zeros((height, width), np.uint8)
        for value in range(1, classes):
            mask[value * 2 : value * 2 + 4, 2:10] = value
        shape = (height, width, 3) if rgb else (height, width)
        image = rng.integers(0, 80, size=shape, dtype=np.uint8)
        image[mask > 0] += 120
        Image.fromarray(image).save(root / "images" / f"s{index}{suffix}")
        Image.fromarray(mask).save(root / "masks" / f"s{index}.png")
    return root


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {
        str(path.relative_to(folder)): path.read_bytes()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def _fails(args: list[str], capsys: pytest.CaptureFixture[str], code: int = 2) -> str:
    """Run the CLI, expect ``code`` and one error line; return that line."""
    assert main(args) == code
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, err
    return errors[0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A one-epoch run on a grayscale PNG folder: (data folder, run folder)."""
    root = tmp_path_factory.mktemp("trained")
    data = _write_folder(root / "data", 6)
    run = root / "run"
    assert main(["train", *UNET, "--data", str(data), *FAST, "--output", str(run)]) == 0
    return data, run


@pytest.fixture
def run_copy(trained: tuple[Path, Path], tmp_path: Path) -> tuple[Path, Path]:
    """A private copy of the trained run (tests may damage it)."""
    data, run = trained
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    return data, copy


def test_fault_missing_data_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    line = _fails(
        ["train", *UNET, "--data", str(tmp_path / "nope"), *FAST, "--output", str(out)], capsys
    )
    assert f"data folder {tmp_path / 'nope'} does not exist" in line
    assert "DIR/images/" in line  # the layout to create
    assert not out.exists()


@pytest.mark.parametrize("layout", ["empty", "empty_subfolders"])
def test_fault_empty_data_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], layout: str
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    if layout == "empty_subfolders":
        (data / "images").mkdir()
        (data / "masks").mkdir()
    out = tmp_path / "out"
    line = _fails(["train", *UNET, "--data", str(data), *FAST, "--output", str(out)], capsys)
    expected = "no labelled images found" if layout == "empty" else "holds no images"
    assert expected in line and str(data) in line
    assert not out.exists()


def test_fault_image_without_mask(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = _write_folder(tmp_path / "data", 3)
    (data / "masks" / "s1.png").unlink()
    line = _fails(
        ["train", *UNET, "--data", str(data), *FAST, "--output", str(tmp_path / "o")], capsys
    )
    assert "1 image(s)" in line and "have no mask" in line
    assert "s1.png" in line and "masks/s1.png" in line  # which file, and what to name its mask
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty"])
def test_fault_unreadable_or_corrupt_image(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], damage: str
) -> None:
    data = _write_folder(tmp_path / "data", 3)
    broken = data / "images" / "s2.png"
    content = broken.read_bytes()
    broken.write_bytes(
        {"garbage": b"not an image", "truncated": content[: len(content) // 2], "empty": b""}[
            damage
        ]
    )
    line = _fails(
        ["train", *UNET, "--data", str(data), *FAST, "--output", str(tmp_path / "o")], capsys
    )
    assert f"{broken}: cannot read this file" in line
    assert "replace it or move it out of the data folder" in line
    assert not (tmp_path / "o").exists()


def test_fault_corrupt_image_during_training_keeps_the_last_checkpoint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A truncated JPEG passes the header check and fails only when decoded mid-training.
    data = _write_folder(tmp_path / "data", 4, suffix=".jpg")
    run = tmp_path / "run"
    assert main(["train", *UNET, "--data", str(data), *FAST, "--output", str(run)]) == 0
    broken = data / "images" / "s1.jpg"
    broken.write_bytes(broken.read_bytes()[:-200])
    before = _snapshot(run)
    capsys.readouterr()
    line = _fails(["train", "--resume", str(run), "--epochs", "2"], capsys)
    assert f"{broken}: cannot read this file" in line and "truncated" in line
    assert _snapshot(run) == before  # config.json waits for the session's first save
    assert load_checkpoint(run).metadata["epoch"] == 1


def test_fault_mask_values_beyond_num_classes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = _write_folder(tmp_path / "data", 3, classes=3)  # mask values 0, 1, 2
    out = tmp_path / "o"
    args = ["train", *UNET, "--model-arg", "num_classes=2", "--data", str(data), *FAST]
    line = _fails([*args, "--output", str(out)], capsys)
    assert "num_classes=2" in line and "hold 3 classes" in line
    assert "--mask-values" in line and "remove num_classes" in line
    # An explicit value map that misses a stored value is refused too.
    args = ["train", *UNET, "--data", str(data), *FAST, "--mask-values", "0:0,1:1"]
    line = _fails([*args, "--output", str(out)], capsys)
    assert "value(s) [2] missing from --mask-values 0:0,1:1" in line
    assert not out.exists()


def test_fault_mixed_sizes_without_size_policy(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = _write_folder(tmp_path / "data", 3, sizes=[(16, 16), (24, 20), (16, 16)])
    line = _fails(
        ["train", *UNET, "--data", str(data), *FAST, "--output", str(tmp_path / "o")], capsys
    )
    assert "2 different sizes" in line and "16x16 (2), 20x24 (1)" in line
    assert "--size-policy resize|pad|crop" in line
    assert not (tmp_path / "o").exists()


def test_fault_channel_count_the_model_does_not_take(
    trained: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rgb = _write_folder(tmp_path / "rgb", 3, rgb=True)
    out = tmp_path / "o"
    args = ["train", *UNET, "--model-arg", "in_channels=1", "--data", str(rgb), *FAST]
    line = _fails([*args, "--output", str(out)], capsys)
    assert "in_channels=1" in line and "3 channel(s)" in line and "remove in_channels" in line
    # Weights of a grayscale model do not fit a model for the RGB images.
    _, gray_run = trained
    args = ["train", *UNET, "--data", str(rgb), *FAST, "--init-weights", str(gray_run)]
    line = _fails([*args, "--output", str(out)], capsys)
    assert "does not fit model 'unet_small'" in line
    assert "(4, 1, 3, 3) in checkpoint vs (4, 3, 3, 3) in model" in line
    assert not out.exists()


def test_fault_checkpoint_of_another_architecture(
    run_copy: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data, run = run_copy
    before = _snapshot(run)
    line = _fails(["train", "--resume", str(run), "--model-arg", "features=8"], capsys)
    assert f"checkpoint {run / 'last.json'} does not fit model 'unet_small'" in line
    assert "shape mismatches" in line and "build the model with the checkpoint's" in line
    assert _snapshot(run) == before  # not even config.json was touched
    # Weights of another architecture as a starting point.
    densenet = tmp_path / "densenet.safetensors"
    model = create_model("densenet_bc", depth=10, growth_rate=4, in_channels=1, num_classes=2)
    save_file(model.state_dict(), str(densenet))
    out = tmp_path / "o"
    args = ["train", *UNET, "--data", str(data), *FAST, "--init-weights", str(densenet)]
    line = _fails([*args, "--output", str(out)], capsys)
    assert "does not fit model 'unet_small'" in line and "missing keys" in line
    assert not out.exists()


def test_fault_truncated_checkpoint(
    run_copy: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    _, run = run_copy
    weights = run / json.loads((run / "last.json").read_text())["weights_file"]
    weights.write_bytes(weights.read_bytes()[:100])
    before = _snapshot(run)
    line = _fails(["train", "--resume", str(run), "--epochs", "2"], capsys)
    assert f"checkpoint file {weights} cannot be used: it is truncated or corrupt" in line
    assert "other checkpoints in" in line and "best.json" in line
    assert _snapshot(run) == before


def test_fault_foreign_pth_needing_code_is_refused(
    trained: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data, _ = trained
    marker = tmp_path / "code-ran"
    exploit = tmp_path / "exploit.pth"
    torch.save({"state_dict": {"w": torch.ones(1)}, "payload": _Exploit(marker)}, exploit)
    out = tmp_path / "o"
    args = ["train", *UNET, "--data", str(data), *FAST, "--init-weights", str(exploit)]
    line = _fails([*args, "--output", str(out)], capsys)
    assert "would need pickle code execution, which concatnets refuses" in line
    assert "safetensors" in line  # how to convert it
    assert not marker.exists() and not out.exists()
    # A plain state dict saved with torch.save is read with weights_only=True and used.
    model = create_model("unet_small", features=4, depth=2, in_channels=1, num_classes=2)
    plain = tmp_path / "plain.pth"
    torch.save({"model": model.state_dict()}, plain)
    args = ["train", *UNET, "--data", str(data), *FAST, "--init-weights", str(plain)]
    assert main([*args, "--output", str(out)]) == 0


class _Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (Path.touch, (str(self.marker),))  # type: ignore[return-value]


def test_fault_nan_loss_stops_and_keeps_last_good_checkpoint(
    run_copy: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    _, run = run_copy
    saved = {k: v for k, v in _snapshot(run).items() if k != "config.json"}
    line = _fails(["train", "--resume", str(run), "--epochs", "3", "--lr", "1e30"], capsys, code=1)
    assert "loss became" in line and "at epoch 2, step" in line
    assert f"the last good checkpoint {run / 'last.json'} (epoch 1) is kept" in line
    assert "lower --lr (now 7.5e+29)" in line  # the resumed run took the new --lr
    after = _snapshot(run)
    assert {k: after[k] for k in saved} == saved  # checkpoints and metrics untouched
    assert load_checkpoint(run).metadata["epoch"] == 1
    # The checkpoint's own settings win over the failed start's config.json.
    assert main(["train", "--resume", str(run), "--epochs", "2"]) == 0
    assert load_checkpoint(run).metadata["config"]["lr"] == 1e-3


def test_fault_full_disk_while_saving_keeps_previous_checkpoint(
    run_copy: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _, run = run_copy
    checkpoint_files = {
        k: v for k, v in _snapshot(run).items() if k.startswith(("last", "best", "metrics"))
    }
    real_write_atomically = checkpoint_module._write_atomically
    real_write_bytes = checkpoint_module._write_bytes

    def half_then_full(handle: Any, data: bytes) -> None:
        handle.write(data[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    def disk_full_for_last(path: Path, data: bytes) -> None:
        # The disk fills up while the new weights of `last` are written.
        failing = path.name.startswith("last-")
        writer = half_then_full if failing else real_write_bytes
        monkeypatch.setattr(checkpoint_module, "_write_bytes", writer)
        real_write_atomically(path, data)

    monkeypatch.setattr(checkpoint_module, "_write_atomically", disk_full_for_last)
    line = _fails(["train", "--resume", str(run), "--epochs", "2"], capsys)
    assert f"no space left on device while saving checkpoint to {run / 'last.json'}" in line
    assert "free space or choose --output elsewhere" in line
    assert f"the previous checkpoint {run / 'last.json'} is intact" in line
    after = _snapshot(run)
    assert {k: after[k] for k in checkpoint_files} == checkpoint_files
    assert not [name for name in after if name.endswith(".tmp")]
    assert load_checkpoint(run).metadata["epoch"] == 1


def test_fault_output_folder_holds_another_run(
    run_copy: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    data, run = run_copy
    (run / "best_notes.txt").write_text("my notes")
    before = _snapshot(run)
    args = ["train", *UNET, "--data", str(data), *FAST, "--output", str(run)]
    line = _fails(args, capsys)
    assert f"run folder {run} already holds a run" in line
    assert f"--resume {run}" in line and "--overwrite" in line
    assert _snapshot(run) == before
    line = _fails([*args, "--resume", str(run), "--overwrite"], capsys)
    assert "--resume and --overwrite contradict each other" in line
    # Told to overwrite: the old run's files go, unrelated files stay.
    assert main([*args, "--overwrite", "--epochs", "2"]) == 0
    assert (run / "best_notes.txt").read_text() == "my notes"
    history = json.loads((run / "metrics.json").read_text())
    assert [r["epoch"] for r in history] == [1, 2]
    assert len(list(run.glob("last-*.safetensors"))) == 1


def test_fault_resume_of_a_run_without_checkpoint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"model": "unet_small", "epochs": 2}))
    line = _fails(["train", "--resume", str(run)], capsys)
    assert "holds no last.json checkpoint (the run stopped before it saved one)" in line
    assert f"--output {run} --overwrite" in line


_HOLD_LOCK = """
import sys, time
from pathlib import Path
from concatnets.training.run_lock import locked_run_folder
with locked_run_folder(Path(sys.argv[1])):
    print("locked", flush=True)
    time.sleep(60)
"""


def test_fault_run_folder_in_use_by_another_process(
    run_copy: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data, run = run_copy
    before = _snapshot(run)
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD_LOCK, str(run)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        args = ["train", *UNET, "--data", str(data), *FAST, "--output", str(run)]
        line = _fails([*args, "--overwrite"], capsys)
        assert f"run folder {run} is in use by another `concatnets train`" in line
        assert f"(process {holder.pid})" in line
        line = _fails(["train", "--resume", str(run), "--epochs", "2"], capsys)
        assert f"(process {holder.pid})" in line and f"then --resume {run}" in line
        assert {k: v for k, v in _snapshot(run).items() if k != ".concatnets.lock"} == before
    finally:
        holder.kill()
        holder.wait()
    # The dead holder's lock file is left behind; it does not block the next run.
    assert (run / ".concatnets.lock").exists()
    assert main(["train", "--resume", str(run), "--epochs", "2"]) == 0
    assert not (run / ".concatnets.lock").exists()
    # A new --output that is refused for another reason leaves no folder behind.
    capsys.readouterr()
    out = tmp_path / "new" / "run"
    _fails(["train", *UNET, "--data", str(tmp_path / "nope"), *FAST, "--output", str(out)], capsys)
    assert not (tmp_path / "new").exists()


_DIE_WRITING_BEST = """
import os, sys
from concatnets.training import checkpoint
real_write_atomically, real_write_bytes = checkpoint._write_atomically, checkpoint._write_bytes
def half_then_die(handle, data):
    handle.write(data[: len(data) // 2])
    handle.flush()
    os._exit(137)  # what kill -9 leaves: no cleanup of any kind
def die_in_best_json(path, data):
    dies = path.name == "best.json"
    checkpoint._write_bytes = half_then_die if dies else real_write_bytes
    real_write_atomically(path, data)
checkpoint._write_atomically = die_in_best_json
from concatnets.cli.main import main
sys.exit(main(sys.argv[1:]))
"""


def test_fault_killed_writing_best_after_last_committed_is_repaired_on_resume(
    trained: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data, _ = trained
    run = tmp_path / "run"
    args = ["train", *UNET, "--data", str(data), *FAST, "--output", str(run)]
    killed = subprocess.run(
        [sys.executable, "-c", _DIE_WRITING_BEST, *args],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
        timeout=120,
    )
    assert killed.returncode == 137, killed.stderr
    last = load_checkpoint(run)
    assert last.metadata["epoch"] == 1 and last.metadata["best_epoch"] == 1
    assert not (run / "best.json").exists() and not (run / "metrics.csv").exists()
    assert list(run.glob(".best.json.*.tmp")) and list(run.glob("best-*.safetensors"))
    assert main(["train", "--resume", str(run)]) == 0
    err = capsys.readouterr().err
    assert "rewrote best.json, metrics.csv, metrics.json from last.json (epoch 1)" in err
    assert "removed 1 temporary file(s) of interrupted writes" in err
    best = load_checkpoint(run / "best.json")
    assert best.metadata["epoch"] == 1
    for key, value in last.model_state.items():
        assert torch.equal(best.model_state[key], value), key
    assert [r["epoch"] for r in json.loads((run / "metrics.json").read_text())] == [1]
    assert len((run / "metrics.csv").read_text().splitlines()) == 2
    assert not list(run.glob("*.tmp")) and not list(run.glob(".*.tmp"))
    assert len(list(run.glob("best-*.safetensors"))) == 1


def _tamper_metadata(run: Path, change: Any) -> None:
    """Edit the metadata in ``run/last.json`` by hand, as a user or a bad tool might."""
    record = json.loads((run / "last.json").read_text())
    change(record["metadata"])
    (run / "last.json").write_text(json.dumps(record))


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("epoch", 10**9, "its epoch 1000000000 is not a whole number in 0..1,000,000"),
        ("epoch", -5, "its epoch -5 is not a whole number in 0..1,000,000"),
        ("epoch", 3, "its history holds 1 epoch(s) but epoch is 3"),
        ("global_step", "many", "its global_step 'many' is not a whole number"),
        ("best_epoch", 7, "best_epoch 7 is not an epoch in 1..1"),
    ],
)
def test_fault_resume_numbers_out_of_range_are_refused_at_once(
    run_copy: tuple[Path, Path],
    capsys: pytest.CaptureFixture[str],
    field: str,
    value: Any,
    expected: str,
) -> None:
    _, run = run_copy

    def change(metadata: dict[str, Any]) -> None:
        metadata["trainer"][field] = value
        if field == "epoch":
            metadata["epoch"] = value

    _tamper_metadata(run, change)
    before = _snapshot(run)
    line = _fails(["train", "--resume", str(run), "--epochs", "3"], capsys)
    assert f"checkpoint {run / 'last.json'} cannot be resumed: {expected}" in line
    assert _snapshot(run) == before


@pytest.mark.parametrize("damage", ["mask_size", "nan_image"])
def test_fault_sample_checks_run_before_anything_is_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], damage: str
) -> None:
    data = _write_folder(tmp_path / "data", 4)
    if damage == "mask_size":
        bad = data / "masks" / "s2.png"
        Image.fromarray(np.zeros((12, 16), np.uint8)).save(bad)
        expected = f"{bad}: mask is 16x12 but its image is 16x16"
    else:
        bad = data / "images" / "s2.npy"
        image = np.asarray(Image.open(data / "images" / "s2.png"), np.float32) / 255
        image[3, 4] = np.nan
        (data / "images" / "s2.png").unlink()
        np.save(bad, image)
        expected = f"{bad}: image holds 1 NaN or infinite value(s)"
    out = tmp_path / "o"
    args = ["train", *UNET, "--data", str(data), *FAST, "--output", str(out)]
    line = _fails(args, capsys)
    assert expected in line
    assert not out.exists()  # so the corrected rerun needs no --overwrite
    if damage == "mask_size":
        Image.fromarray(np.zeros((16, 16), np.uint8)).save(bad)
    else:
        np.save(bad, np.nan_to_num(np.load(bad)))
    assert main(args) == 0


@pytest.mark.parametrize(
    ("flag", "value", "expected"),
    [
        ("--lr", "inf", "--lr inf must be a finite number greater than 0; e.g. --lr 1e-3"),
        ("--lr", "nan", "--lr nan must be a finite number greater than 0"),
        ("--keep-epochs", "-1", "--keep-epochs -1 must be at least 0"),
        ("--image-size", "0", "--image-size 0 must be at least 1"),
        ("--val-fraction", "1.5", "--val-fraction 1.5 must be a finite number in [0, 1)"),
    ],
)
def test_fault_settings_out_of_range_leave_the_run_untouched(
    run_copy: tuple[Path, Path],
    capsys: pytest.CaptureFixture[str],
    flag: str,
    value: str,
    expected: str,
) -> None:
    _, run = run_copy
    before = _snapshot(run)
    line = _fails(["train", "--resume", str(run), "--epochs", "2", flag, value], capsys)
    assert expected in line
    assert _snapshot(run) == before  # config.json included


def _resave_last(run: Path, change: Any) -> None:
    """Rewrite ``run/last`` with ``change`` applied to its loaded contents (a valid file)."""
    saved = load_checkpoint(run)
    change(saved)
    checkpoint_module.save_checkpoint(
        run,
        "last",
        model_state=saved.model_state,
        optimizer_state=saved.optimizer_state,
        scheduler_state=saved.scheduler_state,
        extra_tensors=saved.extra_tensors,
        metadata=saved.metadata,
    )


def test_fault_optimizer_state_that_does_not_fit_is_refused_before_a_step(
    run_copy: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    _, run = run_copy

    def shrink_first_moment(saved: Any) -> None:
        saved.optimizer_state["state"][0]["exp_avg"] = torch.zeros(3)

    _resave_last(run, shrink_first_moment)
    before = _snapshot(run)
    line = _fails(["train", "--resume", str(run), "--epochs", "2"], capsys)
    assert f"checkpoint {run / 'last.json'} does not fit the optimizer" in line
    assert "exp_avg of encoder.0.conv1.weight has shape (3,) in checkpoint vs (4, 1, 3, 3)" in line
    assert _snapshot(run) == before

    def unknown_parameter(saved: Any) -> None:
        saved.optimizer_state["state"][0]["exp_avg"] = torch.zeros(4, 1, 3, 3)
        saved.optimizer_state["state"][999] = saved.optimizer_state["state"][0]

    _resave_last(run, unknown_parameter)
    line = _fails(["train", "--resume", str(run), "--epochs", "2"], capsys)
    assert "it holds state for parameter 999, which no parameter group lists" in line


def test_fault_integer_model_tensors_in_a_checkpoint_are_refused(
    run_copy: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    _, run = run_copy

    def to_int64(saved: Any) -> None:
        saved.model_state = {k: v.to(torch.int64) for k, v in saved.model_state.items()}

    _resave_last(run, to_int64)
    before = _snapshot(run)
    line = _fails(["train", "--resume", str(run), "--epochs", "2"], capsys)
    assert f"checkpoint {run / 'last.json'} does not fit model 'unet_small'" in line
    assert "dtype mismatches: encoder.0.conv1.weight int64 in checkpoint vs float32" in line
    assert _snapshot(run) == before


def test_fault_unknown_model_arg_names_the_valid_keys(
    trained: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data, _ = trained
    out = tmp_path / "o"
    args = ["train", *UNET, "--model-arg", "featurez=8", "--data", str(data), *FAST]
    line = _fails([*args, "--output", str(out)], capsys)
    assert "--model-arg featurez=8: model 'unet_small' has no argument 'featurez'" in line
    assert "did you mean 'features'?" in line and "depth, features," in line
    # DenseNet-BC's builder forwards **overrides to DenseNet: its parameters count too.
    args = ["train", "--model", "densenet_bc", "--model-arg", "growthrate=4", "--data"]
    line = _fails([*args, "builtin:shapes", *FAST, "--output", str(out)], capsys)
    assert "did you mean 'growth_rate'?" in line and "block_config" in line
    assert not out.exists()


def test_fault_yaml_alias_bomb_is_refused_quickly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 10)]
    lines.append("model_args: {features: *a9}")  # 9**10 values once expanded
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("\n".join(lines) + "\n")
    started = time.perf_counter()
    line = _fails(["train", "--config", str(bomb), "--output", str(tmp_path / "o")], capsys)
    assert time.perf_counter() - started < 5
    assert f"--config {bomb} expands to more than 10,000 values" in line


@pytest.mark.parametrize("damage", ["nested", "metadata_list"])
def test_fault_tampered_last_json_structure_is_one_error_line(
    run_copy: tuple[Path, Path], capsys: pytest.CaptureFixture[str], damage: str
) -> None:
    _, run = run_copy
    record = json.loads((run / "last.json").read_text())
    if damage == "nested":
        text = json.dumps(record)
        text = text.replace(
            '"metadata": {', '"metadata": {"deep": ' + "[" * 100_000 + "]" * 100_000 + ", ", 1
        )
        expected = "is nested too deeply"
    else:
        record["metadata"] = [record["metadata"]]
        text = json.dumps(record)
        expected = "its metadata is a list, not a mapping"
    (run / "last.json").write_text(text)
    before = _snapshot(run)
    line = _fails(["train", "--resume", str(run), "--epochs", "2"], capsys)
    assert f"checkpoint file {run / 'last.json'} cannot be used: " in line and expected in line
    assert _snapshot(run) == before


def test_fault_resume_after_the_data_changed_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = _write_folder(tmp_path / "data", 6)
    run = tmp_path / "run"
    assert main(["train", *UNET, "--data", str(data), *FAST, "--output", str(run)]) == 0
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--epochs", "2"]) == 0
    assert "the data differs" not in capsys.readouterr().err  # same data: no notice
    extra = _write_folder(tmp_path / "more", 2)
    for kind in ("images", "masks"):
        for index in range(2):
            shutil.copy(extra / kind / f"s{index}.png", data / kind / f"t{index}.png")
    assert main(["train", "--resume", str(run), "--epochs", "3"]) == 0
    err = capsys.readouterr().err
    assert f"the data differs from the data {run / 'last.json'} was trained on" in err
    assert "(6 images then, split 5 / 1; 8 now, split 6 / 2)" in err
    assert "the training continues on the new data" in err


def test_fault_mask_values_leaving_empty_classes_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = _write_folder(tmp_path / "data", 3)
    out = tmp_path / "o"
    args = ["train", *UNET, "--data", str(data), *FAST, "--mask-values", "0:0,1:5"]
    line = _fails([*args, "--output", str(out)], capsys)
    assert "--mask-values 0:0,1:5 maps to classes 0, 5, so class(es) 1, 2, 3, 4" in line
    assert "e.g. --mask-values 0:0,1:1" in line
    assert not out.exists()


class _SystemExploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


def test_fault_pickled_weights_are_named_for_what_they_are(
    trained: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data, _ = trained
    marker = tmp_path / "code-ran"
    out = tmp_path / "o"
    args = ["train", *UNET, "--data", str(data), *FAST, "--output", str(out), "--init-weights"]
    # torch 2.13 words it "unsupported GLOBAL posix.system whose module posix is blocked".
    evil = tmp_path / "evil.pt"
    torch.save({"w": torch.ones(1), "payload": _SystemExploit(marker)}, evil)
    line = _fails([*args, str(evil)], capsys)
    assert "unsupported GLOBAL posix.system" in line
    assert "would need pickle code execution, which concatnets refuses" in line
    # A raw pickle (not torch.save) is named as such, without torch's warning lines.
    raw = tmp_path / "raw.pth"
    model = create_model("unet_small", features=4, depth=2, in_channels=1, num_classes=2)
    raw.write_bytes(pickle.dumps(model.state_dict(), protocol=4))
    assert main([*args, str(raw)]) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.strip().splitlines() if not line.startswith("notice:")]
    assert "Warning" not in err and len(errors) == 1, err
    assert f"{raw} is a plain Python pickle, not a file written by torch.save" in err
    assert not marker.exists() and not out.exists()


def test_fault_resume_of_a_missing_folder_says_it_does_not_exist(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    line = _fails(["train", "--resume", str(tmp_path / "nope")], capsys)
    assert f"--resume {tmp_path / 'nope'} does not exist" in line
    assert not (tmp_path / "nope").exists()


def test_fault_temporary_files_of_a_killed_write_are_cleaned(
    run_copy: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    _, run = run_copy
    for name in (".config.json.k1l2m3.tmp", ".metrics.csv.a8b9c0.tmp"):
        (run / name).write_text("half a file")
    (run / ".notes.txt.tmp").write_text("not ours")
    assert main(["train", "--resume", str(run), "--epochs", "2"]) == 0
    assert "removed 2 temporary file(s) of interrupted writes" in capsys.readouterr().err
    assert sorted(p.name for p in run.glob(".*.tmp")) == [".notes.txt.tmp"]


def test_fault_run_files_follow_the_umask(trained: tuple[Path, Path], tmp_path: Path) -> None:
    data, _ = trained
    run = tmp_path / "run"
    previous = os.umask(0o022)
    try:
        assert main(["train", *UNET, "--data", str(data), *FAST, "--output", str(run)]) == 0
    finally:
        os.umask(previous)
    modes = {p.name: p.stat().st_mode & 0o777 for p in run.iterdir() if p.is_file()}
    assert modes and set(modes.values()) == {0o644}, modes
