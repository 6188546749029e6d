"""Which model a detect run uses and which bands of each date feed it, and whether the inputs' values fit the
statistics the model was trained on.

Without ``model`` and ``checkpoint`` the bundled default is chosen from the input's band count, pixel size, band names
and colours; the checkpoint's bands are then matched by name, else by colour, else by count
(:func:`_resolve_for_input`), for each date (:func:`_bands_per_date`). ``changedet check`` reports the same choice
(:func:`default_model_for`).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from changedet.errors import ChangedetWarning, CheckpointError
from changedet.io.bands import band_colours, identified_bands


def _source_name(src: Any) -> str:
    """The path of an input as given (a str or path-like), or an open dataset's ``name``."""
    if isinstance(src, (str, os.PathLike)):
        return os.fspath(src)  # type: ignore[return-value]
    name = getattr(src, "name", None)
    return str(name if name is not None else src)


def _is_pair_form(indexes: Any) -> bool:
    """Whether ``indexes`` is ``([BEFORE bands], [AFTER bands])`` rather than one list for both dates."""
    seq = list(indexes) if indexes else []
    return len(seq) == 2 and all(isinstance(s, Sequence) and not isinstance(s, str) for s in seq)


def _n_selected(indexes: Any) -> int:
    """Number of bands per date that ``indexes`` selects (one list, or a BEFORE/AFTER pair of lists)."""
    return len(next(iter(indexes))) if _is_pair_form(indexes) else len(indexes)


def _select_bands(info: Any, meta: Any, indexes: Any, source: str) -> Any:
    """1-based band indexes of the input that feed the model, matched by name where possible."""
    want = list(meta.band_names or [])
    n_model = meta.in_channels or len(want)
    if indexes:
        n_sel = _n_selected(indexes)
        if n_sel != n_model:
            raise CheckpointError(
                f"{source}: --indexes selects {n_sel} bands but the model {meta.name or meta.architecture} "
                f"expects {n_model} ({', '.join(want)}); select exactly {n_model} bands, or choose a model for "
                f"{n_sel} bands with --model (`changedet models` lists them, e.g. s2-13band for 13)"
            )
        if _is_pair_form(indexes):
            return [list(i) for i in indexes]
        chosen = [int(i) for i in indexes]
        _warn_named_mismatch(info, want, chosen, source)
        return chosen
    found = identified_bands(info, want)  # by name, colour (RGBA, RGB + NIR, ...) or Sentinel-2 band order
    if found is not None:
        return None if found == list(range(1, info.count + 1)) else found
    if info.count == n_model:
        return None
    raise CheckpointError(
        f"{source}: has {info.count} bands but the model {meta.name or meta.architecture} expects {n_model} "
        f"({', '.join(want) or 'unnamed'}); pass --indexes with {n_model} 1-based band numbers, or choose a model "
        "for this band count (`changedet models` lists them)"
    )


def _bands_per_date(infos: Sequence[Any], meta: Any, select: Any) -> Any:
    """The bands each date feeds the model when the user named none: the first date's selection (``select``, from
    :func:`_select_bands`), and for each later date its own where its names or colours identify the model's bands
    (a 3-band B02, B03, B04 file beside a 13-band stack), else the first date's positions.

    Returns ``select`` unchanged when every date reads the same bands, else one list of 1-based indexes per date.
    Raises :class:`~changedet.errors.PairMismatchError` when a later date's names and colours do not identify the
    model's bands and it lacks the first date's positions (B04, B03, B02 at bands 4, 3, 2 of a 13-band stack beside
    3 unnamed bands): the message says so and gives the per-date ``--indexes`` that would work.
    """
    from changedet.errors import PairMismatchError

    want = list(meta.band_names or [])
    first = list(select) if select else list(range(1, infos[0].count + 1))
    per_date = [first]
    for info in infos[1:]:
        own = identified_bands(info, want)
        if own is None and any(int(i) > info.count for i in first):
            raise PairMismatchError(_missing_bands_message(infos[0], info, meta, first))
        per_date.append(own or first)
    return select if all(p == first for p in per_date) else per_date


