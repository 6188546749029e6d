"""Checkpoints: safetensors weights plus a JSON model card, written atomically, loaded without unpickling.

A checkpoint is two files with the same stem::

    <stem>.safetensors   the state dict (weights and buffers, e.g. batch-norm statistics, metric calibration)
    <stem>.json          CheckpointMeta: architecture and constructor kwargs, band names, normalisation, pixel size,
                         calibrated threshold, metrics, training summary, changedet version, format version,
                         and the SHA-256 of the weights file

Loading validates everything before a tensor is touched: unknown architecture, other format version, missing keys,
band-count mismatch with the input, missing/unexpected/mis-shaped tensors and a weights file that does not belong to
the JSON all raise :class:`~changedet.errors.CheckpointError` naming the file, what was found and what was expected.
Legacy ``.pt``/``.pth`` weights are read only with ``allow_pickle=True`` and then with
``torch.load(weights_only=True)``.

>>> import tempfile, torch
>>> from pathlib import Path
>>> from changedet.models import create_model
>>> model = create_model("fc-siam-diff", in_channels=3).eval()
>>> meta = CheckpointMeta(band_names=["red", "green", "blue"], pixel_size=10.0, threshold=0.4)
>>> with tempfile.TemporaryDirectory() as tmp:
...     path = save_checkpoint(model, Path(tmp) / "demo", meta)
...     loaded, meta2 = load_checkpoint(path, in_channels=3)
>>> path.name, meta2.architecture, meta2.threshold
('demo.safetensors', 'fc-siam-diff', 0.4)
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from changedet._version import __version__
from changedet.errors import CheckpointError, ModelError, UnknownModelError

__all__ = ["FORMAT_VERSION", "CheckpointMeta", "checkpoint_paths", "load_checkpoint", "read_meta", "save_checkpoint"]

#: Version of the checkpoint JSON layout written by this changedet.
FORMAT_VERSION = 1

_REQUIRED_KEYS = ("architecture", "kwargs", "band_names", "normalization", "threshold", "format_version")
_WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth")


@dataclass
class CheckpointMeta:
    """Everything needed to rebuild and apply a trained model, stored as ``<stem>.json``.

    Parameters
    ----------
    architecture : str
        Registry name (``create_model(architecture, **kwargs)``); filled from the model by :func:`save_checkpoint`.
    kwargs : dict
        Constructor keyword arguments without ``"name"``; filled from ``model.config`` by :func:`save_checkpoint`.
    band_names : list of str
        Names of the input bands, in order (one per input channel).
    normalization : dict
        ``{"mode": "scene"|"fixed", "mean": [...], "std": [...]}``. ``"scene"``: each date is z-scored per band
        with its own statistics (mean/std may be empty); ``"fixed"``: the stored per-band mean/std are used.
    pixel_size : float or None
        Ground sampling distance of the training data in metres (None if unknown).
    threshold : float
        Calibrated probability threshold above which a pixel is "changed".
    metrics : dict
        Validation metrics (e.g. ``{"f1": 0.52, "iou": 0.35}``).
    training : dict
        Training summary (datasets, epochs, loss, seed...).
    version : str
        changedet version that wrote the checkpoint.
    format_version : int
        Layout version of this JSON (:data:`FORMAT_VERSION`).
    name : str
        Short name (e.g. ``"s2-13band"``).
    description : str
        One-line description for listings.
    weights_sha256 : str
        SHA-256 of the weights file, written by :func:`save_checkpoint` and checked on load (empty: not checked).
    """

    architecture: str = ""
    kwargs: dict[str, Any] = field(default_factory=dict)
    band_names: list[str] = field(default_factory=list)
    normalization: dict[str, Any] = field(default_factory=lambda: {"mode": "scene", "mean": [], "std": []})
    pixel_size: float | None = None
    threshold: float = 0.5
    metrics: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    version: str = __version__
    format_version: int = FORMAT_VERSION
    name: str = ""
    description: str = ""
    weights_sha256: str = ""

    @property
    def in_channels(self) -> int | None:
        """Input bands the model expects (from ``kwargs["in_channels"]``), or None when unknown."""
        value = self.kwargs.get("in_channels")
        return int(value) if value is not None else None

    @property
    def model_config(self) -> dict[str, Any]:
        """``{"name": architecture, **kwargs}``, i.e. what ``create_model(**...)`` takes."""
        return {"name": self.architecture, **self.kwargs}

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict of all fields."""
        return json.loads(json.dumps(dataclasses.asdict(self), allow_nan=False))

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str | os.PathLike[str] = "<dict>") -> CheckpointMeta:
        """Validate and build from a parsed JSON dict (unknown keys are ignored for forward compatibility).

        Raises
        ------
        CheckpointError
            Naming ``source`` on any missing key, wrong type or unsupported ``format_version``.
        """
        if not isinstance(data, dict):
            raise CheckpointError(f"{source}: expected a JSON object, found {type(data).__name__}")
        missing = [k for k in _REQUIRED_KEYS if k not in data]
        if missing:
            raise CheckpointError(
                f"{source}: checkpoint JSON lacks the keys {missing}; expected at least {list(_REQUIRED_KEYS)}. "
                "Re-save the checkpoint with changedet.models.checkpoint.save_checkpoint."
            )
        fmt = data["format_version"]
        if fmt != FORMAT_VERSION:
            hint = "upgrade changedet" if isinstance(fmt, int) and fmt > FORMAT_VERSION else "re-save it"
            raise CheckpointError(
                f"{source}: checkpoint format_version {fmt!r} is not supported (this changedet reads "
                f"{FORMAT_VERSION}); {hint}."
            )
        names = {f.name for f in dataclasses.fields(cls)}
        meta = cls(**{k: v for k, v in data.items() if k in names})
        meta.validate(source)
        return meta

    def validate(self, source: str | os.PathLike[str] = "<meta>") -> None:
        """Check types and internal consistency (band names vs in_channels, normalisation lengths)."""
        def bad(msg: str) -> CheckpointError:
            return CheckpointError(f"{source}: {msg}")

        if not isinstance(self.architecture, str) or not self.architecture:
            raise bad(f"'architecture' must be a registered model name, found {self.architecture!r}")
        if not isinstance(self.kwargs, dict) or "name" in self.kwargs:
            raise bad("'kwargs' must be an object of constructor arguments without 'name'")
        if not isinstance(self.band_names, list) or not all(isinstance(b, str) for b in self.band_names):
            raise bad(f"'band_names' must be a list of strings, found {self.band_names!r}")
        n = self.in_channels
        if n is not None and self.band_names and len(self.band_names) != n:
            raise bad(f"{len(self.band_names)} band_names but the model has in_channels={n}")
        norm = self.normalization
        if not isinstance(norm, dict) or norm.get("mode") not in ("scene", "fixed"):
            raise bad(f"'normalization' must be {{'mode': 'scene'|'fixed', 'mean': [...], 'std': [...]}}, found {norm!r}")
        mean, std = norm.get("mean") or [], norm.get("std") or []
        if norm["mode"] == "fixed":
            if n is not None and (len(mean) != n or len(std) != n):
                raise bad(f"fixed normalization needs {n} mean and std values, found {len(mean)} and {len(std)}")
            if not all(isinstance(s, (int, float)) and math.isfinite(s) and s > 0 for s in std):
                raise bad(f"normalization std values must be finite and > 0, found {std!r}")
        if self.pixel_size is not None and not (isinstance(self.pixel_size, (int, float)) and self.pixel_size > 0):
            raise bad(f"'pixel_size' must be a positive number of metres or null, found {self.pixel_size!r}")
        if not isinstance(self.threshold, (int, float)) or not math.isfinite(self.threshold):
            raise bad(f"'threshold' must be a finite number, found {self.threshold!r}")


