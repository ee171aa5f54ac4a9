"""The training loop: one loop for the three Janus stages and for the parts' pretraining.

    objective = JanusObjective(model)            # or VQObjective, SigLIPObjective, TextObjective
    apply_stage(objective, stage)                # which parameters train
    trainer = Trainer(objective, stage, batches, LoopSettings(grad_accum=4, output_dir="runs/x"))
    trainer.fit()

A step draws `grad_accum` micro-batches, counts their loss units (supervised tokens, images)
on the host, sums the count over all processes and uses it as the one loss denominator of
every micro-batch, so an accumulated or distributed step gives the gradient of the mean loss
over the whole global batch. Then: gradient clipping, AdamW (betas from the stage), the
warm-up + constant/cosine schedule (`LambdaLR` over `Stage.lr_factor`), logging (console,
progress bar, TensorBoard), periodic atomic checkpoints and an optional evaluation hook.
`run_training(TrainConfig)` builds all of this from a config file; it is what
`openjanus train CONFIG` runs, under torchrun as well.
"""

from __future__ import annotations

import contextlib
import math
import signal
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from openjanus.config import ConfigError, JanusConfig
from openjanus.errors import UserError
from openjanus.train.checkpoint import (
    TrainState,
    export_checkpoint,
    gather_model_state,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    load_model_state,
    read_model_tensors,
    save_checkpoint,
)
from openjanus.train.config import TrainConfig, check_model_config
from openjanus.train.objectives import Metrics, Objective
from openjanus.train.parallel import DistInfo, all_reduce_sum
from openjanus.train.stages import Stage

# The exit status of `openjanus train` after SIGINT or SIGTERM stopped the run at a step
# boundary and wrote its checkpoint: resume with --resume. EX_TEMPFAIL of sysexits.h.
EXIT_INTERRUPTED = 75

# An evaluation hook gets the (unsharded) model in eval mode and the step; returns metrics.
EvalHook = Callable[[nn.Module, int], dict[str, float]]

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


# --- stages, optimiser, schedule --------------------------------------------------------------


def apply_stage(objective: Objective, stage: Stage) -> dict[str, int]:
    """Set `requires_grad` on every parameter of the objective's model from the stage; returns
    {"trainable": n, "frozen": m} element counts. Call before sharding and before the optimiser."""
    if stage.task != objective.task:
        raise UserError(f"stage {stage.name!r} is a {stage.task!r} stage but the model is set up for {objective.task!r}")
    counts = {"trainable": 0, "frozen": 0}
    for name, p in objective.model.named_parameters():
        trains = stage.is_trainable(name)
        p.requires_grad_(trains)
        counts["trainable" if trains else "frozen"] += p.numel()
    for name, p in objective.named_parameters():
        if not name.startswith("model."):  # parameters the objective itself adds train always
            p.requires_grad_(True)
    if counts["trainable"] == 0:
        raise UserError(f"stage {stage.name!r} trains nothing: no parameter matches {', '.join(stage.trainable)}")
    set_train_modes(objective, stage)
    return counts


def set_train_modes(objective: Objective, stage: Stage) -> None:
    """Training mode everywhere except modules that never train in this stage (the VQ)."""
    objective.train()
    if stage.task == "janus":
        objective.model.gen_tokenizer.eval()


def build_optimizer(objective: nn.Module, stage: Stage) -> torch.optim.AdamW:
    """AdamW over the trainable parameters; weight decay only on matrices (not on norms/biases)."""
    decay, no_decay = [], []
    for p in objective.parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    groups = [{"params": g, "weight_decay": wd} for g, wd in ((decay, stage.weight_decay), (no_decay, 0.0)) if g]
    return torch.optim.AdamW(groups, lr=stage.lr, betas=stage.betas, eps=stage.eps)


