"""What a training run logs: the console line, TensorBoard, the metrics gathered over processes
and the model FLOPs utilisation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from openjanus.errors import UserError
from openjanus.train.objectives import Metrics

# Dense bf16 peak FLOP/s per GPU, matched by substring of the device name (first match wins).
PEAK_FLOPS: list[tuple[str, float]] = [
    ("H200", 989e12), ("H100 PCIe", 756e12), ("H100", 989e12), ("GH200", 989e12), ("B200", 2250e12),
    ("A100", 312e12), ("A800", 312e12), ("H800", 989e12), ("L40S", 362e12), ("L40", 181e12),
    ("L4", 121e12), ("A10G", 125e12), ("A10", 125e12), ("RTX 4090", 165e12), ("RTX 3090", 71e12),
    ("V100", 125e12), ("T4", 65e12),
]


def peak_flops(device: torch.device) -> float | None:
    """Peak bf16 FLOP/s of a CUDA device from `PEAK_FLOPS`, or None (CPU, unknown GPU)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_FLOPS if k in name), None)


def mean(v: tuple[float, float] | None) -> float:
    if v is None:
        return float("nan")
    return v[0] / v[1] if v[1] else float("nan")


def add_metrics(into: Metrics, metrics: Metrics) -> None:
    """Add `metrics` to the running sums `into`; tensors stay on the device (in float64, as the
    host would sum them)."""
    for k, (s, n) in metrics.items():
        s0, n0 = into.get(k, (0.0, 0.0))
        into[k] = (s0 + (s.detach().double() if isinstance(s, Tensor) else s), n0 + n)


def metrics_to_host(metrics: Metrics, *extra: Tensor | float) -> tuple[Metrics, list[float]]:
    """The sums of `metrics` and the `extra` values as Python floats, read from the device in
    one transfer (a log step's only sync)."""
    keys = list(metrics)
    values = [metrics[k][0] for k in keys] + list(extra)
    on_device = [v for v in values if isinstance(v, Tensor)]
    read = iter(torch.stack([t.detach().double().reshape(()) for t in on_device]).tolist() if on_device else [])
    floats = [next(read) if isinstance(v, Tensor) else float(v) for v in values]
    return {k: (s, metrics[k][1]) for k, s in zip(keys, floats)}, floats[len(keys):]


def gather_metrics(metrics: Metrics) -> Metrics:
    if not (dist.is_available() and dist.is_initialized()):
        return metrics
    parts: list[Metrics | None] = [None] * dist.get_world_size()
    dist.all_gather_object(parts, metrics)
    out: Metrics = {}
    for part in parts:
        for k, (s, n) in (part or {}).items():
            s0, n0 = out.get(k, (0.0, 0.0))
            out[k] = (s0 + s, n0 + n)
    return out


# The console's short view of the data counters (TensorBoard gets them all).
def data_summary(values: dict[str, float]) -> str:
    parts = []
    if "data/packing_efficiency" in values:
        parts.append(f"packed {100 * values['data/packing_efficiency']:.0f}%")
    mix = [values.get(f"data/mix/{t}") for t in ("und", "text", "gen")]
    if any(m is not None for m in mix):
        parts.append("mix " + ":".join(f"{m or 0:.2f}" for m in mix))
    skipped = sum(v for k, v in values.items() if k.startswith("data/skipped/") or k == "data/bad_records")
    if skipped:
        parts.append(f"skipped {skipped:.0f}")
    return " ".join(parts)


def format_log_line(step: int, total: int, values: dict[str, float]) -> str:
    """One console line: step, losses, then lr, grad norm, throughput, MFU and data stats."""
    head = [f"step {step}/{total}"]
    for k, v in values.items():
        if k == "tokens_per_s":
            head.append(f"{v / 1000:.1f}k tok/s" if v >= 1000 else f"{v:.1f} tok/s")
        elif k == "mfu":
            head.append(f"mfu {100 * v:.1f}%")
        elif k == "lr":
            head.append(f"lr {v:.2e}")
        else:
            head.append(f"{k.removeprefix('train/')} {v:.4g}")
    return " | ".join(head)


def require_tensorboard() -> Any:
    """TensorBoard's SummaryWriter class; a clear error when the `train` extra is not installed."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise UserError("TensorBoard logging needs the 'tensorboard' package: pip install 'openjanus[train]', "
                        "or set \"tensorboard\": false in the config (-o tensorboard=false)") from None
    return SummaryWriter


def open_tensorboard(logdir: Path) -> Any:
    """A TensorBoard SummaryWriter; a clear error when the `train` extra is not installed."""
    writer = require_tensorboard()
    logdir.mkdir(parents=True, exist_ok=True)
    return writer(str(logdir))


__all__ = ["PEAK_FLOPS", "peak_flops", "format_log_line", "data_summary", "gather_metrics", "mean",
           "require_tensorboard", "open_tensorboard"]
