"""What :func:`~changedet.training.train` does before it builds the network: paths, outputs, scenes, progress.

``_resolve_paths`` checks the output folder and the device (recording absolute paths in the run's configuration)
into a ``_Destination``; ``_check_start`` refuses to replace an earlier run's outputs and checks the distributed
settings; ``_read_scenes`` reads the training and validation scenes and ``_prepare_data`` normalises them once
into a ``_TrainData``; ``_progress_callback`` picks the run's progress callback.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from changedet.data.augment import Augment
from changedet.data.generic import Scene
from changedet.data.sampling import PreparedScene, prepare_scenes
from changedet.ddp import DistContext, assign_by_size, run_on_main
from changedet.errors import InputError, OutputExistsError
from changedet.training.checks import _check_choice
from changedet.training.outputs import ProgressCallback, tqdm_progress
from changedet.training.runtime import _check_device

log = logging.getLogger("changedet.training")  # the package's logger, as before the split

@dataclass(frozen=True)
class _Destination:
    """Where a run writes: the output folder and the checkpoint's two files in it."""

    out: Path
    weights_path: Path
    json_path: Path

    @property
    def outputs(self) -> list[Path]:
        """Every file a run may write into ``out`` (those of an earlier run are not replaced without overwrite)."""
        out = self.out
        return [self.weights_path, self.json_path, out / "metrics.csv", out / "curves.png", out / "pr_curve.png"]


def _resolve_paths(
    config: dict[str, Any],
    *,
    out: str | Path,
    name: str,
    dataset: Mapping[str, Any] | None,
    config_base: str | Path | None,
    device: str,
    ddp_backend: str | None,
) -> tuple[_Destination, Mapping[str, Any] | None, torch.device]:
    """Check ``out`` and the device; record absolute paths in ``config`` (in place).

    Returns the destination, the dataset spec with its paths resolved against ``config_base`` and the device.
    """
    from changedet.models.checkpoint import checkpoint_paths

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: exists and is not a folder; give a folder path as out (--out)")
    # the checkpoint records absolute paths, so that `changedet calibrate` finds the data again from any folder
    config["out"] = str(out.absolute())
    config["config_base"] = str(Path(config_base).expanduser().resolve()) if config_base is not None else str(Path.cwd())
    if isinstance(dataset, Mapping):
        from changedet.data.spec import resolve_paths

        dataset = config["dataset"] = resolve_paths(dataset, config_base)
    weights_path, json_path = checkpoint_paths(out / name)
    dev = _check_device(device)
    if ddp_backend is not None:
        _check_choice("ddp_backend", ddp_backend, ("gloo", "nccl"))
    return _Destination(out, weights_path, json_path), dataset, dev


def _check_start(
    destination: _Destination, *, overwrite: bool, sync_bn: bool, dctx: DistContext | None, dev: torch.device
) -> None:
    """Refuse to replace an earlier run's outputs without ``overwrite`` (checked on rank 0, raised on every rank),
    say who writes the outputs of a distributed run, and check ``sync_bn`` against the device."""
    out = destination.out

    def check_outputs() -> None:
        existing = [p for p in destination.outputs if p.exists()]
        if existing and not overwrite:
            raise OutputExistsError(
                f"{out}: holds the outputs of an earlier run ({', '.join(p.name for p in existing)}); "
                "pass overwrite=True (--overwrite) or choose another folder"
            )

    run_on_main(check_outputs, dctx)
    if dctx is not None and dctx.is_main:
        import socket

        log.info("distributed training on %d processes; rank 0 (host %s) writes the outputs to %s",
                 dctx.world_size, socket.gethostname(), out.resolve())
    if sync_bn and dctx is not None and dev.type != "cuda":
        raise InputError(
            "sync_bn needs CUDA devices (torch's SyncBatchNorm has no CPU implementation); "
            "train on the CPU with sync_bn: false (each process normalises its own share of the batch)"
        )
    if sync_bn and dctx is None:
        log.info("sync_bn has no effect in a single process")


