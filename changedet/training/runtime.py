"""Process-wide torch settings of a training run: seeding, threads, deterministic algorithms, subnormal flushing."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch


def _check_device(device: str | torch.device) -> torch.device:
    """The torch device named by ``device``; an :class:`~changedet.errors.InputError` for a name torch does not know
    or a CUDA device on a machine without CUDA (what :func:`~changedet.training.train` and
    :func:`~changedet.training.calibrate_checkpoint` check before they start)."""
    from changedet.errors import InputError

    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError) as exc:
        raise InputError(f"unknown device {device!r}; use 'cpu', 'cuda' or 'cuda:N'") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device {device!r} requested but CUDA is not available; use device='cpu'")
    return dev


def seed_everything(seed: int) -> None:
    """Seed torch (CPU and CUDA) for a reproducible run; numpy generators are seeded where they are created."""
    torch.manual_seed(int(seed))
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(int(seed))



@contextlib.contextmanager
def _torch_settings(threads: int | None, deterministic: bool, device: torch.device) -> Iterator[None]:
    """Set threads and determinism for the run, restore the caller's settings afterwards.

    The run also flushes subnormal floats to zero (:func:`changedet.models.flush_denormals`): without it, epochs
    slowed down up to 5 times once some gradients became subnormal.
    """
    old_threads = torch.get_num_threads()
    old_det = torch.are_deterministic_algorithms_enabled()
    old_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    old_cudnn = (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    try:
        if threads:
            torch.set_num_threads(int(threads))
        if deterministic:
            if device.type == "cuda":
                os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
                torch.backends.cudnn.deterministic = True
                torch.backends.cudnn.benchmark = False
            torch.use_deterministic_algorithms(True, warn_only=True)
        from changedet.models import flush_denormals

        with flush_denormals():
            yield
    finally:
        torch.set_num_threads(old_threads)
        torch.use_deterministic_algorithms(old_det, warn_only=old_warn)
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = old_cudnn