def _missing_bands_message(first_info: Any, info: Any, meta: Any, first: list[int]) -> str:
    """Why a later date cannot feed the model the first date's bands, and the ``--indexes BEFORE:AFTER`` fix."""
    from changedet.models.bundled import S2_BANDS

    want = [str(w) for w in (meta.band_names or [])]
    model = meta.name or meta.architecture
    src, ref = _source_name(getattr(info, "path", None) or "AFTER"), _source_name(
        getattr(first_info, "path", None) or "BEFORE")
    bands = ", ".join(want) or f"{len(first)} bands"
    at = ",".join(map(str, first))
    names = [str(d) for d in (info.descriptions or ()) if d]
    plural = "band" if info.count == 1 else "bands"
    what = (f"{info.count} unnamed {plural}" if not names
            else f"{info.count} {plural} ({', '.join(str(d or '-') for d in info.descriptions)})")
    missing = sorted({int(i) for i in first if int(i) > info.count})
    head = (f"{src}: the model {model} reads {bands}, which {ref} holds at bands {at}; {src} has {what}, whose names "
            f"and colours do not identify {bands}, and no band {', '.join(map(str, missing))}")
    if info.count < len(first):
        return (f"{head}: it has fewer bands than the model reads; choose a model for {info.count} band(s) with "
                "--model (`changedet models` lists them)")
    if info.count == len(want) and want and all(w.upper() in S2_BANDS for w in want):
        ascending = sorted(want, key=lambda w: S2_BANDS.index(w.upper()))  # the sensor order of an export
        guess = ",".join(str(ascending.index(w) + 1) for w in want)
        rest = ",".join(str(want.index(w) + 1) for w in want)
        example = (f"--indexes {at}:{guess} if its bands are {', '.join(ascending)} in that order "
                   f"(--indexes {at}:{rest} if they are {', '.join(want)})")
    else:
        example = f"--indexes {at}:LIST with the {len(first)} bands of {src} that hold {bands}, in that order"
    return (f"{head}. Give each date's bands with {example}, or name its bands (band descriptions) "
            f"{', '.join(want) or 'as the model does'}.")


def _warn_named_mismatch(info: Any, want: list[str], chosen: list[int], source: str) -> None:
    """A warning when ``--indexes`` feeds a model bands whose names contradict the ones it was trained on (B02 into
    an input trained on B04, say): a band order given on purpose, or a slip; the run goes on either way."""
    from changedet.models.bundled import S2_BANDS

    names = [str(d).strip().upper() if d else "" for d in (info.descriptions or ())]
    picked = [names[i - 1] if 0 < i <= len(names) else "" for i in chosen]
    known = {b.upper() for b in S2_BANDS}
    if len(want) != len(picked) or not all(p in known for p in picked) or not all(w.upper() in known for w in want):
        return
    if picked != [w.upper() for w in want]:
        warnings.warn(
            f"{source}: --indexes {','.join(map(str, chosen))} feeds the model {', '.join(picked)}, but it was trained "
            f"on {', '.join(want)} in that order; leave --indexes out to pick them by name", ChangedetWarning,
            stacklevel=4,
        )