def checkpoint_paths(path: str | os.PathLike[str]) -> tuple[Path, Path]:
    """Return ``(weights_path, json_path)`` for a checkpoint given as a stem, ``.safetensors``, ``.pt`` or ``.json``."""
    p = Path(path)
    if p.suffix == ".json":
        return p.with_suffix(".safetensors"), p
    if p.suffix in _WEIGHT_SUFFIXES:
        return p, p.with_suffix(".json")
    return p.with_name(p.name + ".safetensors"), p.with_name(p.name + ".json")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@contextlib.contextmanager
def _temp_beside(target: Path) -> Iterator[Path]:
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
    finally:
        tmp_path.unlink(missing_ok=True)


def save_checkpoint(model: nn.Module, path: str | os.PathLike[str], meta: CheckpointMeta | None = None, *,
                    overwrite: bool = True) -> Path:
    """Write ``<stem>.safetensors`` and ``<stem>.json`` atomically.

    Both files are written under temporary names in the target folder and renamed into place only when complete,
    the JSON last, so an interrupted save never leaves a half-written checkpoint.

    Parameters
    ----------
    model : ChangeModel
        A model from :func:`~changedet.models.create_model` (it needs ``config``).
    path : path-like
        Stem, or a ``.safetensors``/``.json`` path; the folder is created if needed.
    meta : CheckpointMeta, optional
        Band names, normalisation, threshold... ``architecture`` and ``kwargs`` are filled from ``model.config``
        (a different value given here is an error).
    overwrite : bool
        Replace an existing checkpoint (default True, as training saves the best model repeatedly).

    Returns
    -------
    Path
        The ``.safetensors`` path (give it to :func:`load_checkpoint`).
    """
    from safetensors.torch import save

    weights_path, json_path = checkpoint_paths(path)
    if weights_path.suffix != ".safetensors":
        raise CheckpointError(f"{weights_path}: checkpoints are written as .safetensors; give a stem or .safetensors")
    config = getattr(model, "config", None)
    if not isinstance(config, dict) or "name" not in config:
        raise CheckpointError(f"{weights_path}: cannot save a model without a 'config' (build it with create_model)")
    meta = dataclasses.replace(meta) if meta is not None else CheckpointMeta()
    kwargs = {k: v for k, v in config.items() if k != "name"}
    if meta.architecture and meta.architecture != config["name"]:
        raise CheckpointError(f"{weights_path}: meta.architecture {meta.architecture!r} but the model is "
                              f"{config['name']!r}")
    if meta.kwargs and meta.kwargs != kwargs:
        raise CheckpointError(f"{weights_path}: meta.kwargs {meta.kwargs} differ from the model's config {kwargs}")
    meta.architecture, meta.kwargs = config["name"], kwargs
    meta.version, meta.format_version = __version__, FORMAT_VERSION
    meta.validate(json_path)
    if not overwrite and (weights_path.exists() or json_path.exists()):
        from changedet.errors import OutputExistsError

        raise OutputExistsError(f"{weights_path}: checkpoint exists; pass overwrite=True or choose another name")

    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    weights_path.parent.mkdir(parents=True, exist_ok=True)
    with _temp_beside(weights_path) as tmp_w, _temp_beside(json_path) as tmp_j:
        tmp_w.write_bytes(_canonical_safetensors(save(state, metadata={
            "format": "pt", "changedet": __version__, "architecture": meta.architecture})))
        meta.weights_sha256 = _sha256(tmp_w)
        tmp_j.write_text(json.dumps(meta.to_dict(), indent=2) + "\n", encoding="utf-8")
        umask = os.umask(0)  # the temporary files are private (0600); give them the mode of any new file (0644)
        os.umask(umask)
        for tmp in (tmp_w, tmp_j):
            os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp_w, weights_path)
        os.replace(tmp_j, json_path)
    return weights_path


