"""Where a process trains and evaluates: ``auto`` (CUDA, then MPS, then the CPU), ``cpu``,
``cuda``, ``cuda:N`` or ``mps``; and the autocast dtype of a precision name.

An accelerator that is asked for and absent is a :class:`~glora.errors.ConfigError` naming the
key and what this machine has, raised before any model loads.
"""

from __future__ import annotations

import re

import torch

from glora.errors import ConfigError

DEVICES = ("auto", "cpu", "cuda", "cuda:N", "mps")
PRECISIONS = ("fp32", "bf16", "fp16")
#: ``train.precision`` (:data:`glora.contract.PRECISIONS`) -> the dtype ``torch.autocast``
#: computes in (``None``: plain float32).
AUTOCAST_DTYPE: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16,
                                                 "fp16": torch.float16}
#: ``model.dtype`` -> the dtype the frozen base is loaded in.
BASE_DTYPE = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def available() -> str:
    """What this machine offers, for error messages."""
    found = ["cpu"]
    if torch.cuda.is_available():
        found += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if torch.backends.mps.is_available():
        found.append("mps")
    return ", ".join(found)


def is_device_name(spec: str) -> bool:
    """Whether ``spec`` is one of :data:`DEVICES` (``cuda:N`` with any index), present or not."""
    return bool(re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", spec))


def resolve_device(spec: str, key: str = "train.device") -> torch.device:
    """The device ``spec`` names; ``auto`` is the first of CUDA, MPS and the CPU that exists.

    Raises:
        ConfigError: an unknown name, or a device this machine does not have.
    """
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("mps") if torch.backends.mps.is_available() else torch.device("cpu")
    if spec == "cpu":
        return torch.device("cpu")
    match = re.fullmatch(r"cuda(?::(\d+))?", spec)
    if match:
        index = int(match.group(1) or 0)
        if not torch.cuda.is_available() or index >= torch.cuda.device_count():
            raise ConfigError(f"`{key}` is {spec!r}, but this machine has no such CUDA device "
                              f"(available: {available()}); use `{key}=auto` or `cpu`.")
        return torch.device("cuda", index)
    if spec == "mps":
        if not torch.backends.mps.is_available():
            raise ConfigError(f"`{key}` is 'mps', but MPS is not available here "
                              f"(available: {available()}); use `{key}=auto` or `cpu`.")
        return torch.device("mps")
    raise ConfigError(f"`{key}` must be one of {list(DEVICES)}, got {spec!r}.")


def worker_device(spec: str, worker: int) -> torch.device:
    """The device of simulator worker ``worker``: with CUDA, the visible GPUs in turn
    (``cuda:{worker % n}``) unless ``spec`` names one GPU; else ``spec`` itself."""
    device = resolve_device(spec)
    if device.type == "cuda" and spec in ("auto", "cuda"):
        return torch.device("cuda", worker % torch.cuda.device_count())
    return device