def _resolve_for_input(model: Any, checkpoint: Any, info: Any, select: Any, source: str) -> tuple[Any, Any, Any]:
    """Load the model for an input and pick its bands: ``(net, meta, indexes)``.

    Without ``model`` and ``checkpoint`` the default bundled model is chosen from the band count, pixel size, band
    names and colour interpretation of ``info`` (:func:`~changedet.models.bundled.default_model_name`); the
    checkpoint's bands are then matched by name, else by colour, else by count (:func:`_select_bands`).
    """
    from changedet.models.bundled import resolve_model

    pixel = _pixel_metres(info)
    if select:  # out-of-range bands first: `--indexes 20` is not "no bundled model takes 1 bands"
        from changedet.errors import PairMismatchError

        bad = [i for i in (select[0] if _is_pair_form(select) else select) if not 1 <= int(i) <= info.count]
        if bad:
            raise PairMismatchError(f"{source}: band index {bad} out of range; it has {info.count} band(s) and "
                                    f"indexes are 1-based (1..{info.count}).")
    n_in = _n_selected(select) if select else info.count
    peek = _peek_meta(model, checkpoint, n_in, pixel, None if select else info)
    if peek is not None:  # match the checkpoint's bands by name before loading it
        select = _select_bands(info, peek, select, source)
        n_in = _n_selected(select) if select else info.count
        if model is None and checkpoint is None and peek.name:
            model = peek.name  # the default chosen from the whole input, now applied to the selected bands
    net, meta = resolve_model(model, band_count=n_in, pixel_size=pixel, checkpoint=checkpoint)
    return net, meta, _select_bands(info, meta, select, source)


def _pixel_metres(info: Any) -> float | None:
    """The pixel width in metres, roughly (degrees taken at the equator): enough to pick a default model."""
    pixel = abs(info.transform.a) if info.georeferenced else None
    if pixel is not None and info.crs is not None and info.crs.is_geographic:
        pixel = pixel * 111_320.0
    return pixel


def default_model_for(before: Any, after: Any) -> dict[str, Any]:
    """The bundled model ``detect`` runs on a pair when no model is named, and the bands each date feeds it.

    What ``changedet check`` reports: ``{"name": "s2-rgb", "bands": {"before": ["B04", ...], "after": [...]}}``
    (1-based indexes under ``"indexes"``). Raises the :class:`~changedet.errors.CheckpointError` that ``detect``
    would raise when no bundled model takes the input (say, an unnamed 4-band raster).
    """
    from changedet.io.raster import raster_info
    from changedet.models.bundled import default_model_name, list_bundled

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the pixel-size and georeferencing warnings are detect's (and check's) own
        infos = [raster_info(before), raster_info(after)]
        info = infos[0]
        name = default_model_name(info.count, _pixel_metres(info), band_names=info.descriptions,
                                  colors=band_colours(info))
        meta = {m.name: m for m in list_bundled()}[name]
        select = _select_bands(info, meta, None, _source_name(before))
    per_date = _bands_per_date(infos, meta, select)
    if per_date is select:  # both dates read the same bands
        per_date = [list(select) if select else list(range(1, info.count + 1))] * 2
    picked = {"before": list(per_date[0]), "after": list(per_date[1])}
    return {"name": name, "indexes": picked,
            "bands": {k: [_band_name(infos[j], i) for i in picked[k]] for j, k in enumerate(("before", "after"))}}


def _band_name(info: Any, index: int) -> str:
    """The description of 1-based band ``index`` of ``info``, else ``B<index>``."""
    descriptions = tuple(info.descriptions or ())
    name = descriptions[index - 1] if 0 < index <= len(descriptions) else None
    return str(name) if name else f"B{index}"


def _peek_meta(model: Any, checkpoint: Any, band_count: int, pixel: float | None, info: Any = None) -> Any:
    """The checkpoint metadata that ``resolve_model`` would load, without loading weights (None if unknown)."""
    from changedet.errors import ChangedetError
    from changedet.models.bundled import default_model_name, list_bundled
    from changedet.models.checkpoint import read_meta

    try:
        if checkpoint is not None:
            return read_meta(checkpoint)
        bundled = {m.name: m for m in list_bundled()}
        name = str(model) if model is not None else default_model_name(
            band_count, pixel, band_names=getattr(info, "descriptions", None),
            colors=band_colours(info) if info is not None else None)
        if name in bundled:
            return bundled[name]
        if Path(name).suffix in (".json", ".safetensors") or Path(name).with_suffix(".json").exists():
            return read_meta(name)
    except (ChangedetError, OSError):
        return None
    return None


