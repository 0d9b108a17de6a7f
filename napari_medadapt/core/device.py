"""Compute-device choice and bounded torch threads.

The device is chosen once per call of :func:`select_device`: CUDA when available, else Apple MPS,
else the CPU. The environment variable ``MEDADAPT_DEVICE`` ("auto", "cpu", "cuda", "cuda:1", "mps")
overrides the automatic choice and an explicit ``preference`` argument overrides both. Asking for a
device that does not exist on this machine raises a :class:`MedAdaptError` listing the valid choices.

:func:`limit_torch_threads` keeps one CPU core free for the user interface. ``torch.set_num_threads``
configures the intra-op pool of the whole process, but with OpenMP builds the thread count is also
per calling thread, so the napari compute worker calls it from inside its own thread before the first
torch job (see ``napari_medadapt/_worker.py``).

torch is imported inside the functions only, so importing this module stays cheap.
"""

from __future__ import annotations

import os
import re
from typing import TYPE_CHECKING

from .errors import MedAdaptError

if TYPE_CHECKING:
    import torch

DEVICE_ENV_VAR = "MEDADAPT_DEVICE"

_DEVICE_PATTERN = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


def available_devices() -> list[str]:
    """Return the device names usable on this machine, e.g. ``["auto", "cpu", "cuda", "cuda:0"]``."""
    import torch

    names = ["auto", "cpu"]
    if torch.cuda.is_available():
        names.append("cuda")
        names.extend(f"cuda:{index}" for index in range(torch.cuda.device_count()))
    if _mps_available():
        names.append("mps")
    return names


def _mps_available() -> bool:
    import torch

    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def _auto_device() -> torch.device:
    import torch

    if torch.cuda.is_available():
        return torch.device("cuda")
    if _mps_available():
        return torch.device("mps")
    return torch.device("cpu")


def select_device(preference: str | None = None) -> torch.device:
    """Choose the torch device for computations.

    Parameters
    ----------
    preference
        "auto", "cpu", "cuda", "cuda:N" or "mps". When ``None``, the environment variable
        ``MEDADAPT_DEVICE`` is used, and when that is unset or empty the best available device
        (CUDA, else MPS, else CPU).

    Returns
    -------
    torch.device
        The chosen device.

    Raises
    ------
    MedAdaptError
        If the requested name is not a device name or the device is not available here.
    """
    import torch

    if isinstance(preference, torch.device):
        return preference
    if preference is not None and preference.strip():
        requested, source = preference.strip().lower(), "requested device"
    else:
        requested = os.environ.get(DEVICE_ENV_VAR, "").strip().lower()
        source = f"{DEVICE_ENV_VAR}={os.environ.get(DEVICE_ENV_VAR, '')!r}"
    if not requested or requested == "auto":
        return _auto_device()

    valid = ", ".join(available_devices())
    if not _DEVICE_PATTERN.match(requested):
        raise MedAdaptError(
            f"{source}: {requested!r} is not a device name. Device names are auto, cpu, cuda, cuda:N "
            f"and mps; available on this machine: {valid}."
        )
    if requested.startswith("cuda"):
        if not torch.cuda.is_available():
            raise MedAdaptError(
                f"{source}: CUDA is not available on this machine (no NVIDIA GPU or a CPU-only torch). "
                f"Use one of: {valid}."
            )
        index = int(requested.split(":")[1]) if ":" in requested else 0
        if index >= torch.cuda.device_count():
            raise MedAdaptError(
                f"{source}: there is no GPU {requested!r}; this machine has "
                f"{torch.cuda.device_count()} CUDA device(s). Use one of: {valid}."
            )
    if requested == "mps" and not _mps_available():
        raise MedAdaptError(f"{source}: Apple MPS is not available on this machine. Use one of: {valid}.")
    return torch.device(requested)


def default_thread_count() -> int:
    """Return the torch thread count that leaves one CPU core for the UI: ``max(1, cores - 1)``."""
    return max(1, (os.cpu_count() or 1) - 1)


def limit_torch_threads(n: int | None = None) -> int:
    """Bound torch's intra-op CPU threads so that the UI thread keeps a core.

    ``torch.set_num_threads`` is process-wide for torch's thread pool; with OpenMP builds it also
    applies per calling thread, so call this from the thread that runs the torch work (the compute
    worker does so before its first torch job).

    Parameters
    ----------
    n
        Number of threads; defaults to :func:`default_thread_count` (``max(1, os.cpu_count() - 1)``).

    Returns
    -------
    int
        The thread count now in effect.
    """
    import torch

    count = default_thread_count() if n is None else max(1, int(n))
    torch.set_num_threads(count)
    return torch.get_num_threads()


def describe_device(preference: str | None = None) -> str:
    """Describe the device :func:`select_device` picks, e.g. ``"cpu (1 torch thread, 2 cores)"``.

    Raises
    ------
    MedAdaptError
        As :func:`select_device` does for an invalid or unavailable device.
    """
    import torch

    device = select_device(preference)
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        props = torch.cuda.get_device_properties(index)
        return f"cuda:{index} ({props.name}, {props.total_memory / 2**30:.0f} GiB)"
    if device.type == "mps":
        return "mps (Apple GPU)"
    threads = torch.get_num_threads()
    return f"cpu ({threads} torch thread{'s' if threads != 1 else ''}, {os.cpu_count() or 1} cores)"
