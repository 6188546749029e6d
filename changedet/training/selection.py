"""Which epoch's weights a training run keeps: validation after an epoch, the best weights, early stopping.

``_validate_epoch`` predicts the whole validation scenes after an epoch and adds their metrics to the epoch's row
of ``metrics.csv``; ``_Selection`` keeps the best weights so far (by validation F1, by validation loss where the
validation scenes hold no change, or the last epoch's) and counts the validations without progress.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from changedet.ddp import DistContext, run_on_main
from changedet.training.preparation import _TrainData
from changedet.training.trainer import _Trainer
from changedet.training.validation import _val_row, _validate_sharded


@dataclass
class _Selection:
    """The best epoch so far and its weights, by ``select_by`` (``"f1"``, ``"val_loss"`` or ``"last"``), and the
    number of validations since it (``stale``)."""

    select_by: str
    best_state: dict[str, Any]
    best_score: float = -math.inf
    best_epoch: int = 0
    stale: int = 0

    @classmethod
    def start(cls, data: _TrainData, trainer: _Trainer) -> _Selection:
        """Before the first epoch: the initial weights, and how the best epoch is chosen."""
        best_state = copy.deepcopy(trainer.eval_net.state_dict())
        # the best epoch: by validation F1, or where the validation scenes hold no change (F1 undefined) by
        # validation loss, or (metric losses, which are not computed on whole scenes) the last epoch
        select_by = "f1" if data.val_has_change else ("last" if trainer.metric_loss else "val_loss")
        return cls(select_by=select_by, best_state=best_state)

    def consider(self, row: dict[str, Any], epoch: int, eval_net: nn.Module) -> bool:
        """Keep ``eval_net``'s weights if the validated epoch's ``row`` is the best so far; whether it is."""
        if self.select_by == "f1":
            score = row["val_f1_best"] if row["val_f1_best"] is not None else -1.0
        elif self.select_by == "val_loss" and row.get("val_loss") is not None:
            score = -float(row["val_loss"])
        else:
            score = float(epoch)
        if score > self.best_score:
            self.best_score, self.best_epoch, self.best_state = score, epoch, copy.deepcopy(eval_net.state_dict())
            self.stale = 0
            return True
        self.stale += 1
        return False

    def keep(self, epoch: int, eval_net: nn.Module) -> None:
        """Without validation scenes: keep every epoch's weights (the last is saved)."""
        self.best_epoch, self.best_state = epoch, copy.deepcopy(eval_net.state_dict())


def _validate_epoch(
    row: dict[str, Any],
    trainer: _Trainer,
    data: _TrainData,
    selection: _Selection,
    *,
    epoch: int,
    dev: torch.device,
    val_tile_size: int,
    dctx: DistContext | None,
) -> bool:
    """Validate the epoch's weights on the whole validation scenes (spread over the ranks, pooled on rank 0), add
    rank 0's metrics to ``row`` on every rank and let ``selection`` consider them; whether the epoch is the best."""
    t1 = time.perf_counter()
    prepared_val = data.prepared_val
    val_parts = _validate_sharded(
        trainer.eval_net, prepared_val, None if trainer.metric_loss else trainer.loss_fn, dev, val_tile_size,
        trainer.is_metric, dctx, data.owners,
    )

    def val_fields() -> dict[str, Any]:
        scores, probs, val_loss = val_parts  # type: ignore[misc]
        fields: dict[str, Any] = {"val_loss": None if val_loss is None else round(val_loss, 6)}
        fields.update(_val_row(scores, probs, prepared_val))
        return fields

    row.update(run_on_main(val_fields, dctx))  # the same metrics, so the same decision
    row["val_seconds"] = round(time.perf_counter() - t1, 3)
    return selection.consider(row, epoch, trainer.eval_net)
