"""The reports of a batch run: :class:`BatchReport` (``batch-report.json``, rewritten atomically after every
pair) and the reading of JSON files that a run left behind (a pair's ``report.json``, a block plan)."""

from __future__ import annotations

import collections
import contextlib
import datetime as _dt
import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from changedet.errors import ChangedetWarning, OutputError

#: Name of the batch report written into the batch output folder.
BATCH_REPORT = "batch-report.json"


def _report_inputs(report: dict[str, Any]) -> tuple[str, str] | None:
    """(before, after) recorded in a pair's report.json, or None when it does not say."""
    inputs = report.get("inputs") or {}
    before, after = ((inputs.get(k) or {}).get("path") for k in ("before", "after"))
    if not (isinstance(before, str) and before and isinstance(after, str) and after):
        return None
    return before, after


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _json_safe(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


@dataclass
class BatchReport:
    """Per-pair status of a batch run, written to ``batch-report.json`` (atomically) after every change.

    ``pairs`` holds one dict per pair: ``name``, ``before``, ``after``, ``output_dir``, ``status`` (``pending``,
    ``done``, ``failed``, ``skipped``), and when known ``seconds``, ``megapixels``, ``blocks``, ``summary`` (from
    the pair's ``report.json``), ``worker``, ``error`` (``type``, ``message``, ``traceback``) or ``reason``.
    """

    path: Path
    meta: dict[str, Any]
    pairs: list[dict[str, Any]] = field(default_factory=list)
    #: Why the last write of ``batch-report.json`` failed (disk full, read-only folder), or None.
    write_error: str | None = None

    @property
    def counts(self) -> dict[str, int]:
        c = collections.Counter(p["status"] for p in self.pairs)
        return {s: c.get(s, 0) for s in ("done", "skipped", "failed", "pending")}

    @property
    def exit_code(self) -> int:
        """0 when every pair is done or skipped and the report could be written, 1 otherwise."""
        c = self.counts
        return 0 if c["failed"] == 0 and c["pending"] == 0 and self.write_error is None else 1

    def to_dict(self) -> dict[str, Any]:
        return {**self.meta, "updated": _now(), "counts": self.counts, "pairs": self.pairs}

    def write(self) -> None:
        """Write the report atomically; an :class:`~changedet.errors.OutputError` (exit 1) when it cannot be."""
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        try:
            tmp.write_text(json.dumps(self.to_dict(), indent=2, default=str, allow_nan=False))
            os.replace(tmp, self.path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise OutputError(f"{self.path}: cannot write the batch report ({exc.strerror or exc}); check the free "
                              "disk space and write permission of the batch folder") from exc

    def write_or_warn(self) -> None:
        """:meth:`write` while pairs are running: a failure is a warning (once) and :attr:`write_error`, so that
        a full disk does not abandon the pairs still running; the exit code then says the batch did not finish
        cleanly."""
        try:
            self.write()
        except OutputError as exc:
            if self.write_error is None:
                warnings.warn(f"{exc}; the pairs go on", ChangedetWarning, stacklevel=2)
            self.write_error = str(exc)
        else:
            self.write_error = None

    def table(self) -> str:
        """A plain-text summary table, one row per pair."""
        head = ("name", "status", "seconds", "Mpx", "changed %", "polygons", "detail")
        rows = []
        for p in self.pairs:
            s = p.get("summary") or {}
            detail = ""
            if p["status"] == "failed":
                err = p.get("error") or {}
                detail = f"{err.get('type')}: {err.get('message')}".replace("\n", " ")
                detail = detail if len(detail) <= 100 else detail[:97] + "..."
            elif p["status"] == "skipped":
                detail = p.get("reason", "")
            elif p.get("blocks"):
                detail = f"{p['blocks']} blocks"
            rows.append((
                p["name"], p["status"], f"{p['seconds']:.1f}" if p.get("seconds") is not None else "",
                f"{p['megapixels']:.2f}" if p.get("megapixels") is not None else "",
                f"{s['changed_percent']:.3f}" if s.get("changed_percent") is not None else "",
                str(s["n_polygons"]) if s.get("n_polygons") is not None else "", detail,
            ))
        widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
        lines = ["  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)).rstrip(),
                 "  ".join("-" * w for w in widths)]
        lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
        c = self.counts
        lines.append(f"{len(self.pairs)} pairs: {c['done']} done, {c['skipped']} skipped, {c['failed']} failed"
                     + (f", {c['pending']} pending" if c["pending"] else ""))
        return "\n".join(lines)