def build_scheduler(optimizer: torch.optim.Optimizer, stage: Stage) -> torch.optim.lr_scheduler.LambdaLR:
    """Warm-up then constant or cosine: `Stage.lr_factor` as a LambdaLR (stepped once per step)."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, stage.lr_factor)


# --- the loop ---------------------------------------------------------------------------------


@dataclass
class LoopSettings:
    grad_accum: int = 1
    log_every: int = 10
    checkpoint_every: int = 0  # 0: only at the end (when output_dir is set)
    keep_last: int | None = 3
    output_dir: str | Path | None = None
    eval_every: int = 0
    autocast_dtype: torch.dtype | None = None  # bf16 on GPU; None = run in the parameters' dtype
    stop_at: int | None = None
    progress_bar: bool = False
    tensorboard: bool = False
    export_on_finish: bool = False
    tokenizer_dir: str | None = None  # copied into the final export
    meta: dict[str, Any] = field(default_factory=dict)  # what checkpoints record about the run


@dataclass
class StepStats:
    step: int
    loss_units: float  # supervised tokens (or images) over all processes
    tokens: float
    flops: float
    grad_norm: float
    lr: float
    seconds: float
    metrics: Metrics  # this process's sums


class Trainer:
    """Runs steps of one objective on one stream of micro-batches; see the module docstring."""

    def __init__(self, objective: Objective, stage: Stage, data: Iterable[Any], settings: LoopSettings,
                 device: torch.device | str = "cpu", dist_info: DistInfo = DistInfo(),
                 eval_hook: EvalHook | None = None, log: Callable[[str], None] | None = None) -> None:
        if settings.grad_accum < 1:
            raise UserError(f"grad_accum must be >= 1, got {settings.grad_accum}")
        self.objective, self.stage, self.data, self.settings = objective, stage, data, settings
        self.device, self.dist = torch.device(device), dist_info
        self.eval_hook = eval_hook
        self.optimizer = build_optimizer(objective, stage)
        self.scheduler = build_scheduler(self.optimizer, stage)
        self.state = TrainState()
        self._iter = iter(data)
        self._params = [p for p in objective.parameters() if p.requires_grad]
        self._peak = peak_flops(self.device)
        self._signal_received = False  # set by SIGTERM/SIGINT in this process
        self._stop_requested = False  # agreed by all processes at the start of a step
        self._log = log or (lambda line: print(line, file=sys.stderr, flush=True))
        self._writer = None
        self._last_saved = -1

    # -- one step

    def _autocast(self):
        if self.settings.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.settings.autocast_dtype)

    def train_step(self) -> StepStats:
        """One optimiser step over `grad_accum` micro-batches (raises StopIteration when the data
        stream ends before the step is complete)."""
        t0 = time.perf_counter()
        obj = self.objective
        micro = [next(self._iter) for _ in range(self.settings.grad_accum)]
        want_flops = self._peak is not None
        local = [float(sum(obj.count(b) for b in micro)), float(sum(obj.tokens(b) for b in micro)),
                 float(sum(obj.flops(b) for b in micro)) if want_flops else 0.0, float(self._signal_received)]
        units, tokens, flops, stop = all_reduce_sum(local, self.device)
        # A signal reaching one process mid-step is acted on only after the next agreement, so
        # all processes stop at the same step.
        self._stop_requested = stop > 0
        # FSDP averages gradients over processes, so each one divides by its share of the count.
        denom = max(units, 1.0) / self.dist.world_size
        metrics: Metrics = {}
        sync = hasattr(obj, "set_requires_gradient_sync")
        for i, batch in enumerate(micro):
            if sync and self.settings.grad_accum > 1:
                # Reduce-scatter gradients only on the last micro-batch of the step.
                obj.set_requires_gradient_sync(i == len(micro) - 1)
            batch = obj.to_device(batch, self.device)
            with self._autocast():
                result = obj(batch, denom)
            result.loss.backward()
            for k, (s, n) in result.metrics.items():
                s0, n0 = metrics.get(k, (0.0, 0.0))
                metrics[k] = (s0 + s, n0 + n)
        max_norm = self.stage.grad_clip if self.stage.grad_clip > 0 else math.inf
        norm = torch.nn.utils.clip_grad_norm_(self._params, max_norm)
        if hasattr(norm, "full_tensor"):
            norm = norm.full_tensor()
        lr = self.scheduler.get_last_lr()[0]
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.state.step += 1
        self.state.tokens_seen += int(tokens)
        return StepStats(self.state.step, units, tokens, flops, float(norm), lr, time.perf_counter() - t0, metrics)

    # -- the run

    def fit(self) -> TrainState:
        """Train until the stage's last step (or `stop_at`), the data ends, or SIGTERM/SIGINT
        (then a checkpoint is written first and `interrupted` is set). Returns the final counters."""
        s = self.settings
        end = min(s.stop_at or self.stage.steps, self.stage.steps)
        bar = self._progress(end)
        window: list[StepStats] = []
        # The handlers stay until the final checkpoint is written: a signal during it must not
        # cut it short either.
        handlers = self._install_signal_handlers()
        try:
            while self.state.step < end:
                try:
                    stats = self.train_step()
                except StopIteration:
                    self._print(bar, f"the data stream ended at step {self.state.step}")
                    break
                window.append(stats)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix_str(f"loss {_mean(stats.metrics.get('loss')):.4g} lr {stats.lr:.2e}", refresh=False)
                step = self.state.step
                if step % s.log_every == 0 or step == end:
                    self._report(window, bar)
                    window = []
                if s.output_dir is not None and s.checkpoint_every and step % s.checkpoint_every == 0:
                    self.save()
                if s.eval_every and self.eval_hook is not None and step % s.eval_every == 0:
                    self.evaluate(bar)
                if self._stop_requested:
                    self._print(bar, f"stop requested: saving at step {step} and exiting")
                    break
            if s.output_dir is not None and self._last_saved != self.state.step:
                self.save()
            # A signal during the last step or the final save: every process must agree, as
            # they all take part in the export or none does.
            self._stop_requested = self._stop_requested or self._agree_stop()
        finally:
            self._restore_signal_handlers(handlers)
            if bar is not None:
                bar.close()
        self.state.interrupted = self._stop_requested
        if self._stop_requested:
            saved = ", its checkpoint written" if s.output_dir is not None else ""
            self._print(None, f"interrupted at step {self.state.step}{saved}; continue with --resume")
        elif s.export_on_finish and s.output_dir is not None:
            self.export()
        if self._writer is not None:
            self._writer.flush()
        return self.state

    def _agree_stop(self) -> bool:
        stop, = all_reduce_sum([float(self._signal_received)], self.device)
        return stop > 0

    # -- checkpoints

    def save(self) -> Path:
        """Write a checkpoint of the current step (every process must call it)."""
        path = save_checkpoint(self.settings.output_dir, objective=self.objective, optimizer=self.optimizer,
                               scheduler=self.scheduler, data=self.data, state=self.state,
                               meta=self.settings.meta, dist_info=self.dist, keep_last=self.settings.keep_last)
        self._last_saved = self.state.step
        return path

    def resume(self, folder: str | Path, include_model: bool = True) -> TrainState:
        """Restore everything from a checkpoint folder written by `save` (the model weights too
        unless `include_model` is False, for callers that loaded them already)."""
        # The optimiser and schedule states come back with the lr, betas, eps and weight decay
        # they were saved with; this run's stage decides those (a changed one is applied).
        wanted = [{k: g[k] for k in ("initial_lr", "betas", "eps", "weight_decay")} for g in self.optimizer.param_groups]
        self.state = load_checkpoint(folder, objective=self.objective, optimizer=self.optimizer,
                                     scheduler=self.scheduler, data=self.data, dist_info=self.dist,
                                     include_model=include_model)
        for group, settings in zip(self.optimizer.param_groups, wanted):
            group.update(settings)
        sched = self.scheduler
        sched.base_lrs = [g["initial_lr"] for g in self.optimizer.param_groups]
        # The lr of the next step, computed as LambdaLR.get_lr does (so an unchanged stage gives
        # the very same floats).
        for group, base, factor in zip(self.optimizer.param_groups, sched.base_lrs, sched.lr_lambdas):
            group["lr"] = base * factor(sched.last_epoch)
        sched._last_lr = [g["lr"] for g in self.optimizer.param_groups]
        self._last_saved = self.state.step
        return self.state

    def export(self) -> Path | None:
        """Export the last checkpoint to OUTPUT/export (official layout for Janus; a part folder
        for the part tasks). Rank 0 writes; the others wait."""
        from openjanus.train.parallel import barrier

        out = Path(self.settings.output_dir) / "export"
        last = latest_checkpoint(self.settings.output_dir)
        if self.dist.is_main and last is not None:
            # The run's own export folder: a resumed run replaces its earlier export's files.
            path, notes = export_checkpoint(last, out, tokenizer_dir=self.settings.tokenizer_dir, overwrite=True)
            self._log(f"exported {last.name} to {path}")
            for note in notes:
                self._log(f"note: {note}")
        barrier()
        return out

    # -- evaluation

    def evaluate(self, bar: Any = None) -> dict[str, float]:
        """Run the evaluation hook on the current weights (rank 0; the others wait)."""
        from openjanus.train.parallel import barrier

        results: dict[str, float] = {}
        model = self._eval_model()
        if self.dist.is_main and model is not None:
            was_training = model.training
            model.eval()
            with torch.no_grad(), self._autocast():
                results = dict(self.eval_hook(model, self.state.step))  # type: ignore[misc]
            if was_training:
                set_train_modes(self.objective, self.stage)
            line = " ".join(f"{k} {v:.4g}" for k, v in results.items())
            self._print(bar, f"eval step {self.state.step}: {line}")
            writer = self._tensorboard()
            for k, v in results.items():
                if writer is not None:
                    writer.add_scalar(f"eval/{k}", v, self.state.step)
        barrier()
        return results

    def _eval_model(self) -> nn.Module | None:
        if not self.dist.distributed:
            return self.objective.model
        # A sharded model cannot run generation on one process: rank 0 evaluates a full copy.
        state = gather_model_state(self.objective)
        if not self.dist.is_main:
            return None
        model_cls, cfg = type(self.objective.model), getattr(self.objective.model, "cfg", None)
        with torch.device("meta"):
            copy = model_cls(cfg)
        copy.load_state_dict(state, assign=True)
        # A second full copy in fp32 next to the training state may not fit: use the compute dtype.
        return copy.to(self.device, dtype=self.settings.autocast_dtype or torch.float32)

    # -- logging

    def _progress(self, end: int) -> Any:
        if not (self.settings.progress_bar and self.dist.is_main):
            return None
        from tqdm import tqdm

        return tqdm(total=end, initial=self.state.step, desc=self.stage.name, unit="step", dynamic_ncols=True)

    def _print(self, bar: Any, line: str) -> None:
        if not self.dist.is_main:
            return
        if bar is not None:
            bar.write(line, file=sys.stderr)
        else:
            self._log(line)

    def _tensorboard(self) -> Any:
        if not (self.settings.tensorboard and self.dist.is_main and self.settings.output_dir is not None):
            return None
        if self._writer is None:
            self._writer = open_tensorboard(Path(self.settings.output_dir) / "tensorboard")
        return self._writer

    def _report(self, window: list[StepStats], bar: Any) -> None:
        # Metric names can differ between processes (a task absent from one batch), so they
        # are gathered as objects rather than reduced as a fixed-length tensor.
        metrics: Metrics = {}
        for st in window:
            for k, (s, n) in st.metrics.items():
                s0, n0 = metrics.get(k, (0.0, 0.0))
                metrics[k] = (s0 + s, n0 + n)
        metrics = _gather_metrics(metrics)
        if not self.dist.is_main:
            return
        last = window[-1]
        seconds = sum(st.seconds for st in window)
        tokens = sum(st.tokens for st in window)
        values = {k: _mean(v) for k, v in sorted(metrics.items())}
        values.update(self.objective.log_metrics())
        values["lr"] = last.lr
        values["grad_norm"] = last.grad_norm
        values["tokens_per_s"] = tokens / max(seconds, 1e-9)
        values["s_per_step"] = seconds / len(window)
        if self._peak is not None:
            values["mfu"] = sum(st.flops for st in window) / max(seconds, 1e-9) / (self._peak * self.dist.world_size)
        if hasattr(self.data, "stats"):
            stats = self.data.stats()
            stats = stats.as_dict() if hasattr(stats, "as_dict") else dict(stats)
            values.update({k: float(v) for k, v in stats.items() if isinstance(v, (int, float))})
        console = {k: v for k, v in values.items() if not k.startswith("data/")}
        line = format_log_line(last.step, self.stage.steps, console)
        data = _data_summary(values)
        self._print(bar, f"{line} | {data}" if data else line)
        writer = self._tensorboard()
        if writer is not None:
            for k, v in values.items():
                writer.add_scalar(k if "/" in k else f"train/{k}", v, last.step)
            writer.add_scalar("train/tokens_seen", self.state.tokens_seen, last.step)

    # -- signals

    def _install_signal_handlers(self) -> dict[int, Any]:
        import threading

        if threading.current_thread() is not threading.main_thread():
            return {}
        old = {}

        def request_stop(signum: int, frame: Any) -> None:
            if self._signal_received:  # a second signal: stop now
                raise KeyboardInterrupt
            self._signal_received = True
            if self.dist.is_main:
                name = signal.Signals(signum).name
                print(f"{name}: stopping after this step, once its checkpoint is written "
                      f"(send it again to stop at once, without a checkpoint)", file=sys.stderr, flush=True)

        for sig in (signal.SIGTERM, signal.SIGINT):
            old[sig] = signal.signal(sig, request_stop)
        return old

    @staticmethod
    def _restore_signal_handlers(old: dict[int, Any]) -> None:
        for sig, handler in old.items():
            signal.signal(sig, handler)


def _mean(v: tuple[float, float] | None) -> float:
    if v is None:
        return float("nan")
    return v[0] / v[1] if v[1] else float("nan")


def _gather_metrics(metrics: Metrics) -> Metrics:
    import torch.distributed as dist

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
def _data_summary(values: dict[str, float]) -> str:
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


# --- building a run from a TrainConfig --------------------------------------------------------


def _resolve_device(name: str, dist_info: DistInfo) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", dist_info.local_rank)
        return torch.device("cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {name!r} requested but CUDA is not available")
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", dist_info.local_rank)
    return dev


def _autocast_dtype(name: str, device: torch.device) -> torch.dtype | None:
    if name in ("bfloat16", "bf16") or (name == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return None


# model.tokenizer; else the starting checkpoint's folder when it holds a tokenizer; for one of
# our training checkpoints, the tokenizer its run used.
def _tokenizer_dir(cfg: TrainConfig) -> str | None:
    if cfg.model.tokenizer is not None or cfg.model.checkpoint is None:
        return cfg.model.tokenizer
    folder = Path(cfg.model.checkpoint)
    if (folder / "tokenizer.json").is_file():
        return str(folder)
    if (folder / "train_state.json").is_file():
        from openjanus.train.checkpoint import read_train_state

        source = (read_train_state(folder).get("train_config") or {}).get("model", {})
        for candidate in (source.get("tokenizer"), str(folder.parent.parent / "tokenizer")):
            if candidate and (Path(candidate) / "tokenizer.json").is_file():
                return candidate
    return None


# The tokenizer and image settings of the run (`_tokenizer_dir`), else the presets' small
# stand-in tokenizer (for experiments only).
def _load_processor(cfg: TrainConfig, model_cfg: JanusConfig, log: Callable[[str], None]) -> Any:
    from openjanus.config import ConfigError
    from openjanus.processing import JanusProcessor

    folder = _tokenizer_dir(cfg)
    if folder is not None and (Path(folder) / "tokenizer.json").is_file():
        try:
            return JanusProcessor.from_dir(folder, model_cfg, roles=cfg.model.roles)
        except ConfigError as e:
            raise UserError(f"tokenizer folder {folder}: {e}") from None
    if cfg.model.tokenizer is not None:
        raise UserError(f"model.tokenizer {folder!r} has no tokenizer.json")
    from openjanus.pipeline import standin_processor

    log("note: no tokenizer given (model.tokenizer); using the small stand-in tokenizer of the presets")
    return standin_processor(model_cfg, roles=cfg.model.roles)


# The initial Janus weights on CPU: a preset (random) with optional parts, or a checkpoint
# folder (official/HF layout, or one of our training checkpoints to start a new stage from).
def _init_janus(cfg: TrainConfig, model_cfg: JanusConfig) -> nn.Module:
    from openjanus.model.janus import Janus
    from openjanus.train.parts import load_part_into

    src = cfg.model
    if src.checkpoint is not None:
        folder = Path(src.checkpoint)
        if (folder / "train_state.json").is_file():
            from openjanus.checkpoints.io import iter_tensors, load_into, weight_files

            with torch.device("meta"):
                model = Janus(model_cfg)
            tensors = {k: (ld, sh) for k, ld, sh in iter_tensors(weight_files(folder))}
            load_into(model, tensors, device="cpu", dtype=torch.float32, source=str(folder))
            return model
        from openjanus.checkpoints import load_model

        return load_model(folder, device="cpu", dtype=torch.float32)
    torch.manual_seed(cfg.seed)
    model = Janus(model_cfg)
    for part, folder in src.parts.items():
        load_part_into(model, part, folder)
    return model


def _init_part(task: str, cfg: TrainConfig, model_cfg: JanusConfig, tokenizer: Any) -> nn.Module:
    from openjanus.model.llm import LLM
    from openjanus.model.vq import VQModel
    from openjanus.train.parts import JANUS_ATTR, PART_OF_TASK, SigLIPPair, load_part, part_config

    part = PART_OF_TASK[task]
    torch.manual_seed(cfg.seed)
    if task == "vq":
        model: nn.Module = VQModel(model_cfg.vq)
        target = model
    elif task == "text":
        model = LLM(model_cfg.llm)
        target = model
    else:
        model = SigLIPPair(model_cfg.vision, vocab_size=tokenizer.vocab_size,
                           text_layers=cfg.parts.text_tower_layers, caption_len=cfg.parts.caption_len)
        target = model.und_encoder
    if cfg.model.checkpoint is not None:
        folder = Path(cfg.model.checkpoint)
        if (folder / "train_state.json").is_file() or (folder / "part.json").is_file():
            load_part(target, part, part_config(model_cfg, part), folder)
        else:
            from openjanus.checkpoints import load_model

            full = load_model(folder, device="cpu", dtype=torch.float32)
            target.load_state_dict(getattr(full, JANUS_ATTR[part]).state_dict())
    elif part in cfg.model.parts:
        load_part(target, part, part_config(model_cfg, part), cfg.model.parts[part])
    return model


def build_objective(task: str, model: nn.Module, cfg: TrainConfig) -> Objective:
    """The objective of a task around its model."""
    from openjanus.train.objectives import JanusObjective, TextObjective
    from openjanus.train.parts import SigLIPObjective, VQObjective

    if task == "janus":
        return JanusObjective(model)
    if task == "text":
        return TextObjective(model)
    if task == "vq":
        return VQObjective(model, recon_loss=cfg.parts.vq_recon_loss, restart_every=cfg.parts.vq_restart_every)
    return SigLIPObjective(model)


def build_data(cfg: TrainConfig, task: str, stage: Stage, model_cfg: JanusConfig, processor: Any, dist_info: DistInfo,
               model: nn.Module | None = None) -> Any:
    """The micro-batch stream of this process: the packed Janus stream (`openjanus.train.stream`)
    for the Janus stages and text pretraining, image (and caption) batches for VQ and SigLIP."""
    if task in ("vq", "siglip"):
        from openjanus.train.parts import PartDataStream

        unknown = sorted(set(cfg.data) - {"source"})
        if unknown:
            raise UserError(f"data: the {task} task reads only data.source, not {', '.join(unknown)}")
        source = cfg.data.get("source")
        if not source:
            raise UserError(f"the {task} task needs data.source: JSONL manifests (files, globs, folders), a folder "
                            f"of images, or 'shapes'")
        image_size = model_cfg.vq.image_size if task == "vq" else model_cfg.vision.image_size
        return PartDataStream(task, source if isinstance(source, list) else str(source), rows=cfg.micro_batch_rows, image_size=image_size, seed=cfg.seed,
                              rank=dist_info.rank, world_size=dist_info.world_size, tokenizer=processor.tokenizer,
                              caption_len=cfg.parts.caption_len, image_config=processor.image_config,
                              shape_groups=cfg.parts.siglip_shape_groups)
    from openjanus.config import ConfigError
    from openjanus.train.stream import build_train_stream

    ratio = stage.data_ratio if task == "janus" else (0.0, 1.0, 0.0)
    # Text-to-image records that name raw images are encoded by the frozen VQ on the fly.
    vq = model.gen_tokenizer if task == "janus" else None
    try:
        return build_train_stream(cfg.data, processor, model_cfg, seq_len=cfg.seq_len, batch_rows=cfg.micro_batch_rows,
                                  ratio=ratio, seed=cfg.seed, rank=dist_info.rank, world_size=dist_info.world_size,
                                  vq=vq)
    except ConfigError as e:
        raise UserError(f"data: {e}") from None


def derive_grad_accum(global_batch: int, micro_batch_rows: int, world_size: int) -> int:
    """global_batch = micro_batch_rows x grad_accum x world_size, exactly."""
    per_step = micro_batch_rows * world_size
    if global_batch % per_step:
        raise UserError(f"the stage's global batch {global_batch} is not a multiple of micro_batch_rows "
                        f"{micro_batch_rows} x {world_size} process(es) = {per_step}; change stage.global_batch "
                        f"or micro_batch_rows")
    return global_batch // per_step


def run_training(cfg: TrainConfig, resume: str | bool | None = None, eval_hook: EvalHook | None = None,
                 log: Callable[[str], None] | None = None) -> TrainState:
    """Build everything a TrainConfig describes and train. `resume`: True (or "latest") for the
    newest checkpoint in output_dir, or a checkpoint folder. Works under torchrun."""
    import torch.distributed as dist

    from openjanus.train.parallel import destroy, env_dist_info, init_distributed, shard_model

    log = log or (lambda line: print(line, file=sys.stderr, flush=True))
    if cfg.tensorboard:
        require_tensorboard()  # now, not at the first log step after the work
    dist_env = env_dist_info()
    device = _resolve_device(cfg.device, dist_env)
    owns_group = not (dist.is_available() and dist.is_initialized())
    dist_info = init_distributed(device, cfg.dist_timeout_minutes)
    main_log = log if dist_info.is_main else (lambda line: None)
    try:
        stage, notes = cfg.stage.build_with_notes()
        for note in notes:
            main_log(f"note: {note}")
        task = stage.task
        model_cfg = cfg.build_model_config()
        try:
            check_model_config(model_cfg, cfg.seq_len, task)
        except ConfigError as e:
            raise UserError(str(e)) from None
        out = Path(cfg.output_dir)
        ckpt = _resume_target(out, resume)
        processor = _load_processor(cfg, model_cfg, main_log)
        tokenizer = processor.tokenizer
        tokenizer_dir = _tokenizer_dir(cfg)
        if tokenizer_dir is None:
            # Keep the stand-in tokenizer with the run, so its exports decode the same ids.
            tokenizer_dir = str(out / "tokenizer")
            if dist_info.is_main:
                from openjanus.processing import save_tokenizer_dir

                save_tokenizer_dir(tokenizer.tokenizer, tokenizer_dir)
        grad_accum = derive_grad_accum(stage.global_batch, cfg.micro_batch_rows, dist_info.world_size)

        # Rank 0 makes the initial weights; with several processes the others build an empty
        # skeleton, shard it, and receive their shards from rank 0 (no full copy per process).
        # A resumed run takes all weights from its checkpoint, so every process starts empty.
        fresh = ckpt is None
        if fresh and (not dist_info.distributed or dist_info.is_main):
            model = _init_janus(cfg, model_cfg) if task == "janus" else _init_part(task, cfg, model_cfg, tokenizer)
        else:
            with torch.device("meta"):
                model = _init_skeleton(task, cfg, model_cfg, tokenizer)
        objective = build_objective(task, model, cfg)
        counts = apply_stage(objective, stage)
        if cfg.activation_checkpointing:
            objective.enable_activation_checkpointing()
        if cfg.compile:
            for unit in objective.compile_units():
                unit.compile()
        autocast = _autocast_dtype(cfg.dtype, device)
        if dist_info.distributed:
            initial = dict(objective.model.state_dict()) if fresh and dist_info.is_main else {}
            shard_model(objective, objective.shard_units(), device,
                        param_dtype=autocast if device.type == "cuda" else None)
            objective.to_empty(device=device)
            if fresh:
                load_model_state(objective, initial, dist_info)
            del initial
        elif fresh:
            objective.to(device)
        else:
            objective.to_empty(device=device)
        if not fresh:
            # The weights first: the data stream copies the (frozen) VQ to encode raw images.
            _check_compatible(ckpt, task, model_cfg, stage, main_log)
            load_model_state(objective, read_model_tensors(ckpt) if dist_info.is_main else {}, dist_info)
        data = build_data(cfg, task, stage, model_cfg, processor, dist_info, model=objective.model)
        meta = {"task": task, "stage": stage.to_dict(), "model_config": model_cfg.to_dict(),
                "train_config": cfg.to_dict()}
        settings = LoopSettings(grad_accum=grad_accum, log_every=cfg.log_every, checkpoint_every=cfg.checkpoint_every,
                                keep_last=cfg.keep_last, output_dir=out, eval_every=cfg.eval.every,
                                autocast_dtype=autocast, stop_at=cfg.stop_at, progress_bar=cfg.progress_bar,
                                tensorboard=cfg.tensorboard, export_on_finish=True,
                                tokenizer_dir=tokenizer_dir, meta=meta)
        if eval_hook is None and cfg.eval.every and cfg.eval.benchmarks:
            if task != "janus":
                raise UserError(f"eval.benchmarks run Janus models; the {task!r} task has none to evaluate")
            eval_hook = benchmark_eval_hook(cfg.eval.benchmarks, cfg.eval.options, processor, out)
        trainer = Trainer(objective, stage, data, settings, device=device, dist_info=dist_info,
                          eval_hook=eval_hook, log=main_log)
        if ckpt is not None:
            trainer.resume(ckpt, include_model=False)
            main_log(f"resumed from {ckpt} at step {trainer.state.step}")
        main_log(f"{stage.name} ({task}): {counts['trainable']:,} trainable / {counts['frozen']:,} frozen "
                 f"parameters; {dist_info.world_size} process(es) x {cfg.micro_batch_rows} rows x {grad_accum} "
                 f"accumulation = global batch {stage.global_batch}; device {device}, "
                 f"{'bf16 autocast' if autocast else 'fp32'}")
        return trainer.fit()
    finally:
        if owns_group:
            destroy()


def _init_skeleton(task: str, cfg: TrainConfig, model_cfg: JanusConfig, tokenizer: Any) -> nn.Module:
    from openjanus.model.janus import Janus
    from openjanus.model.llm import LLM
    from openjanus.model.vq import VQModel
    from openjanus.train.parts import SigLIPPair

    if task == "janus":
        return Janus(model_cfg)
    if task == "vq":
        return VQModel(model_cfg.vq)
    if task == "text":
        return LLM(model_cfg.llm)
    return SigLIPPair(model_cfg.vision, vocab_size=tokenizer.vocab_size, text_layers=cfg.parts.text_tower_layers,
                      caption_len=cfg.parts.caption_len)


def _resume_target(out: Path, resume: str | bool | None) -> Path | None:
    existing = list_checkpoints(out)
    if resume in (None, False):
        if existing:
            raise UserError(f"{out} already holds checkpoints (latest step {existing[-1][0]}); pass --resume to "
                            f"continue, or choose another output_dir")
        return None
    if resume in (True, "latest"):
        if not existing:
            raise UserError(f"--resume: no checkpoint in {out / 'checkpoints'}")
        return existing[-1][1]
    folder = Path(str(resume))
    if not (folder / "train_state.json").is_file():
        raise UserError(f"--resume {folder}: not a training checkpoint folder")
    return folder


def _check_compatible(ckpt: Path, task: str, model_cfg: JanusConfig, stage: Stage,
                      log: Callable[[str], None]) -> None:
    from openjanus.train.checkpoint import read_train_state

    meta = read_train_state(ckpt)
    if meta.get("task") != task:
        raise UserError(f"{ckpt} is a {meta.get('task')!r} checkpoint; this config trains {task!r}")
    if meta.get("model_config") != _json_roundtrip(model_cfg.to_dict()):
        raise UserError(f"{ckpt} was trained with a different model config; resume with the config it was written with")
    old = meta.get("stage", {})
    new = _json_roundtrip(stage.to_dict())
    if old.get("trainable", new["trainable"]) != new["trainable"]:
        raise UserError(f"{ckpt} trained {', '.join(old['trainable'])}; this config trains "
                        f"{', '.join(new['trainable'])}. Resuming cannot change what trains: start a new stage "
                        f"from the checkpoint instead (model.checkpoint = {str(ckpt)!r}, without --resume)")
    changed = [f"{k} {old[k]} -> {v}" for k, v in new.items() if k in old and old[k] != v and k != "name"]
    if changed:
        log(f"note: resuming with changed stage settings, applied from this step on: {'; '.join(changed)}")


def _json_roundtrip(obj: Any) -> Any:
    import json

    return json.loads(json.dumps(obj))


# Benchmarks of `openjanus.eval.runners` that need no downloaded data (the shapes world).
BENCHMARKS = ("geneval_shapes", "pope_shapes")


def benchmark_eval_hook(benchmarks: list[str], options: dict[str, Any], processor: Any,
                        output_dir: str | Path) -> EvalHook:
    """An evaluation hook running shapes-world benchmarks of `openjanus.eval` on the model in
    training, through a `JanusPipeline`; reports go to OUTPUT/eval/step_N/<benchmark>/.

    `options[name]` are keyword arguments of the runner (for geneval_shapes, the fields of
    `GenerationSettings` too, e.g. n_per_prompt); the hook returns each benchmark's overall
    score and its categories.
    """
    unknown = sorted(set(benchmarks) - set(BENCHMARKS))
    if unknown:
        raise UserError(f"eval.benchmarks: unknown {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}")

    def hook(model: nn.Module, step: int) -> dict[str, float]:
        import dataclasses

        from openjanus.eval import runners
        from openjanus.pipeline import JanusPipeline

        pipe = JanusPipeline(model, processor, name=f"step {step}")  # type: ignore[arg-type]
        results: dict[str, float] = {}
        for name in benchmarks:
            opts = dict(options.get(name, {}))
            out = Path(output_dir) / "eval" / f"step_{step:08d}" / name
            if out.exists():  # a resumed run evaluates the same step again
                import shutil

                shutil.rmtree(out)
            if name == "geneval_shapes":
                fields = {f.name for f in dataclasses.fields(runners.GenerationSettings)}
                settings = runners.GenerationSettings(**{k: opts.pop(k) for k in list(opts) if k in fields})
                report = runners.run_geneval_shapes(pipe, out, settings=settings, **opts)
            else:
                report = runners.run_pope_shapes(pipe, out, **opts)
            results[f"{name}/overall"] = float(report["overall"])
            for k, v in (report.get("categories") or {}).items():
                if isinstance(v, (int, float)):
                    results[f"{name}/{k}"] = float(v)
        return results

    return hook


__all__ = ["EXIT_INTERRUPTED", "Trainer", "LoopSettings", "StepStats", "EvalHook", "apply_stage", "build_optimizer", "build_scheduler",
           "run_training", "derive_grad_accum", "peak_flops", "format_log_line", "open_tensorboard",
           "benchmark_eval_hook", "BENCHMARKS"]
