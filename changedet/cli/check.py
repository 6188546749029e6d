"""``changedet check BEFORE AFTER``: can the two rasters be compared, and how?"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Literal, overload

import click

from changedet.cli._common import RASTER, echo_json


@overload
def parse_indexes(text: str | None, most: Literal[2] = 2) -> list[int] | tuple[list[int], list[int]] | None: ...
@overload
def parse_indexes(text: str | None, most: int | None) -> list[int] | tuple[list[int], ...] | None: ...
def parse_indexes(text: str | None, most: int | None = 2) -> list[int] | tuple[list[int], ...] | None:
    """Parse ``--indexes``: ``1,2,3``, ranges ``1-3``, or one list per raster separated by ``:`` (``BEFORE:AFTER``
    such as ``1,2,3:3,2,1``; ``changedet detect`` with a series takes one per date, ``most=None``).

    >>> parse_indexes("1-3,5"), parse_indexes("1,2:2,1"), parse_indexes("1:2:3", most=None), parse_indexes(None)
    ([1, 2, 3, 5], ([1, 2], [2, 1]), ([1], [2], [3]), None)
    """
    if text is None:
        return None
    if not text.strip():
        raise click.BadParameter("an empty value: give 1-based band numbers such as 1,2,3 (or leave --indexes out)",
                                 param_hint="--indexes")

    def one(part: str) -> list[int]:
        out: list[int] = []
        if not part.strip():
            side = "a side of BEFORE:AFTER" if text.count(":") == 1 else "one of the lists separated by ':'"
            raise click.BadParameter(f"{text!r}: {side} is empty; give every one, e.g. 1,2,3:3,2,1",
                                     param_hint="--indexes")
        for tok in part.split(","):
            tok = tok.strip()
            if not tok:
                raise click.BadParameter(f"{text!r}: an empty band number between commas; give e.g. 1,2,3",
                                         param_hint="--indexes")
            try:
                if "-" in tok:
                    lo, hi = (int(v) for v in tok.split("-", 1))
                    out.extend(range(lo, hi + 1) if lo <= hi else range(lo, hi - 1, -1))
                else:
                    out.append(int(tok))
            except ValueError:
                raise click.BadParameter(
                    f"{text!r}: give 1-based band numbers such as 1,2,3 or 1-3, or BEFORE:AFTER like 1,2,3:3,2,1",
                    param_hint="--indexes",
                ) from None
        return out

    if ":" in text:
        parts = text.split(":")
        if most is not None and len(parts) > most:
            raise click.BadParameter(f"{text!r}: {len(parts)} lists separated by ':' for {most} rasters; give "
                                     "BEFORE:AFTER such as 1,2,3:3,2,1", param_hint="--indexes")
        return tuple(one(p) for p in parts)
    return one(text)


def _common_named_bands(before: Path, after: Path) -> tuple[tuple[list[int], list[int]] | None, str | None]:
    """For two rasters with different band counts whose bands are all named (a 13-band L1C and a 12-band L2A
    stack, say): the bands both have, by name, and a note saying so; ``detect`` picks a model's bands by name the
    same way, so the pair can be compared. ``(None, None)`` otherwise (``check_pair`` then reports the mismatch)."""
    from changedet.errors import ChangedetError
    from changedet.io.raster import raster_info

    try:
        b, a = raster_info(before), raster_info(after)
    except ChangedetError:
        return None, None  # check_pair reports why the file cannot be read
    if b.count == a.count or not all(b.descriptions) or not all(a.descriptions):
        return None, None
    common = [n for n in b.descriptions if n in a.descriptions]
    if not common:
        return None, None
    picks = ([b.descriptions.index(n) + 1 for n in common], [a.descriptions.index(n) + 1 for n in common])
    return picks, (f"bands: {b.count} and {a.count}; checked the {len(common)} bands both have by name "
                   f"({', '.join(str(n) for n in common)}), as detect picks a model's bands by name")


def _model_bands_of_other_counts(before: Path, after: Path, default: dict[str, Any] | None,
                                 ) -> tuple[tuple[list[int], list[int]] | None, str | None]:
    """For two rasters with different band counts that share no band names (a Landsat 5 and a Landsat 8 stack, say):
    the bands detect's default model (``default``, from :func:`_default_model`) reads in each, found by name or
    colour, and a note saying so; detect compares those. ``(None, None)`` when the counts match or no default model
    finds its bands in both."""
    from changedet.errors import ChangedetError
    from changedet.io.bands import identified_bands
    from changedet.io.raster import raster_info
    from changedet.models.bundled import list_bundled

    if default is None:
        return None, None
    idx, bands = default["indexes"], default["bands"]
    try:
        info_a = raster_info(after)
        if raster_info(before).count == info_a.count:
            return None, None
    except ChangedetError:
        return None, None
    want = next(m.band_names for m in list_bundled() if m.name == default["name"])
    if identified_bands(info_a, want or []) is None:  # AFTER's bands were not found, only assumed at BEFORE's places
        return None, None
    return (idx["before"], idx["after"]), (
        f"bands: different counts; checked the bands detect's default model {default['name']} reads in each, by name "
        f"or colour: {', '.join(bands['before'])} of BEFORE and {', '.join(bands['after'])} of AFTER")


def _default_model(before: Path, after: Path) -> tuple[dict[str, Any] | None, Exception | None]:
    """The bundled model ``detect`` would run on the pair without ``--model`` and the bands of each date
    (:func:`changedet.api.default_model_for`), or None and why none would (the error detect gives: a
    :class:`~changedet.errors.PairMismatchError` when AFTER lacks the model's bands, which check reports as a
    problem)."""
    from changedet.api import default_model_for
    from changedet.errors import ChangedetError

    try:
        return default_model_for(before, after), None
    except ChangedetError as exc:
        return None, exc


def _default_model_note(default: dict[str, Any] | None, why: Exception | None) -> str:
    """The report's note on the default model, so that check's OK does not hide the error detect gives."""
    if default is None:
        return f"detect needs --model (and --indexes): {why}"
    bands = default["bands"]
    same = bands["before"] == bands["after"]
    return (f"detect's default model: {default['name']} on bands {', '.join(bands['before'])}"
            + ("" if same else f" of BEFORE and {', '.join(bands['after'])} of AFTER")
            + " (choose another with --model)")


@click.command("check")
@click.argument("before", type=RASTER)
@click.argument("after", type=RASTER)
@click.option(
    "--indexes",
    default=None,
    metavar="LIST",
    help="1-based bands to compare: 1,2,3 or 1-3 for both dates, or BEFORE:AFTER such as 1,2,3:3,2,1.",
)
@click.option(
    "--resampling",
    default="bilinear",
    show_default=True,
    type=click.Choice(["nearest", "bilinear", "cubic", "average"]),
    help="How AFTER would be resampled onto the BEFORE grid.",
)
@click.option(
    "--no-shift",
    "shift",
    flag_value=False,
    default=True,
    help="Skip the residual co-registration shift estimate.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON on stdout.")
def command(
    before: Path, after: Path, indexes: str | None, resampling: str, shift: bool, as_json: bool
) -> None:
    """Check whether BEFORE and AFTER can be compared and report everything found.

    Lists every problem (the pair cannot be compared: unreadable file, no overlap, band count mismatch, only one
    date georeferenced, ...) and every warning (AFTER resampled because of another CRS, pixel size or size, partial
    overlap, dates out of order, residual shift above half a pixel, ...), the common grid, the overlap, the share
    of valid pixels and the residual shift in pixels and metres.

    Exit status: 0 the pair can be compared (possibly with warnings), 1 it cannot (every reason is printed).
    """
    from changedet.errors import PairMismatchError
    from changedet.io.alignment import check_pair

    selected = parse_indexes(indexes)
    note = None
    with warnings.catch_warnings(record=True) as seen:  # each helper opens both files: say each warning once
        warnings.simplefilter("always")
        default, why = _default_model(before, after) if selected is None else (None, None)
        if selected is None:
            selected, note = _common_named_bands(before, after)
        if selected is None:
            selected, note = _model_bands_of_other_counts(before, after, default)
    for text, category in dict.fromkeys((str(w.message), w.category) for w in seen):
        warnings.warn(text, category, stacklevel=1)
    report = check_pair(before, after, indexes=selected, estimate_shift=shift, resampling=resampling)
    if note:
        report.notes.append(note)
    if isinstance(why, PairMismatchError):  # AFTER lacks the model's bands: detect refuses the pair, and says why
        # its per-date fix replaces check_pair's generic band-count hint (--indexes 1,2,3), which is wrong here
        for i in reversed([i for i, p in enumerate(report.problems) if " band(s) but " in p]):
            del report.problems[i], report.problem_classes[i]
        report.problem(str(why))
    if report.ok and indexes is None:
        report.notes.append(_default_model_note(default, why))
    if as_json:
        echo_json(report.to_dict() | ({"default_model": default} if report.ok and indexes is None else {}))
    else:
        click.echo(report.format())
    if not report.ok:
        raise SystemExit(1)
