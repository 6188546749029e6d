"""What a training run optimises and how: the network, its loss, optimiser, schedule and chip loader; one epoch.

``_build_trainer`` seeds torch and creates them into a ``_Trainer``, in the order that fixes the run's random
numbers (the network's initial weights right after seeding, the loader's own generator, the per-rank seeds of a
distributed run last); ``_moving_average`` adds the optional moving average of the weights and ``_train_epoch``
runs one epoch, returning its row of ``metrics.csv``.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from changedet.data.sampling import ChipDataset
from changedet.ddp import DistContext, ShardedBatchSampler, all_reduce_sum, broadcast_buffers
from changedet.errors import ChangedetError, InputError, ModelArgumentError
from changedet.training.objective import METRIC_LOSSES, _auto_pos_weight, _LossStep, build_loss
from changedet.training.outputs import ProgressCallback
from changedet.training.preparation import _TrainData
from changedet.training.runtime import seed_everything


@dataclass
class _Trainer:
    """The network and what trains it; ``ddp_step`` (network and loss under ``DistributedDataParallel``) in a
    distributed run only, ``ema_net`` with a moving average of the weights only."""

    net: nn.Module
    is_metric: bool
    metric_loss: bool
    loss_fn: nn.Module
    pos_weight: float | None
    ds: ChipDataset
    opt: torch.optim.Optimizer
    sched: Any
    loader: torch.utils.data.DataLoader
    steps_per_epoch: int
    global_batch: int
    memory_format: torch.memory_format
    ddp_step: nn.Module | None = None
    ema_net: AveragedModel | None = None

    @property
    def eval_net(self) -> nn.Module:
        """The weights that are validated, calibrated and saved: the moving average's copy, or the network's."""
        return self.ema_net.module if self.ema_net is not None else self.net  # type: ignore[return-value]


def _build_trainer(
    data: _TrainData,
    *,
    model: str,
    model_kwargs: Mapping[str, Any] | None,
    loss: str,
    loss_kwargs: Mapping[str, Any] | None,
    pos_weight: float | str | None,
    pos_weight_cap: float,
    ohem: float | None,
    ohem_min_kept: int,
    optimizer: str,
    lr: float,
    weight_decay: float,
    momentum: float,
    schedule: str,
    step_size: int,
    gamma: float,
    epochs: int,
    chips_per_epoch: int,
    batch_size: int,
    chip_size: int,
    positive_fraction: float,
    min_valid: float,
    seed: int,
    channels_last: bool,
    num_workers: int,
    sync_bn: bool,
    dev: torch.device,
    dctx: DistContext | None,
) -> _Trainer:
    """Seed torch, create the network on ``dev``, the chip sampler, the loss, the optimiser, the schedule and the
    loader (and in a distributed run the DDP wrapper, then a seed of each rank's own for rank > 0)."""
    parts = [p.strip().lower() for p in loss.split("+")]
    metric_loss = any(p in METRIC_LOSSES for p in parts)
    seed_everything(seed)
    net, is_metric, extra_loss_kwargs = _create_network(
        model, model_kwargs, in_channels=len(data.band_names), loss=loss, metric_loss=metric_loss,
        loss_kwargs=loss_kwargs, sync_bn=sync_bn, dctx=dctx,
    )
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    net = net.to(dev).to(memory_format=fmt)  # type: ignore[call-overload]

    ds = ChipDataset(data.prepared_train, chip_size=chip_size, chips_per_epoch=chips_per_epoch,
                     positive_fraction=positive_fraction, augment=data.augmenter, seed=seed, min_valid=min_valid)
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
    opt = _create_optimizer(params, optimizer, lr=lr, weight_decay=weight_decay, momentum=momentum)
    sched = _create_schedule(opt, schedule, epochs=epochs, step_size=step_size, gamma=gamma)

    ddp_step: nn.Module | None = None
    global_batch = min(batch_size, len(ds))
    loader = _create_loader(ds, batch_size=batch_size, num_workers=num_workers, seed=seed, dev=dev, dctx=dctx)
    if dctx is not None:
        from torch.nn.parallel import DistributedDataParallel

        ddp_step = DistributedDataParallel(
            _LossStep(net, loss_fn, metric_loss),
            device_ids=[dev.index] if dev.type == "cuda" else None,
        )
        if dctx.rank:  # the same initial weights, but dropout masks of its own on each rank (rank 0 keeps
            # the single-process stream)
            seed_everything(int(np.random.SeedSequence([int(seed), dctx.rank]).generate_state(1)[0]))
    return _Trainer(net=net, is_metric=is_metric, metric_loss=metric_loss, loss_fn=loss_fn, pos_weight=pw, ds=ds,
                    opt=opt, sched=sched, loader=loader, steps_per_epoch=len(loader), global_batch=global_batch,
                    memory_format=fmt, ddp_step=ddp_step)


def _create_network(
    model: str,
    model_kwargs: Mapping[str, Any] | None,
    *,
    in_channels: int,
    loss: str,
    metric_loss: bool,
    loss_kwargs: Mapping[str, Any] | None,
    sync_bn: bool,
    dctx: DistContext | None,
) -> tuple[nn.Module, bool, dict[str, Any]]:
    """The network (its initial weights drawn from torch's generator), whether it is a metric model, and the loss's
    keyword arguments (a metric loss gets the model's distance); a metric loss needs a metric model."""
    from changedet.models import create_model  # looked up at each run (tests replace it)

    kwargs = dict(model_kwargs or {})
    kwargs["in_channels"] = in_channels
    try:
        net = create_model(model, **kwargs)
    except (TypeError, ValueError) as exc:
        if isinstance(exc, ChangedetError):
            raise
        # a value the constructor cannot use (e.g. a word for a number) that the checks did not catch
        raise ModelArgumentError(
            f"cannot create model {model!r} with model_kwargs {dict(model_kwargs or {})}: {exc}; check the "
            "values of model_kwargs"
        ) from exc
    is_metric = bool(getattr(net, "is_metric", False))
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
    return net, is_metric, extra_loss_kwargs


def _create_optimizer(
    params: list[nn.Parameter], optimizer: str, *, lr: float, weight_decay: float, momentum: float
) -> torch.optim.Optimizer:
    if optimizer == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if optimizer == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=momentum > 0)