def _checkpoint_file(model: Any, checkpoint: Any) -> Any:
    """The checkpoint file a run loaded when the user named one (``checkpoint=`` or ``--model PATH``), else None.

    A bundled model is reported by its name; a checkpoint file by its path, even when it carries the name of a
    bundled model (``changedet train`` with ``checkpoint_name: s2-rgb``), so the report tells them apart.
    """
    if checkpoint is not None:
        return checkpoint
    if model is None:
        return None
    from changedet.models.bundled import list_bundled
    from changedet.models.checkpoint import checkpoint_paths

    if str(model) in {m.name for m in list_bundled()}:
        return None
    try:
        weights, _json = checkpoint_paths(model)
    except (ValueError, TypeError, OSError):
        return None
    return weights if weights.is_file() else None


#: A band is "far outside" the training statistics when its scene mean lies more than this many training standard
#: deviations from the training mean, or its spread differs from the training spread by more than this factor.
RANGE_Z_LIMIT = 4.0
RANGE_STD_FACTOR = 10.0


def _check_training_range(pair: Any, meta: Any, scene: tuple[Any, Any], source_names: tuple[str, str],
                          checkpoint: Any) -> dict[str, list[str]]:
    """Warn (:class:`~changedet.errors.InputRangeWarning`) when a date's band statistics are far from the
    checkpoint's fixed normalisation statistics (other units, scaling or bands); return the bands per date.

    Only checkpoints with ``normalization.mode == "fixed"`` record training statistics; a ``"scene"`` checkpoint
    z-scores each date with its own statistics, so the absolute range of the input does not matter to it.
    """
    from changedet.errors import InputRangeWarning

    if getattr(getattr(pair, "report", None), "valid_fraction", None) == 0.0:
        return {}
    t_mean = np.asarray(meta.normalization.get("mean") or [], np.float64)
    t_std = np.asarray(meta.normalization.get("std") or [], np.float64)
    if t_mean.size == 0 or t_std.size != t_mean.size:
        return {}
    names = list(meta.band_names or []) or list(getattr(pair, "band_names", []) or [])
    names += [f"band {i + 1}" for i in range(len(names), t_mean.size)]
    model = meta.name or (str(checkpoint) if checkpoint else meta.architecture)
    found: dict[str, list[str]] = {}
    for which, source, (mean, std) in zip(("before", "after"), source_names, scene, strict=True):
        mean, std = np.asarray(mean, np.float64), np.asarray(std, np.float64)
        if mean.size != t_mean.size:
            continue
        safe = np.where(t_std > 0, t_std, 1.0)
        z = np.abs(mean - t_mean) / safe
        ratio = np.where(std > 0, std / safe, 1.0)
        bad = np.flatnonzero((z > RANGE_Z_LIMIT) | (ratio > RANGE_STD_FACTOR) | (ratio < 1.0 / RANGE_STD_FACTOR))
        if bad.size == 0:
            continue
        found[which] = [names[i] for i in bad]
        detail = ", ".join(
            f"{names[i]} mean {mean[i]:.4g} (trained on {t_mean[i]:.4g} +/- {t_std[i]:.4g})" for i in bad[:6]
        ) + (f", ... ({bad.size} bands)" if bad.size > 6 else "")
        warnings.warn(
            f"{source}: values far outside the statistics the model {model} was trained on: {detail}. The "
            "predictions may be meaningless: check the units and scaling (e.g. reflectance x 10000 vs 0..1, "
            "digital numbers vs reflectance) and the band order (--indexes), or use a model trained on such data "
            "(a scene-normalised model adapts to each scene's range).",
            InputRangeWarning,
            stacklevel=4,
        )
    return found
