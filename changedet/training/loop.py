"""The training loop: :func:`train`, from the dataset spec to the calibrated checkpoint.

:func:`train` checks its settings (:mod:`changedet.training.checks`), prepares the scenes and the chip sampler,
optimises the loss (:mod:`changedet.training.objective`), validates whole scenes after each epoch
(:mod:`changedet.training.validation`), keeps the best weights, calibrates them
(:mod:`changedet.training.recalibration`) and writes the outputs through a staging folder
(:mod:`changedet.training.outputs`). Its messages go to the ``changedet.training`` logger.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from changedet.calibration import calibrate_threshold, cross_calibrate, plot_pr_curve
from changedet.data.augment import Augment
from changedet.data.generic import Scene
from changedet.data.sampling import ChipDataset, parse_normalization, prepare_scenes
from changedet.ddp import (
    DEFAULT_TIMEOUT,
    ShardedBatchSampler,
    all_gather,
    all_reduce_sum,
    assign_by_size,
    broadcast_buffers,
    distributed_context,
    run_on_main,
    state_dict_digest,
)
from changedet.errors import InputError, OutputExistsError
from changedet.io.folders import remove_stale_staging
from changedet.training.checks import _check_choice, _check_label_classes
from changedet.training.objective import _auto_pos_weight, _LossStep, build_loss
from changedet.training.outputs import (
    ProgressCallback,
    TrainResult,
    _json_safe,
    _plot_curves,
    _staging,
    _write_csv,
    tqdm_progress,
)
from changedet.training.recalibration import _calibrate_metric, _fit_platt
from changedet.training.runtime import _torch_settings, seed_everything
from changedet.training.validation import _sigmoid, _val_row, _validate_sharded

log = logging.getLogger("changedet.training")  # the package's logger, as before the split

METRIC_LOSSES = ("contrastive", "triplet")  # losses on the embeddings of metric models

OPTIMIZERS = ("adam", "adamw", "sgd")

SCHEDULES = ("cosine", "step", "none")



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
        ``focal_gamma``, ``focal_alpha``, ``dice_weight``; ``margin``, ``mining``... for the metric losses.
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
        ``torch.set_num_threads`` during the run (restored afterwards).
    deterministic : bool
        Request deterministic algorithms (identical weights for identical seeds on the CPU).
    channels_last : bool
        NHWC memory format (faster convolutions on recent CPUs and GPUs).
    num_workers : int
        DataLoader worker processes (0: chips are cut in the main process, usually fastest for in-memory scenes).
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
    from changedet.models import create_model, flush_denormals, fold_logit_affine
    from changedet.models.checkpoint import CheckpointMeta, checkpoint_paths, save_checkpoint

    started = time.perf_counter()
    config = {k: v for k, v in locals().items() if k not in ("train_scenes", "val_scenes", "progress", "started",
                                                             "create_model", "CheckpointMeta", "checkpoint_paths",
                                                             "save_checkpoint", "fold_logit_affine",
                                                             "flush_denormals")}
    if not isinstance(loss, str) or not loss:
        raise InputError(f"loss must be a name such as 'bce' or 'bce+dice', got {loss!r}")
    _check_choice("optimizer", optimizer, OPTIMIZERS)
    _check_choice("schedule", schedule, SCHEDULES)
    _check_choice("threshold_method", threshold_method, ("f1", "otsu", "fixed"))
    _check_choice("probability_calibration", probability_calibration, ("platt", "none"))
    if isinstance(pos_weight, str) and pos_weight != "auto":
        raise InputError(f"pos_weight must be a number, 'auto' or null, got {pos_weight!r}")
    for key, value, low in (("epochs", epochs, 1), ("chips_per_epoch", chips_per_epoch, 1),
                            ("batch_size", batch_size, 1), ("chip_size", chip_size, 8), ("val_every", val_every, 1),
                            ("val_tile_size", val_tile_size, 2 * 64 + 1)):  # predict_scene's overlap is 64
        if not isinstance(value, int) or value < low:
            raise InputError(f"{key} must be an integer >= {low}, got {value!r}")
    parse_normalization(normalization)  # unknown keys, a mean without a std...: before anything is read
    if patience is not None and (isinstance(patience, bool) or not isinstance(patience, int) or patience < 1):
        raise InputError(f"patience must be >= 1 or null (never stop early), got {patience!r}")
    if lr <= 0:
        raise InputError(f"lr must be > 0, got {lr}")
    if ema is not None and (isinstance(ema, bool) or not isinstance(ema, (int, float)) or not 0.0 < ema < 1.0):
        raise InputError(f"ema must be a decay between 0 and 1 (e.g. 0.99) or null, got {ema!r}")
    if not isinstance(name, str) or not name or name in (".", "..") or Path(name).name != name or "\\" in name:
        raise InputError(f"name must be a file name without folders (the checkpoint's stem inside out), got {name!r}")
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
    outputs = [weights_path, json_path, out / "metrics.csv", out / "curves.png", out / "pr_curve.png"]
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device {device!r} requested but CUDA is not available; use device='cpu'")
    if ddp_backend is not None:
        _check_choice("ddp_backend", ddp_backend, ("gloo", "nccl"))

    with (
        distributed_context(dev, enabled=distributed, backend=ddp_backend, timeout=ddp_timeout) as dctx,
        _staging(out, dctx) as staging,
    ):
        # In a distributed run (torchrun) every rank runs this function on the same data with the same seed; rank 0
        # alone checks and writes the outputs (run_on_main hands its result or its error to every rank), first into
        # the staging folder, moved into `out` once complete.
        main = dctx is None or dctx.is_main
        world = 1 if dctx is None else dctx.world_size
        if dctx is not None:
            dev = dctx.device

        def check_outputs() -> None:
            existing = [p for p in outputs if p.exists()]
            if existing and not overwrite:
                raise OutputExistsError(
                    f"{out}: holds the outputs of an earlier run ({', '.join(p.name for p in existing)}); "
                    "pass overwrite=True (--overwrite) or choose another folder"
                )

        run_on_main(check_outputs, dctx)
        if dctx is not None and dctx.is_main:
            import socket

            log.info("distributed training on %d processes; rank 0 (host %s) writes the outputs to %s",
                     world, socket.gethostname(), out.resolve())
        if sync_bn and dctx is not None and dev.type != "cuda":
            raise InputError(
                "sync_bn needs CUDA devices (torch's SyncBatchNorm has no CPU implementation); "
                "train on the CPU with sync_bn: false (each process normalises its own share of the batch)"
            )
        if sync_bn and dctx is None:
            log.info("sync_bn has no effect in a single process")

        # ---- data
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
        val_has_change = _check_label_classes(train_list, val_list, dataset)
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

        progress_cb: ProgressCallback | None
        if not main:
            progress_cb = None  # one progress bar, on rank 0
        elif progress is True:
            progress_cb = tqdm_progress(epochs)
        elif callable(progress):
            progress_cb = progress
        else:
            progress_cb = None

        history: list[dict[str, Any]] = []
        calibrated: dict[str, Any] = {}
        digests: list[str] | None = None
        chips_per_rank: list[int] | None = None
        with _torch_settings(threads, deterministic, dev):
            seed_everything(seed)
            kwargs = dict(model_kwargs or {})
            kwargs["in_channels"] = len(band_names)
            net = create_model(model, **kwargs)
            is_metric = bool(getattr(net, "is_metric", False))
            parts = [p.strip().lower() for p in loss.split("+")]
            metric_loss = any(p in METRIC_LOSSES for p in parts)
            if metric_loss and not is_metric:
                raise InputError(
                    f"the {loss} loss works on embeddings and needs a metric model (e.g. metric-siam); "
                    f"{model} is not one"
                )
            extra_loss_kwargs = dict(loss_kwargs or {})
            if metric_loss and hasattr(net, "distance"):
                given = extra_loss_kwargs.setdefault("distance", net.distance)
                if str(given).lower() != str(net.distance).lower():
                    raise InputError(
                        f"loss_kwargs distance {given!r} differs from the model's distance {net.distance!r}: the "
                        f"loss would train one distance and detect would score the other; give "
                        f"model_kwargs: {{distance: {given}}} (or drop the loss's distance)"
                    )
            if dctx is not None and sync_bn:
                net = nn.SyncBatchNorm.convert_sync_batchnorm(net)
            fmt = torch.channels_last if channels_last else torch.contiguous_format
            net = net.to(dev).to(memory_format=fmt)  # type: ignore[call-overload]

            ds = ChipDataset(prepared_train, chip_size=chip_size, chips_per_epoch=chips_per_epoch,
                             positive_fraction=positive_fraction, augment=augmenter, seed=seed, min_valid=min_valid)
            pw: float | None = None
            if "bce" in parts or (ohem and "bce" in parts):
                if pos_weight == "auto":
                    pw = _auto_pos_weight(ds, pos_weight_cap)  # same chips on every rank: same weight
                elif pos_weight is not None:
                    pw = float(pos_weight)
            loss_fn = build_loss(loss, pos_weight=pw, ohem=ohem, ohem_min_kept=ohem_min_kept, **extra_loss_kwargs)
            loss_fn = loss_fn.to(dev)

            params = [p for p in net.parameters() if p.requires_grad] + [
                p for p in loss_fn.parameters() if p.requires_grad
            ]
            if optimizer == "adam":
                opt: torch.optim.Optimizer = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
            elif optimizer == "adamw":
                opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
            else:
                opt = torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay,
                                      nesterov=momentum > 0)
            if schedule == "cosine":
                sched: Any = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
            elif schedule == "step":
                sched = torch.optim.lr_scheduler.StepLR(opt, step_size=step_size, gamma=gamma)
            else:
                sched = None

            ddp_step: nn.Module | None = None
            global_batch = min(batch_size, len(ds))
            # the loader's own generator: drawing its base seed must not advance the global one (dropout...)
            generator = torch.Generator()
            generator.manual_seed(int(seed))
            if dctx is None:
                loader = torch.utils.data.DataLoader(
                    ds, batch_size=batch_size, shuffle=False, drop_last=len(ds) > batch_size,
                    num_workers=num_workers, pin_memory=dev.type == "cuda", generator=generator,
                    persistent_workers=False,
                )
            else:
                # the single-process batches, each shared among the ranks: the same steps, optimiser and
                # learning rate as one process with batch_size, computed by world_size processes
                sampler = ShardedBatchSampler(len(ds), batch_size=batch_size, rank=dctx.rank, world_size=world)
                loader = torch.utils.data.DataLoader(
                    ds, batch_sampler=sampler, num_workers=num_workers, pin_memory=dev.type == "cuda",
                    generator=generator, persistent_workers=False,
                )
                from torch.nn.parallel import DistributedDataParallel

                ddp_step = DistributedDataParallel(
                    _LossStep(net, loss_fn, metric_loss),
                    device_ids=[dev.index] if dev.type == "cuda" else None,
                )
                if dctx.rank:  # the same initial weights, but dropout masks of its own on each rank (rank 0 keeps
                    # the single-process stream)
                    seed_everything(int(np.random.SeedSequence([int(seed), dctx.rank]).generate_state(1)[0]))
            steps_per_epoch = len(loader)
            if progress_cb:
                progress_cb({"event": "start", "steps_per_epoch": steps_per_epoch, "epochs": epochs})

            ema_net: AveragedModel | None = None
            if ema is not None:
                ema_net = AveragedModel(net, multi_avg_fn=get_ema_multi_avg_fn(float(ema)), use_buffers=True)
            # the weights that are validated, calibrated and saved: the moving average's copy, or the network's
            eval_net: nn.Module = ema_net.module if ema_net is not None else net  # type: ignore[assignment]
            best_score, best_epoch, best_state = -math.inf, 0, copy.deepcopy(eval_net.state_dict())
            # the best epoch: by validation F1, or where the validation scenes hold no change (F1 undefined) by
            # validation loss, or (metric losses, which are not computed on whole scenes) the last epoch
            select_by = "f1" if val_has_change else ("last" if metric_loss else "val_loss")
            stale = 0
            epoch = 0
            chips_seen = 0

            def make_folders() -> None:
                out.mkdir(parents=True, exist_ok=True)
                remove_stale_staging(out)
                staging.mkdir(exist_ok=True)

            run_on_main(make_folders, dctx)
            try:
                for epoch in range(1, epochs + 1):
                    t0 = time.perf_counter()
                    ds.set_epoch(epoch - 1)
                    net.train()
                    total = torch.zeros((), device=dev)
                    for before, after, target, valid in loader:
                        before = before.to(dev, non_blocking=True).contiguous(memory_format=fmt)
                        after = after.to(dev, non_blocking=True).contiguous(memory_format=fmt)
                        target = target.to(dev, non_blocking=True)
                        valid = valid.to(dev, non_blocking=True)
                        if ddp_step is None:
                            if metric_loss:
                                outputs = net.forward_with_embeddings(before, after)  # type: ignore[operator]
                            else:
                                outputs = net(before, after)
                            batch_loss = loss_fn(outputs, target, valid)
                        else:
                            # DDP averages the ranks' gradients; weighting each rank's loss by its share of the
                            # global batch makes that average the gradient of the chip-weighted mean loss
                            share = before.shape[0] * world / global_batch
                            batch_loss = ddp_step(before, after, target, valid) * share
                            chips_seen += int(before.shape[0])
                        opt.zero_grad(set_to_none=True)
                        batch_loss.backward()
                        opt.step()
                        if ema_net is not None:
                            ema_net.update_parameters(net)
                        total += batch_loss.detach()
                        if progress_cb:
                            progress_cb({"event": "step"})
                    if dctx is not None:
                        all_reduce_sum(total, dctx)
                        total /= world
                        broadcast_buffers(net, dctx)  # batch-norm statistics of rank 0 on every rank
                        broadcast_buffers(eval_net, dctx)  # and of the moving average (each rank averaged its own)
                    lr_now = opt.param_groups[0]["lr"]
                    if sched is not None:
                        sched.step()
                    row: dict[str, Any] = {
                        "epoch": epoch,
                        "lr": lr_now,
                        "train_loss": round(float(total) / max(steps_per_epoch, 1), 6),
                        "train_seconds": round(time.perf_counter() - t0, 3),
                    }
                    improved = False
                    if val_list and (epoch % val_every == 0 or epoch == epochs):
                        t1 = time.perf_counter()
                        val_parts = _validate_sharded(
                            eval_net, prepared_val, None if metric_loss else loss_fn, dev, val_tile_size, is_metric,
                            dctx, owners,
                        )

                        def val_fields(val_parts: Any = val_parts) -> dict[str, Any]:
                            scores, probs, val_loss = val_parts
                            fields: dict[str, Any] = {"val_loss": None if val_loss is None else round(val_loss, 6)}
                            fields.update(_val_row(scores, probs, prepared_val))
                            return fields

                        row.update(run_on_main(val_fields, dctx))  # the same metrics, so the same decision
                        row["val_seconds"] = round(time.perf_counter() - t1, 3)
                        if select_by == "f1":
                            score = row["val_f1_best"] if row["val_f1_best"] is not None else -1.0
                        elif select_by == "val_loss" and row.get("val_loss") is not None:
                            score = -float(row["val_loss"])
                        else:
                            score = float(epoch)
                        if score > best_score:
                            best_score, best_epoch, best_state = score, epoch, copy.deepcopy(eval_net.state_dict())
                            improved, stale = True, 0
                        else:
                            stale += 1
                    elif not val_list:
                        best_epoch, best_state = epoch, copy.deepcopy(eval_net.state_dict())
                    row["best"] = improved
                    history.append(row)
                    run_on_main(lambda: _write_csv(staging / "metrics.csv", history), dctx)
                    if progress_cb:
                        progress_cb({"event": "epoch", **row})
                    if patience is not None and val_list and stale >= patience and epoch >= min_epochs:
                        log.info("early stopping at epoch %d (best %d by %s)", epoch, best_epoch,
                                 "validation F1" if select_by == "f1" else "validation loss")
                        break
            finally:
                if progress_cb:
                    progress_cb({"event": "end"})

            # ---- calibration on the best weights
            net.load_state_dict(best_state)
            net.eval()
            if dctx is not None:
                digests = all_gather(state_dict_digest(net), dctx)
                chips_per_rank = all_gather(chips_seen, dctx)
            cal_parts = _validate_sharded(net, prepared_val, None, dev, val_tile_size, is_metric, dctx, owners)

            def calibrate() -> None:
                assert cal_parts is not None  # rank 0 holds the pooled predictions
                scores, probs, _ = cal_parts
                labels = [s.label for s in prepared_val]
                valids = [s.valid for s in prepared_val]
                metric_calibration = None
                if is_metric:
                    metric_calibration = _calibrate_metric(net, scores, labels, valids)
                    probs = [
                        _sigmoid((d - metric_calibration["center"]) * metric_calibration["scale"]) for d in scores
                    ]
                calibrated["platt"] = None
                if not is_metric and probability_calibration == "platt":
                    calibrated["platt"], probs = _fit_platt(probs, labels, valids)
                calibrated["calibration"] = calibrate_threshold(probs, labels, valids, method=threshold_method)
                calibrated["metric"] = metric_calibration
                calibrated["cross"] = None
                if val_list and len(probs) >= 2 and threshold_method != "fixed":
                    # each validation scene at the threshold of the others: what the calibration gives unseen data
                    calibrated["cross"] = cross_calibrate(probs, labels, valids, method=threshold_method,
                                                          names=[s.name for s in prepared_val])

            run_on_main(calibrate, dctx)  # kept on rank 0 (the precision-recall curve is large)

        distributed_info: dict[str, Any] | None = None
        if dctx is not None:
            distributed_info = {**dctx.to_dict(), "sync_bn": bool(sync_bn), "global_batch_size": global_batch,
                                "chips_per_rank": chips_per_rank, "weights_digests": digests}

        def write_outputs() -> dict[str, Any]:
            calibration = calibrated["calibration"]
            metric_calibration = calibrated["metric"]
            metrics = {
                "calibrated_on": calibrated_on,
                "scenes": [s.name for s in prepared_val],
                "threshold_method": calibration.method,
                "threshold": calibration.threshold,
                **{k: v for k, v in calibration.metrics.items()},
                "at_0.5": calibration.reference_metrics,
                "average_precision": calibration.to_dict()["average_precision"],
                "best_epoch": best_epoch,
            }
            if metric_calibration is not None:
                metrics["metric_calibration"] = metric_calibration
            if calibrated["cross"] is not None:
                metrics["cross_calibrated"] = calibrated["cross"]
            platt = calibrated["platt"]
            if platt is not None:
                fold_logit_affine(net, platt.scale, platt.bias)  # the checkpoint's outputs are calibrated
                metrics["probability_calibration"] = platt.to_dict()
            training = {
                "config": _json_safe(config),
                "data": split_info,
                "epochs_run": epoch,
                "best_epoch": best_epoch,
                "best_epoch_by": select_by if val_list else "last",
                "pos_weight": pw,
                "seconds": round(time.perf_counter() - started, 1),
                "torch": torch.__version__,
                "device": str(dev),
            }
            if distributed_info is not None:
                training["distributed"] = {k: distributed_info[k] for k in
                                           ("world_size", "backend", "sync_bn", "global_batch_size")}
                if digests is not None and len(set(digests)) > 1:
                    log.warning("the ranks' weights differ after training (digests %s): replicas drifted apart",
                                digests)
            meta = CheckpointMeta(
                band_names=band_names,
                normalization=norm_entry,
                pixel_size=pixel_size,
                threshold=float(calibration.threshold),
                metrics=_json_safe(metrics),
                training=training,
                name=checkpoint_name or name,
                description=description,
            )
            # every output into the staging folder, then moved into `out` (the checkpoint last); the outputs of an
            # earlier run that this one does not write (plots: false) are removed, as they describe another model
            _write_csv(staging / "metrics.csv", history)
            files = {"metrics": str(out / "metrics.csv")}
            if plots:
                if history:
                    _plot_curves(staging / "curves.png", history, best_epoch)
                    files["curves"] = str(out / "curves.png")
                plot_pr_curve(calibration, staging / "pr_curve.png",
                              title=f"{model}: precision-recall on {calibrated_on} ({', '.join(metrics['scenes'][:4])})")
                files["pr_curve"] = str(out / "pr_curve.png")
            cpu_net = net.to("cpu").to(memory_format=torch.contiguous_format)  # type: ignore[call-overload]
            staged_weights, staged_json = checkpoint_paths(save_checkpoint(cpu_net, staging / name, meta,
                                                                          overwrite=True))
            for key in ("metrics", "curves", "pr_curve"):
                if key in files:
                    os.replace(staging / Path(files[key]).name, files[key])
            os.replace(staged_weights, weights_path)
            os.replace(staged_json, json_path)
            for key, file_name in (("curves", "curves.png"), ("pr_curve", "pr_curve.png")):
                if key not in files:
                    (out / file_name).unlink(missing_ok=True)
            checkpoint = weights_path
            files["checkpoint"] = str(checkpoint)
            summary = {"checkpoint": str(checkpoint), "out": str(out), "threshold": float(calibration.threshold),
                       "metrics": metrics, "files": files}
            if dctx is not None:
                summary["history"] = history  # rank 0's, so that every rank returns the same result
            return summary

        with flush_denormals():  # write_outputs runs the model too (folding the probability calibration)
            summary = run_on_main(write_outputs, dctx)
    return TrainResult(
        checkpoint=Path(summary["checkpoint"]),
        out=Path(summary["out"]),
        threshold=summary["threshold"],
        metrics=summary["metrics"],
        history=summary.get("history", history),
        best_epoch=best_epoch,
        epochs_run=epoch,
        seconds=time.perf_counter() - started,
        files=summary["files"],
        distributed=distributed_info,
    )