@dataclass
class _TrainData:
    """The scenes of a run, read, checked and normalised once.

    ``prepared_val`` holds the validation scenes, or the training scenes where there are none (``has_val`` False,
    ``calibrated_on`` ``"train"``): what is validated and calibrated on. ``owners`` gives the rank that predicts
    each of them in a distributed run.
    """

    split_info: dict[str, Any]
    has_val: bool
    val_has_change: bool
    calibrated_on: str
    band_names: list[str]
    norm_entry: dict[str, Any]
    pixel_size: float | None
    prepared_train: list[PreparedScene]
    prepared_val: list[PreparedScene]
    augmenter: Augment | None
    owners: list[int]


def _read_scenes(
    *,
    dataset: Mapping[str, Any] | None,
    train_scenes: Sequence[Scene] | None,
    val_scenes: Sequence[Scene] | None,
    config_base: str | Path | None,
) -> tuple[list[Scene], list[Scene], dict[str, Any]]:
    """The training and validation scenes (read by the dataset spec, or the given ones) and the split's record."""
    split_info: dict[str, Any]
    if dataset is not None:
        if train_scenes is not None or val_scenes is not None:
            raise InputError("give either dataset or train_scenes/val_scenes, not both")
        from changedet.data.spec import load_dataset

        split = load_dataset(dataset, base=config_base)
        train_list, val_list, split_info = split.train, split.val, split.info
    elif train_scenes is not None:
        train_list, val_list = list(train_scenes), list(val_scenes or [])
        split_info = {"type": "scenes", "train": [s.name for s in train_list],
                      "val": [s.name for s in val_list]}
    else:
        raise InputError("no training data: give dataset (a spec mapping) or train_scenes")
    if not train_list:
        raise InputError("the dataset holds no training scene")
    return train_list, val_list, split_info


def _prepare_data(
    train_list: list[Scene],
    val_list: list[Scene],
    *,
    split_info: dict[str, Any],
    val_has_change: bool,
    normalization: str | Mapping[str, Any],
    chip_size: int,
    augment: bool | Mapping[str, Any] | Augment | None,
    world: int,
) -> _TrainData:
    """Normalise the scenes (validation with the training statistics in ``fixed`` mode), check the validation
    scenes' bands against the training ones and spread the validation scenes over the ``world`` ranks."""
    calibrated_on = "val"
    if not val_list:
        log.warning("no validation scenes: no early stopping; the threshold is calibrated on the training scenes")
        calibrated_on = "train"
    band_names = list(train_list[0].band_names)
    norm_arg = dict(normalization) if isinstance(normalization, Mapping) else {"mode": normalization}
    prepared_train, norm_entry = prepare_scenes(train_list, normalization=norm_arg, chip_size=chip_size)
    if norm_entry["mode"] == "fixed":
        norm_arg = norm_entry  # validation uses the training statistics
    eval_source = val_list if val_list else train_list
    prepared_val, _ = prepare_scenes(eval_source, normalization=norm_arg)
    for s in eval_source:
        if [b.upper() for b in s.band_names] != [b.upper() for b in band_names]:
            raise InputError(f"validation scene {s.name} has bands {s.band_names}, training has {band_names}")
    pixel_sizes = [s.pixel_size for s in train_list if s.pixel_size]
    pixel_size = float(np.median(pixel_sizes)) if pixel_sizes else None
    augmenter = Augment.from_config(augment)  # type: ignore[arg-type]
    # whole validation scenes are spread over the ranks (each predicts its own, rank 0 pools the results)
    owners = assign_by_size([s.valid.size for s in prepared_val], world)
    return _TrainData(
        split_info=split_info, has_val=bool(val_list), val_has_change=val_has_change, calibrated_on=calibrated_on,
        band_names=band_names, norm_entry=norm_entry, pixel_size=pixel_size, prepared_train=prepared_train,
        prepared_val=prepared_val, augmenter=augmenter, owners=owners,
    )


def _progress_callback(
    progress: bool | ProgressCallback | None, *, main: bool, epochs: int
) -> ProgressCallback | None:
    """The run's progress callback: a tqdm bar for ``True``, the given callable, or none (always none off rank 0)."""
    if not main:
        return None  # one progress bar, on rank 0
    if progress is True:
        return tqdm_progress(epochs)
    if callable(progress):
        return progress
    return None
