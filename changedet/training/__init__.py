"""Training of change-detection networks: chips, losses, validation, early stopping, threshold calibration.

:func:`train` is the one entry point; ``changedet train --config run.yaml`` maps the YAML keys 1:1 onto its keyword
arguments. A run:

1. reads the training and validation scenes (:func:`changedet.data.load_dataset`) and normalises each once
   (``normalization="scene"``: each date z-scored with its own per-band statistics, as the inference does);
2. draws ``chips_per_epoch`` chips per epoch with positive-aware sampling and augmentation
   (:class:`~changedet.data.sampling.ChipDataset`) and optimises the loss (weighted BCE, Dice, focal, their sums, or
   the contrastive/triplet losses of metric models, optionally with online hard example mining);
3. after each epoch predicts the *whole* validation scenes (one forward pass per scene, overlap-tiled above
   ``val_tile_size``), records pooled metrics at 0.5 and at the F1-optimal threshold in ``metrics.csv`` and
   ``curves.png``, keeps the best weights by validation F1 (by validation loss where the validation scenes hold no
   change, with a warning) and stops after ``patience`` epochs without progress;
4. calibrates the decision threshold on the validation scenes (F1-optimal on the precision-recall curve, or Otsu),
   plots ``pr_curve.png`` and writes the checkpoint ``<out>/<name>.safetensors`` + ``<name>.json`` with band names,
   normalisation, pixel size, threshold, metrics at the calibrated threshold and at 0.5, the configuration (with
   absolute paths) and the data split.

Every output is written into the hidden ``<out>/.changedet-staging-<pid>/`` folder (``metrics.csv`` there after
each epoch) and moved into ``out`` once all are complete: an interrupted or failed run leaves ``out`` as it was.

On the CPU the run is deterministic for a given ``seed`` (torch and numpy generators seeded, deterministic
algorithms requested). Progress goes to a callback (``progress=True`` shows a tqdm bar on stderr); nothing is printed.

>>> from changedet.training import train  # doctest: +SKIP
>>> result = train(out="out/train/s2", dataset={"type": "oscd", "root": "data/oscd", "val_cities": ["bercy", "rennes"]},
...                model="fc-siam-diff", epochs=30, chip_size=96, threads=2)  # doctest: +SKIP
>>> result.checkpoint, result.threshold  # doctest: +SKIP

The package's modules: :mod:`~changedet.training.loop` (:func:`train`, which runs the stages of
:mod:`~changedet.training.preparation` (paths, scenes), :mod:`~changedet.training.trainer` (network, optimiser,
loader, one epoch), :mod:`~changedet.training.selection` (best weights, early stopping) and
:mod:`~changedet.training.finishing` (calibration, checkpoint)), :mod:`~changedet.training.objective` (losses,
hard example mining), :mod:`~changedet.training.validation` (:func:`predict_scene`, whole-scene validation),
:mod:`~changedet.training.outputs` (:class:`TrainResult`, ``metrics.csv``, curves, staging folder),
:mod:`~changedet.training.checks` (settings and labels), :mod:`~changedet.training.recalibration`
(:func:`calibrate_checkpoint`, :func:`cross_calibrate_checkpoint`) and :mod:`~changedet.training.runtime` (seeding,
torch settings). Every public name, and the private helpers that tests use, is importable from
``changedet.training``.
"""

from __future__ import annotations

from changedet.training.checks import _check_choice as _check_choice
from changedet.training.checks import _check_label_classes as _check_label_classes
from changedet.training.checks import _class_counts as _class_counts
from changedet.training.checks import _no_change_message as _no_change_message
from changedet.training.checks import _scene_names as _scene_names
from changedet.training.loop import METRIC_LOSSES, train
from changedet.training.loop import OPTIMIZERS as OPTIMIZERS
from changedet.training.loop import SCHEDULES as SCHEDULES
from changedet.training.loop import log as log
from changedet.training.objective import OHEMLoss, build_loss
from changedet.training.objective import _auto_pos_weight as _auto_pos_weight
from changedet.training.objective import _LossStep as _LossStep
from changedet.training.outputs import ProgressCallback as ProgressCallback
from changedet.training.outputs import TrainResult
from changedet.training.outputs import _curves_figure as _curves_figure
from changedet.training.outputs import _json_safe as _json_safe
from changedet.training.outputs import _plot_curves as _plot_curves
from changedet.training.outputs import _staging as _staging
from changedet.training.outputs import _write_csv as _write_csv
from changedet.training.outputs import tqdm_progress as tqdm_progress
from changedet.training.recalibration import _calibrate_metric as _calibrate_metric
from changedet.training.recalibration import _checkpoint_probabilities as _checkpoint_probabilities
from changedet.training.recalibration import _fit_platt as _fit_platt
from changedet.training.recalibration import calibrate_checkpoint
from changedet.training.recalibration import cross_calibrate_checkpoint as cross_calibrate_checkpoint
from changedet.training.runtime import _torch_settings as _torch_settings
from changedet.training.runtime import seed_everything
from changedet.training.validation import _pool_parts as _pool_parts
from changedet.training.validation import _sigmoid as _sigmoid
from changedet.training.validation import _val_row as _val_row
from changedet.training.validation import _validate as _validate
from changedet.training.validation import _validate_parts as _validate_parts
from changedet.training.validation import _validate_sharded as _validate_sharded
from changedet.training.validation import _windows as _windows
from changedet.training.validation import predict_scene

__all__ = [
    "METRIC_LOSSES",
    "OHEMLoss",
    "TrainResult",
    "build_loss",
    "calibrate_checkpoint",
    "predict_scene",
    "seed_everything",
    "train",
]
