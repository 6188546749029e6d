"""Change detection without labels: CVA, IR-MAD and a self-supervised deep Siamese method (DSFA).

These methods need no checkpoint and work on any band count and dtype. Each is a :class:`ChangeScorer`: ``fit``
learns its statistics on a sample of the scene (ignoring invalid pixels), ``predict`` maps any window of the pair to
a per-pixel change probability (float32 (row, col) in [0, 1], 0 on invalid pixels), and a pixel is changed where the
probability is ``>= threshold``. All three are pixel-wise, so a window-by-window prediction equals a whole-scene
one; ``changedet detect --method cva|irmad|dsfa`` streams them through the same tiling and outputs as the
supervised models.

========  ==============================================================  =====================================
method    change score                                                    probability / threshold
========  ==============================================================  =====================================
``cva``   length of the difference of per-band standardised dates         ``1/(1+(t/m)^4)``, t by Otsu/K-means;
                                                                          threshold 0.5
``irmad`` chi-square statistic of the standardised IR-MAD variates         ``chi2.cdf(Z, n_bands)``; threshold
                                                                          0.999 (configurable)
``dsfa``  chi-square distance of SFA-projected Siamese-network features   ``1/(1+(t/d)^2)``, t by Otsu/K-means;
                                                                          threshold 0.5
========  ==============================================================  =====================================

Importing this package does not import torch; only fitting or using a DSFA does.

Examples
--------
>>> import numpy as np
>>> from changedet.unsupervised import create_scorer
>>> rng = np.random.default_rng(0)
>>> before = rng.integers(0, 4000, (3, 50, 50)).astype("uint16")
>>> after = before.copy()
>>> after[:, :10, :10] = 4000 - after[:, :10, :10]
>>> valid = np.ones((50, 50), bool)
>>> scorer = create_scorer("cva").fit(before, after, valid)
>>> probability = scorer.predict(before, after, valid)
>>> probability.dtype, probability.shape, int((probability >= scorer.threshold).sum()) >= 80
(dtype('float32'), (50, 50), True)
"""

from __future__ import annotations

from typing import Any

from changedet.errors import InputError
from changedet.unsupervised._base import ChangeScorer, auto_threshold, ratio_probability
from changedet.unsupervised.cva import CVA
from changedet.unsupervised.irmad import IRMAD

__all__ = [
    "CVA",
    "DSFA",
    "IRMAD",
    "ChangeScorer",
    "auto_threshold",
    "create_scorer",
    "list_methods",
    "ratio_probability",
]

_METHODS = {"cva": "CVA", "irmad": "IRMAD", "dsfa": "DSFA"}


def __getattr__(name: str) -> Any:
    # DSFA lives in its own module so that its (lazy) torch import stays out of CVA/IR-MAD users' way.
    if name == "DSFA":
        from changedet.unsupervised.dsfa import DSFA

        return DSFA
    raise AttributeError(f"module 'changedet.unsupervised' has no attribute {name!r}")


def list_methods() -> list[str]:
    """Names accepted by :func:`create_scorer` (and ``changedet detect --method`` besides ``model``).

    >>> list_methods()
    ['cva', 'dsfa', 'irmad']
    """
    return sorted(_METHODS)


def create_scorer(method: str, **kwargs: Any) -> ChangeScorer:
    """Create an unfitted unsupervised change scorer by name.

    Parameters
    ----------
    method : {"cva", "irmad", "dsfa"}
        The method (case-insensitive).
    **kwargs
        Keyword arguments of the class (:class:`CVA`, :class:`IRMAD`, :class:`DSFA`), e.g. ``seed=1`` or
        ``threshold_method="kmeans"``.

    Returns
    -------
    ChangeScorer
        The scorer; call ``fit`` on a sample, then ``predict`` on windows.

    Raises
    ------
    InputError
        For an unknown method (the message lists the known ones) or an unknown/invalid keyword argument.

    Examples
    --------
    >>> create_scorer("irmad", threshold=0.99).threshold
    0.99
    >>> create_scorer("pca")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    changedet.errors.InputError: unknown change detection method 'pca'; known methods: cva, dsfa, irmad ...
    """
    key = str(method).lower().strip()
    if key not in _METHODS:
        raise InputError(
            f"unknown change detection method {method!r}; known methods: {', '.join(list_methods())} "
            "(or 'model' in `changedet detect --method` for a supervised network)"
        )
    cls = __getattr__("DSFA") if key == "dsfa" else globals()[_METHODS[key]]
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise InputError(f"{key}: {exc}; see help(changedet.unsupervised.{_METHODS[key]}) for the options") from exc