def _create_schedule(opt: torch.optim.Optimizer, schedule: str, *, epochs: int, step_size: int, gamma: float) -> Any:
    if schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    if schedule == "step":
        return torch.optim.lr_scheduler.StepLR(opt, step_size=step_size, gamma=gamma)
    return None


def _create_loader(
    ds: ChipDataset, *, batch_size: int, num_workers: int, seed: int, dev: torch.device, dctx: DistContext | None
) -> torch.utils.data.DataLoader:
    """The chip loader: the dataset's batches in order, or in a distributed run each rank's share of them."""
    # the loader's own generator: drawing its base seed must not advance the global one (dropout...)
    generator = torch.Generator()
    generator.manual_seed(int(seed))
    if dctx is None:
        return torch.utils.data.DataLoader(
            ds, batch_size=batch_size, shuffle=False, drop_last=len(ds) > batch_size,
            num_workers=num_workers, pin_memory=dev.type == "cuda", generator=generator,
            persistent_workers=False,
        )
    # the single-process batches, each shared among the ranks: the same steps, optimiser and
    # learning rate as one process with batch_size, computed by world_size processes
    sampler = ShardedBatchSampler(len(ds), batch_size=batch_size, rank=dctx.rank, world_size=dctx.world_size)
    return torch.utils.data.DataLoader(
        ds, batch_sampler=sampler, num_workers=num_workers, pin_memory=dev.type == "cuda",
        generator=generator, persistent_workers=False,
    )


def _moving_average(net: nn.Module, ema: float | None) -> AveragedModel | None:
    """An exponential moving average of ``net``'s weights and buffers with decay ``ema``, or None without one."""
    if ema is None:
        return None
    return AveragedModel(net, multi_avg_fn=get_ema_multi_avg_fn(float(ema)), use_buffers=True)


def _train_epoch(
    trainer: _Trainer, *, epoch: int, dev: torch.device, dctx: DistContext | None,
    progress_cb: ProgressCallback | None,
) -> tuple[dict[str, Any], int]:
    """Optimise over one epoch's chips and step the schedule.

    Returns the epoch's row of ``metrics.csv`` (training loss averaged over the ranks) and the number of chips this
    rank trained on (counted in a distributed run only, 0 in a single process).
    """
    t0 = time.perf_counter()
    net, fmt, ddp_step = trainer.net, trainer.memory_format, trainer.ddp_step
    world = 1 if dctx is None else dctx.world_size
    chips = 0
    trainer.ds.set_epoch(epoch - 1)
    net.train()
    total = torch.zeros((), device=dev)
    for before, after, target, valid in trainer.loader:
        before = before.to(dev, non_blocking=True).contiguous(memory_format=fmt)
        after = after.to(dev, non_blocking=True).contiguous(memory_format=fmt)
        target = target.to(dev, non_blocking=True)
        valid = valid.to(dev, non_blocking=True)
        if ddp_step is None:
            if trainer.metric_loss:
                outputs = net.forward_with_embeddings(before, after)  # type: ignore[operator]
            else:
                outputs = net(before, after)
            batch_loss = trainer.loss_fn(outputs, target, valid)
        else:
            # DDP averages the ranks' gradients; weighting each rank's loss by its share of the
            # global batch makes that average the gradient of the chip-weighted mean loss
            share = before.shape[0] * world / trainer.global_batch
            batch_loss = ddp_step(before, after, target, valid) * share
            chips += int(before.shape[0])
        trainer.opt.zero_grad(set_to_none=True)
        batch_loss.backward()
        trainer.opt.step()
        if trainer.ema_net is not None:
            trainer.ema_net.update_parameters(net)
        total += batch_loss.detach()
        if progress_cb:
            progress_cb({"event": "step"})
    if dctx is not None:
        all_reduce_sum(total, dctx)
        total /= world
        broadcast_buffers(net, dctx)  # batch-norm statistics of rank 0 on every rank
        broadcast_buffers(trainer.eval_net, dctx)  # and of the moving average (each rank averaged its own)
    lr_now = trainer.opt.param_groups[0]["lr"]
    if trainer.sched is not None:
        trainer.sched.step()
    row: dict[str, Any] = {
        "epoch": epoch,
        "lr": lr_now,
        "train_loss": round(float(total) / max(trainer.steps_per_epoch, 1), 6),
        "train_seconds": round(time.perf_counter() - t0, 3),
    }
    return row, chips
