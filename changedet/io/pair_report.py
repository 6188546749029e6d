"""What :func:`~changedet.io.alignment.check_pair` found about a BEFORE/AFTER pair: :class:`PairReport`.

The report collects the problems (the pair cannot be compared), warnings (it can, with a caveat) and notes, with the
error and warning classes to raise or emit for them, and formats them for ``changedet check`` and JSON. The
percentage and pixel-size formatting that the pair checks share lives here too.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any

from affine import Affine
from rasterio.crs import CRS

from changedet.errors import InputError, PairMismatchError, PairWarning
from changedet.io.coregister import ShiftEstimate
from changedet.io.raster import RasterInfo, crs_to_string

__all__ = ["PairReport"]


@dataclass
class PairReport:
    """Everything :func:`check_pair` found about a BEFORE/AFTER pair.

    ``problems`` prevent the comparison (``ok`` is False); ``warnings`` do not; ``notes`` are facts worth
    showing (sizes, resampling, shift). Messages name the file, what was found, what was expected and the fix.
    """

    before: str
    after: str
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    before_info: RasterInfo | None = None
    after_info: RasterInfo | None = None
    overlap: float | None = None
    overlap_after: float | None = None
    common_bounds: tuple[float, float, float, float] | None = None
    crs: CRS | None = None
    transform: Affine | None = None
    width: int | None = None
    height: int | None = None
    resampled: bool = False
    valid_fraction: float | None = None
    shift: ShiftEstimate | None = None
    indexes: tuple[list[int], list[int]] | None = None
    band_names: list[str] = field(default_factory=list)
    problem_classes: list[type[InputError]] = field(default_factory=list, repr=False)
    warning_classes: list[type[Warning]] = field(default_factory=list, repr=False)

    @property
    def ok(self) -> bool:
        """True when the pair can be compared (no problems)."""
        return not self.problems

    def problem(self, message: str, cls: type[InputError] = PairMismatchError) -> None:
        """Record a problem (and the error class :meth:`raise_for_problems` raises for it)."""
        self.problems.append(message)
        self.problem_classes.append(cls)

    def warn(self, message: str, cls: type[Warning] = PairWarning) -> None:
        """Record a warning (and the warning class :func:`open_pair` emits for it)."""
        self.warnings.append(message)
        self.warning_classes.append(cls)

    def raise_for_problems(self) -> None:
        """Raise the error class of the first problem, with every problem in the message; no-op when ``ok``."""
        if self.ok:
            return
        cls = self.problem_classes[0] if self.problem_classes else PairMismatchError
        if len(self.problems) == 1:
            raise cls(self.problems[0])
        raise cls(
            f"{self.before} / {self.after}: the pair cannot be compared:\n"
            + "\n".join(f"  - {p}" for p in self.problems)
        )

    def emit_warnings(self, stacklevel: int = 3) -> None:
        """Issue each recorded warning with :func:`warnings.warn` and its class."""
        for msg, cls in zip(self.warnings, self.warning_classes, strict=False):
            warnings.warn(msg, cls, stacklevel=stacklevel)

    def format(self) -> str:
        """Human-readable multi-line summary (what ``changedet check`` prints)."""
        lines = [f"BEFORE {self.before}", f"AFTER  {self.after}"]
        for label, info in (("before", self.before_info), ("after", self.after_info)):
            if info is not None:
                lines.append(f"  {label:<6} {_describe_info(info)}")
        if self.width is not None:
            lines.append(
                f"  common grid: {self.width} x {self.height} px, CRS {crs_to_string(self.crs) or 'none (pixels)'}, "
                f"pixel {_fmt_res(self.transform)}"
            )
        if self.overlap is not None:
            lines.append(
                f"  overlap: {_pct(self.overlap)} of BEFORE, {_pct(self.overlap_after or 0)} of AFTER"
                + (
                    f"; valid in both dates: {_pct(self.valid_fraction)}"
                    if self.valid_fraction is not None
                    else ""
                )
            )
        if self.shift is not None:
            lines.append(f"  residual shift: {self.shift.describe()}")
        lines += [f"  note: {n}" for n in self.notes]
        lines += [f"  warning: {w}" for w in self.warnings]
        lines += [f"  problem: {p}" for p in self.problems]
        lines.append(
            "OK: the pair can be compared" if self.ok else f"NOT OK: {len(self.problems)} problem(s)"
        )
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict."""
        return {
            "before": self.before,
            "after": self.after,
            "ok": self.ok,
            "problems": list(self.problems),
            "warnings": list(self.warnings),
            "notes": list(self.notes),
            "before_info": self.before_info.to_dict() if self.before_info else None,
            "after_info": self.after_info.to_dict() if self.after_info else None,
            "overlap": self.overlap,
            "overlap_after": self.overlap_after,
            "common_bounds": list(self.common_bounds) if self.common_bounds else None,
            "grid": None
            if self.width is None
            else {
                "crs": crs_to_string(self.crs),
                "transform": list(self.transform)[:6] if self.transform is not None else None,
                "width": self.width,
                "height": self.height,
            },
            "resampled": self.resampled,
            "valid_fraction": self.valid_fraction,
            "shift": self.shift.to_dict() if self.shift else None,
            "indexes": {"before": self.indexes[0], "after": self.indexes[1]} if self.indexes else None,
            "band_names": list(self.band_names),
        }


def _pct(fraction: float) -> str:
    """A fraction as a percentage that never rounds a small non-zero share to 0.0 %.

    >>> _pct(0.5), _pct(0.000381), _pct(0.0), _pct(0.99996)
    ('50.0%', '0.038%', '0.0%', '99.996%')
    """
    pct = 100.0 * float(fraction)
    if pct == 0.0 or 0.1 <= pct <= 99.9:
        return f"{pct:.1f}%"
    return f"{pct:.2g}%" if pct < 0.1 else f"{pct:.5g}%"


def _fmt_res(t: Affine | None, digits: int = 6) -> str:
    """Pixel width x height in CRS units (the lengths of the pixel's sides, so rotated grids too)."""
    if t is None:
        return "?"
    return f"{math.hypot(t.a, t.d):.{digits}g} x {math.hypot(t.b, t.e):.{digits}g}"


def _describe_info(info: RasterInfo) -> str:
    crs = crs_to_string(info.crs) or "no CRS"
    if crs and len(crs) > 40:
        crs = crs[:37] + "..."
    date = info.date.isoformat() if info.date else "date unknown"
    return (
        f"{info.width} x {info.height} px, {info.count} band(s) {','.join(sorted(set(info.dtypes)))}, {crs}, "
        f"pixel {info.res[0]:.6g} x {info.res[1]:.6g}, nodata {info.nodata}, {date}"
    )
