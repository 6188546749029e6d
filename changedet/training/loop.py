"""The training loop: :func:`train`, from the dataset spec to the calibrated checkpoint.

:func:`train` is a sequence of stages, each in its own module: it checks its settings
(:mod:`changedet.training.checks`) and paths, reads and normalises the scenes
(:mod:`changedet.training.preparation`), builds the network, loss, optimiser and chip loader and trains epoch by
epoch (:mod:`changedet.training.trainer`, losses in :mod:`changedet.training.objective`), validates whole scenes
after each epoch and keeps the best weights (:mod:`changedet.training.selection`), calibrates them and writes the
outputs through a staging folder (:mod:`changedet.training.finishing`, :mod:`changedet.training.outputs`). Its
messages go to the ``changedet.training`` logger.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from changedet.data.augment import Augment
from changedet.data.generic import Scene
from changedet.ddp import DEFAULT_TIMEOUT, all_gather, distributed_context, run_on_main, state_dict_digest
from changedet.io.folders import remove_stale_staging
from changedet.training.checks import OPTIMIZERS as OPTIMIZERS
from changedet.training.checks import SCHEDULES as SCHEDULES
from changedet.training.checks import _check_label_classes, _check_settings
from changedet.training.finishing import _calibrate_best, _distributed_info, _write_outputs
from changedet.training.objective import METRIC_LOSSES as METRIC_LOSSES
from changedet.training.outputs import ProgressCallback, TrainResult, _staging, _write_csv
from changedet.training.preparation import (
    _check_start,
    _prepare_data,
    _progress_callback,
    _read_scenes,
    _resolve_paths,
)
from changedet.training.runtime import _torch_settings
from changedet.training.selection import _Selection, _validate_epoch
from changedet.training.trainer import _build_trainer, _moving_average, _train_epoch

log = logging.getLogger("changedet.training")  # the package's logger, as before the split


def train(
    *,
    out: str | Path,
    dataset: Mapping[str, Any] | None = None,
    train_scenes: Sequence[Scene] | None = None,
    val_scenes: Sequence[Scene] | None = None,
    model: str = "fc-siam-diff",
    model_kwargs: Mapping[str, Any] | None = None,
    loss: str = "bce",
    pos_weight: float | str | None = "auto",
    pos_weight_cap: float = 50.0,
    loss_kwargs: Mapping[str, Any] | None = None,
    ohem: float | None = None,
    ohem_min_kept: int = 1024,
    optimizer: str = "adam",
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    momentum: float = 0.9,
    schedule: str = "cosine",
    step_size: int = 10,
    gamma: float = 0.5,
    epochs: int = 50,
    chips_per_epoch: int = 512,
    batch_size: int = 16,
    chip_size: int = 96,
    positive_fraction: float = 0.5,
    min_valid: float = 0.5,
    augment: bool | Mapping[str, Any] | Augment | None = True,
    normalization: str | Mapping[str, Any] = "scene",
    patience: int | None = 10,
    min_epochs: int = 1,
    val_every: int = 1,
    val_tile_size: int = 1024,
    ema: float | None = None,
    threshold_method: str = "f1",
    probability_calibration: str = "platt",
    seed: int = 0,
    device: str = "cpu",
    threads: int | None = None,
    deterministic: bool = True,
    channels_last: bool = True,
    num_workers: int = 0,
    name: str = "model",
    description: str = "",
    checkpoint_name: str = "",
    overwrite: bool = False,
    plots: bool = True,
    progress: bool | ProgressCallback | None = None,
    config_base: str | Path | None = None,
    distributed: bool | None = None,
    sync_bn: bool = False,
    ddp_backend: str | None = None,
    ddp_timeout: float = DEFAULT_TIMEOUT,
) -> TrainResult:
    """Train a change-detection network and write a calibrated checkpoint.

    Parameters
    ----------
    out : path
        Output folder: ``<name>.safetensors``, ``<name>.json``, ``metrics.csv``, ``curves.png``, ``pr_curve.png``,
        moved there from a hidden staging folder once all are written (``metrics.csv`` is updated in
        ``<out>/.changedet-staging-<pid>/`` during the run); an interrupted or failed run leaves nothing behind.
    dataset : mapping, optional
        A dataset spec for :func:`changedet.data.load_dataset` (``type: oscd|airchange|folders|list`` ...); its
        relative paths are resolved against ``config_base`` (else the current folder) and recorded absolute. The
        training scenes must hold changed pixels (else an :class:`InputError` naming the label values found and
        ``change_values``); a split of one class only gives a :class:`~changedet.errors.ChangedetWarning`.
    train_scenes, val_scenes : sequence of Scene, optional
        In-memory scenes instead of ``dataset`` (e.g. synthetic data). Without validation scenes there is no early
        stopping and the threshold is calibrated on the training scenes (recorded in the checkpoint).
    model : str
        Architecture name (``changedet.models.list_models()``); ``model_kwargs`` go to its constructor
        (``in_channels`` is set from the data).
    loss : str
        ``bce``, ``dice``, ``focal``, ``bce+dice``, ``focal+dice``; ``contrastive``/``triplet`` for metric models.
    pos_weight : float, "auto" or None
        BCE weight of the change class; ``"auto"`` = unchanged/changed pixel ratio of the first epoch's chips,
        capped at ``pos_weight_cap``.
    loss_kwargs : mapping, optional
        Options of the loss's components (:func:`changedet.losses.create_loss`): ``gamma``, ``alpha`` (focal),
        ``smooth`` (Dice), ``weights`` (of a combination, e.g. ``[1.0, 0.5]`` for ``bce+dice``); ``margin``,
        ``mining``, ``distance`` for the metric losses. An option no component takes is an :class:`InputError`
        listing the ones they take.
    ohem : float, optional
        Keep only this fraction of the hardest valid pixels per batch (online hard example mining).
    optimizer, lr, weight_decay, momentum : optimiser (``adam``, ``adamw``, ``sgd``) and its settings.
    schedule, step_size, gamma : learning-rate schedule (``cosine`` over all epochs, ``step``, ``none``).
    epochs, chips_per_epoch, batch_size, chip_size : the sampling budget.
    positive_fraction : float
        Share of chips centred on changed pixels (the rest uniform).
    min_valid : float
        Minimum valid fraction of uniformly drawn chips.
    augment : bool or mapping
        ``True`` (flips and 90-degree rotations), ``False``, or ``{flips, rotations, date_swap, gain, offset}``.
    normalization : str or mapping
        ``"scene"`` (per-date z-score) or ``"fixed"`` (statistics from the training scenes, or given mean/std:
        ``{mode: fixed, mean: [...], std: [...]}``, both or neither; other keys are errors).
    patience : int, optional
        Stop after this many validations without a better validation F1 (None: never; at least 1). Where the
        validation scenes hold no changed pixel (F1 undefined) the best epoch is the one with the lowest validation
        loss (the last one for metric losses), recorded as ``training.best_epoch_by`` in the checkpoint.
    min_epochs, val_every, val_tile_size : validation schedule and the tile size of whole-scene prediction.
    ema : float, optional
        Decay of an exponential moving average of the weights (e.g. ``0.99``: a horizon of about 100 optimiser
        steps), updated after every step (:class:`torch.optim.swa_utils.AveragedModel`, batch-norm statistics
        averaged too). When set, validation, the threshold calibration and the checkpoint use the averaged
        weights instead of the last step's. ``None`` (default): no averaging.
    threshold_method : {"f1", "otsu", "fixed"}
        How the final decision threshold is calibrated on the validation scenes. With two or more validation
        scenes, ``metrics["cross_calibrated"]`` also records each scene scored at the threshold calibrated on the
        others (:func:`changedet.calibration.cross_calibrate`): a less optimistic F1 than the one at the threshold
        fitted to all of them.
    probability_calibration : {"platt", "none"}
        Before the threshold is chosen, fit Platt scaling (``sigmoid(a * logit + b)``, a logistic regression of the
        validation labels on the logits) and fold it into the network's last convolution, so that
        ``probability.tif`` holds probabilities (pixels at 0.3 are changed about 30 % of the time on the validation
        data) and not just scores. The order of the pixels does not change, so neither does the F1 at the
        calibrated threshold; the threshold is searched on the calibrated probabilities. The expected calibration error, Brier score and log loss before
        and after go into ``metrics["probability_calibration"]``. Metric models are calibrated by their own
        ``center``/``scale`` fit and skip this.
    seed : int
    device : str
        ``cpu``, ``cuda``, ``cuda:1``...
    threads : int, optional
        ``torch.set_num_threads`` during the run (restored afterwards): 1 to 512, or None for torch's choice.
    deterministic : bool
        Request deterministic algorithms (identical weights for identical seeds on the CPU).
    channels_last : bool
        NHWC memory format (faster convolutions on recent CPUs and GPUs).
    num_workers : int
        DataLoader worker processes, >= 0 (0: chips are cut in the main process, usually fastest for in-memory
        scenes).
    name : str
        Checkpoint stem inside ``out`` (``model`` gives ``model.safetensors``/``model.json``).
    description, checkpoint_name : str
        Stored in the checkpoint (``checkpoint_name`` is the short model name, e.g. ``s2-13band``).
    overwrite : bool
        Replace the outputs of an earlier run in ``out`` (its plots are removed when this run writes none).
    plots : bool
        Write ``curves.png`` and ``pr_curve.png``.
    progress : bool or callable, optional
        ``True`` for a tqdm bar on stderr, or a callback receiving event dicts (``start``, ``step``, ``epoch``,
        ``end``).
    config_base : path, optional
        Folder against which relative dataset paths are resolved (the config file's folder; default: the current
        folder).
    distributed : bool, optional
        Data-parallel training with ``torch.distributed`` (see Notes). ``None`` (default): when launched by
        ``torchrun`` with more than one process (or inside a process group of several ranks the caller created);
        ``False``: never.
    sync_bn : bool
        In a distributed run on CUDA devices, convert batch norm to :class:`torch.nn.SyncBatchNorm` (statistics over
        the global batch instead of each process's share of it). Not available on the CPU.
    ddp_backend : {"gloo", "nccl"}, optional
        Process-group backend; default ``nccl`` on CUDA devices, ``gloo`` on the CPU.
    ddp_timeout : float
        Seconds a rank waits for the others in a collective operation before failing.

    Returns
    -------
    TrainResult
        Identical on every rank of a distributed run, except ``seconds`` and ``distributed["rank"]``.

    Notes
    -----
    **Distributed training.** Under ``torchrun --nproc_per_node N`` (or ``changedet train --nproc N``) every
    process loads the data, seeds the same generators and wraps the network (with the loss) in
    :class:`~torch.nn.parallel.DistributedDataParallel`: ``gloo`` on the CPU, ``nccl`` and ``cuda:LOCAL_RANK`` on
    GPUs. ``batch_size`` and ``chips_per_epoch`` stay *global*: each batch of the single-process epoch is shared
    among the processes (:class:`~changedet.ddp.ShardedBatchSampler`), every chip is seen once per epoch by exactly
    one process, and the ranks' losses are weighted by their share so that the averaged gradient is that of the
    whole batch. The number of steps, the learning rate and the schedule are therefore those of one process; to
    give each process a batch of ``b`` chips, set ``batch_size`` to ``N * b``. Without ``sync_bn`` each process
    normalises its own share of the batch (batch-norm statistics over ``batch_size / N`` chips), so results are
    close to, not bit-identical with, a single process; the running statistics of rank 0 are copied to every rank
    after each epoch. The training loss is averaged over the ranks; the validation scenes are spread over the
    ranks and pooled on rank 0, whose metrics (identical to a single process's for the same weights) every rank
    receives, so all take the same early-stopping decision. Rank 0 alone calibrates the threshold and writes
    ``metrics.csv``, the plots and the checkpoint; the process group is destroyed at the end, also after an error.
    """
    started = time.perf_counter()
    config = {k: v for k, v in locals().items() if k not in ("train_scenes", "val_scenes", "progress", "started")}
    _check_settings(
        loss=loss, optimizer=optimizer, schedule=schedule, threshold_method=threshold_method,
        probability_calibration=probability_calibration, pos_weight=pos_weight, epochs=epochs,
        chips_per_epoch=chips_per_epoch, batch_size=batch_size, chip_size=chip_size, val_every=val_every,
        val_tile_size=val_tile_size, normalization=normalization, patience=patience, lr=lr, ema=ema, name=name,
        threads=threads, num_workers=num_workers, augment=augment, model=model, model_kwargs=model_kwargs,
        loss_kwargs=loss_kwargs, ohem=ohem, min_valid=min_valid, positive_fraction=positive_fraction,
    )
    destination, dataset, dev = _resolve_paths(config, out=out, name=name, dataset=dataset, config_base=config_base,
                                               device=device, ddp_backend=ddp_backend)

    with (
        distributed_context(dev, enabled=distributed, backend=ddp_backend, timeout=ddp_timeout) as dctx,
        _staging(destination.out, dctx) as staging,
    ):
        # In a distributed run (torchrun) every rank runs this function on the same data with the same seed; rank 0
        # alone checks and writes the outputs (run_on_main hands its result or its error to every rank), first into
        # the staging folder, moved into `out` once complete.
        if dctx is not None:
            dev = dctx.device
        _check_start(destination, overwrite=overwrite, sync_bn=sync_bn, dctx=dctx, dev=dev)
        train_list, val_list, split_info = _read_scenes(dataset=dataset, train_scenes=train_scenes,
                                                        val_scenes=val_scenes, config_base=config_base)
        val_has_change = _check_label_classes(train_list, val_list, dataset)  # its warnings name train's caller
        data = _prepare_data(train_list, val_list, split_info=split_info, val_has_change=val_has_change,
                             normalization=normalization, chip_size=chip_size, augment=augment,
                             world=1 if dctx is None else dctx.world_size)
        progress_cb = _progress_callback(progress, main=dctx is None or dctx.is_main, epochs=epochs)

        history: list[dict[str, Any]] = []
        digests: list[str] | None = None
        chips_per_rank: list[int] | None = None
        with _torch_settings(threads, deterministic, dev):
            trainer = _build_trainer(
                data, model=model, model_kwargs=model_kwargs, loss=loss, loss_kwargs=loss_kwargs,
                pos_weight=pos_weight, pos_weight_cap=pos_weight_cap, ohem=ohem, ohem_min_kept=ohem_min_kept,
                optimizer=optimizer, lr=lr, weight_decay=weight_decay, momentum=momentum, schedule=schedule,
                step_size=step_size, gamma=gamma, epochs=epochs, chips_per_epoch=chips_per_epoch,
                batch_size=batch_size, chip_size=chip_size, positive_fraction=positive_fraction, min_valid=min_valid,
                seed=seed, channels_last=channels_last, num_workers=num_workers, sync_bn=sync_bn, dev=dev, dctx=dctx,
            )
            if progress_cb:
                progress_cb({"event": "start", "steps_per_epoch": trainer.steps_per_epoch, "epochs": epochs})
            trainer.ema_net = _moving_average(trainer.net, ema)
            selection = _Selection.start(data, trainer)
            epoch = 0
            chips_seen = 0
            run_on_main(lambda: _make_folders(destination.out, staging), dctx)
            try:
                for epoch in range(1, epochs + 1):
                    row, chips = _train_epoch(trainer, epoch=epoch, dev=dev, dctx=dctx, progress_cb=progress_cb)
                    chips_seen += chips
                    improved = False
                    if data.has_val and (epoch % val_every == 0 or epoch == epochs):
                        improved = _validate_epoch(row, trainer, data, selection, epoch=epoch, dev=dev,
                                                   val_tile_size=val_tile_size, dctx=dctx)
                    elif not data.has_val:
                        selection.keep(epoch, trainer.eval_net)
                    row["best"] = improved
                    history.append(row)
                    run_on_main(lambda: _write_csv(staging / "metrics.csv", history), dctx)
                    if progress_cb:
                        progress_cb({"event": "epoch", **row})
                    if patience is not None and data.has_val and selection.stale >= patience and epoch >= min_epochs:
                        log.info("early stopping at epoch %d (best %d by %s)", epoch, selection.best_epoch,
                                 "validation F1" if selection.select_by == "f1" else "validation loss")
                        break
            finally:
                if progress_cb:
                    progress_cb({"event": "end"})

            # ---- calibration on the best weights
            trainer.net.load_state_dict(selection.best_state)
            trainer.net.eval()
            if dctx is not None:
                digests = all_gather(state_dict_digest(trainer.net), dctx)
                chips_per_rank = all_gather(chips_seen, dctx)
            calibrated = _calibrate_best(trainer, data, dev=dev, val_tile_size=val_tile_size,
                                         threshold_method=threshold_method,
                                         probability_calibration=probability_calibration, dctx=dctx)

        distributed_info = _distributed_info(dctx, sync_bn=sync_bn, global_batch=trainer.global_batch,
                                             chips_per_rank=chips_per_rank, digests=digests)

        def write_outputs() -> dict[str, Any]:
            return _write_outputs(
                calibrated, trainer, data, selection, destination=destination, staging=staging, history=history,
                epochs_run=epoch, config=config, started=started, dev=dev, distributed_info=distributed_info,
                digests=digests, model=model, name=name, checkpoint_name=checkpoint_name, description=description,
                plots=plots, dctx=dctx,
            )

        from changedet.models import flush_denormals

        with flush_denormals():  # write_outputs runs the model too (folding the probability calibration)
            summary = run_on_main(write_outputs, dctx)
    return TrainResult(
        checkpoint=Path(summary["checkpoint"]),
        out=Path(summary["out"]),
        threshold=summary["threshold"],
        metrics=summary["metrics"],
        history=summary.get("history", history),
        best_epoch=selection.best_epoch,
        epochs_run=epoch,
        seconds=time.perf_counter() - started,
        files=summary["files"],
        distributed=distributed_info,
    )


def _make_folders(out: Path, staging: Path) -> None:
    """Create ``out`` and the staging folder in it, removing the staging folders that dead runs left behind."""
    out.mkdir(parents=True, exist_ok=True)
    remove_stale_staging(out)
    staging.mkdir(exist_ok=True)