def _canonical_safetensors(data: bytes) -> bytes:
    """The same safetensors file with its JSON header's keys sorted (``__metadata__`` first), padded with spaces
    to its length, as the format allows: safetensors writes the header from a hash map, so two saves of the same
    weights otherwise differ from process to process (and with them ``weights_sha256``)."""
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + n])
    meta = header.pop("__metadata__", None)
    ordered = ({"__metadata__": dict(sorted(meta.items()))} if meta else {}) | dict(sorted(header.items()))
    text = json.dumps(ordered, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    if len(text) > n:  # pragma: no cover - the same content in compact form is never longer
        return data
    return data[:8] + text.ljust(n, b" ") + data[8 + n :]


def _refuse_folder(path: str | os.PathLike[str]) -> None:
    """A :class:`CheckpointError` for a folder given as a checkpoint (a training run's output folder, say), naming a
    checkpoint inside it."""
    if Path(path).is_dir():
        found = sorted(q.name for q in Path(path).glob("*.json") if q.with_suffix(".safetensors").is_file())
        hint = f"e.g. {Path(path) / found[0]}" if found else "none found in it"
        raise CheckpointError(
            f"{path}: a folder, not a checkpoint; give the checkpoint file ({hint}); a checkpoint is "
            "<stem>.safetensors plus <stem>.json (written by changedet train)"
        )


def read_meta(path: str | os.PathLike[str]) -> CheckpointMeta:
    """Read and validate the JSON of a checkpoint (stem, ``.json`` or weights path) without loading weights."""
    _refuse_folder(path)
    weights_path, json_path = checkpoint_paths(path)
    if not json_path.is_file() and weights_path.suffix in (".pt", ".pth") and weights_path.is_file():
        raise CheckpointError(
            f"{weights_path}: a PyTorch pickle without changedet's {json_path.name} beside it; changedet reads "
            "<stem>.safetensors plus <stem>.json (written by changedet train). Save the weights with "
            "changedet.models.checkpoint.save_checkpoint(model, path, meta) (pickles load only with "
            "load_checkpoint(..., allow_pickle=True) and a JSON beside them)"
        )
    if not json_path.is_file():
        raise CheckpointError(
            f"{json_path}: checkpoint JSON not found; a checkpoint is <stem>.safetensors plus <stem>.json "
            "(written by save_checkpoint / changedet train)"
        )
    try:
        data = json.loads(json_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{json_path}: not a readable checkpoint JSON: {exc}") from exc
    return CheckpointMeta.from_dict(data, json_path)


def _read_state(weights_path: Path, meta: CheckpointMeta, device: str | torch.device,
                allow_pickle: bool) -> dict[str, torch.Tensor]:
    if not weights_path.is_file():
        raise CheckpointError(f"{weights_path}: checkpoint weights not found (expected next to its .json)")
    if weights_path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        if meta.weights_sha256 and _sha256(weights_path) != meta.weights_sha256:
            raise CheckpointError(
                f"{weights_path}: the weights do not match their JSON (SHA-256 differs from weights_sha256); "
                "the two files come from different saves"
            )
        try:
            return load_file(str(weights_path), device=str(device))
        except (SafetensorError, OSError, ValueError) as exc:
            raise CheckpointError(f"{weights_path}: not a readable safetensors file: {exc}") from exc
    if not allow_pickle:
        raise CheckpointError(
            f"{weights_path}: {weights_path.suffix} files are pickles and are not loaded by default; pass "
            "allow_pickle=True if you trust the file (it is then read with torch.load(weights_only=True)), or "
            "convert it with save_checkpoint"
        )
    try:
        obj = torch.load(weights_path, map_location=device, weights_only=True)
    except Exception as exc:  # any unpickling failure is a bad checkpoint
        raise CheckpointError(f"{weights_path}: cannot read with torch.load(weights_only=True): {exc}") from exc
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{weights_path}: expected a state dict of tensors, found {type(obj).__name__}")
    return obj


def _names(names: list[str], limit: int = 8) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def load_checkpoint(path: str | os.PathLike[str], *, in_channels: int | None = None,
                    device: str | torch.device = "cpu", allow_pickle: bool = False) -> tuple[nn.Module, CheckpointMeta]:
    """Rebuild a model from a checkpoint, in eval mode.

    Parameters
    ----------
    path : path-like
        The ``.safetensors`` (or ``.json``, or the stem) of a checkpoint; ``.pt``/``.pth`` weights need
        ``allow_pickle=True`` and a JSON beside them.
    in_channels : int, optional
        Band count of the input the model will see; a different count raises :class:`CheckpointError`.
    device : str or torch.device
        Where to put the weights.
    allow_pickle : bool
        Permit ``.pt``/``.pth`` files (read with ``torch.load(weights_only=True)``). Never needed for
        ``.safetensors``.

    Returns
    -------
    (model, meta)
        The model (``eval()``) and its :class:`CheckpointMeta`.

    Raises
    ------
    CheckpointError
        On missing files, an invalid JSON, an unknown architecture, an unsupported format version, a band-count
        mismatch, or tensors that do not fit the architecture.
    """
    from changedet.models.registry import create_model

    weights_path, json_path = checkpoint_paths(path)
    meta = read_meta(path)  # refuses a folder, a bare pickle and a missing JSON
    expected = meta.in_channels
    if in_channels is not None and expected is not None and int(in_channels) != expected:
        names = f" ({', '.join(meta.band_names)})" if meta.band_names else ""
        raise CheckpointError(
            f"{json_path}: the model was trained on {expected} bands{names} but the input has {in_channels} bands; "
            "select the same bands (e.g. --indexes 4,3,2) or use/train a model for this band count"
        )
    try:
        model = create_model(meta.architecture, **meta.kwargs)
    except UnknownModelError as exc:
        raise CheckpointError(f"{json_path}: unknown architecture {meta.architecture!r}; known: "
                              f"{', '.join(exc.known)}") from exc
    except ModelError as exc:
        raise CheckpointError(f"{json_path}: cannot build {meta.architecture!r} from its kwargs: {exc}") from exc
    state = _read_state(weights_path, meta, device, allow_pickle)
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing tensors: {_names(missing)}")
        if unexpected:
            parts.append(f"unexpected tensors: {_names(unexpected)}")
        raise CheckpointError(f"{weights_path}: the weights do not fit {meta.architecture} {meta.kwargs}: "
                              + "; ".join(parts))
    bad = [f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}" for k, v in own.items() if state[k].shape != v.shape]
    if bad:
        raise CheckpointError(f"{weights_path}: tensor shapes do not fit {meta.architecture}: {_names(bad, 4)}")
    model.load_state_dict(state, strict=True)
    model.to(device).eval()
    return model, meta
