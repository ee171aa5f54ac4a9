"""The Trainer: one loop for the three Janus stages and for the parts' pretraining.

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
`openjanus.train.run.run_training(TrainConfig)` assembles all of this from a config file.
"""

from __future__ import annotations

import contextlib
import math
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from openjanus.distributed import DistInfo, all_reduce_sum, barrier
from openjanus.errors import UserError
from openjanus.train.checkpoint import (
    TrainState,
    export_checkpoint,
    gather_model_state,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from openjanus.train.logs import (
    add_metrics,
    data_summary,
    format_log_line,
    gather_metrics,
    mean,
    metrics_to_host,
    open_tensorboard,
    peak_flops,
)
from openjanus.train.objectives import Metrics, Objective
from openjanus.train.stages import Stage

EXIT_INTERRUPTED = 75

# An evaluation hook gets the (unsharded) model in eval mode and the step; returns metrics.
EvalHook = Callable[[nn.Module, int], dict[str, float]]

# --- stages, optimiser, schedule --------------------------------------------------------------


def apply_stage(objective: Objective, stage: Stage) -> dict[str, int]:
    """Set `requires_grad` on every parameter of the objective's model from the stage; returns
    {"trainable": n, "frozen": m} element counts. Call before sharding and before the optimiser."""
    if stage.task != objective.task:
        raise UserError(f"stage {stage.name!r} is a {stage.task!r} stage but the model is set up for "
                        f"{objective.task!r}")
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
    """Training mode everywhere except the modules the objective never trains (the Janus VQ)."""
    objective.train()
    for module in objective.frozen_modules():
        module.eval()


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
    grad_norm: torch.Tensor | float  # on the device until a log step reads it
    lr: float
    seconds: float
    metrics: Metrics  # this process's sums, on the device


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
            add_metrics(metrics, result.metrics)
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
        # The norm and the metrics stay on the device: a log step reads them (`_report`).
        return StepStats(self.state.step, units, tokens, flops, norm.detach(), lr, time.perf_counter() - t0, metrics)

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
        if self.dist.is_main and getattr(self.objective.model, "_openjanus_lora", None) is not None:
            # From the checkpoint's full tensors: with FSDP the model holds only shards.
            from openjanus.train.checkpoint import read_tensors_matching
            from openjanus.train.lora import save_adapter

            save_adapter(self.objective.model, path / "adapter", state=read_tensors_matching(path, ".lora_"))
        return path

    def resume(self, folder: str | Path, include_model: bool = True) -> TrainState:
        """Restore everything from a checkpoint folder written by `save` (the model weights too
        unless `include_model` is False, for callers that loaded them already)."""
        # The optimiser and schedule states come back with the lr, betas, eps and weight decay
        # they were saved with; this run's stage decides those (a changed one is applied).
        wanted = [{k: g[k] for k in ("initial_lr", "betas", "eps",
                                     "weight_decay")} for g in self.optimizer.param_groups]
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
        out = Path(self.settings.output_dir) / "export"
        last = latest_checkpoint(self.settings.output_dir)
        if self.dist.is_main and last is not None and (last / "adapter").is_dir():
            from openjanus.train.lora import export_lora_checkpoint

            _, note = export_lora_checkpoint(last, out, overwrite=True)
            self._log(note)
        elif self.dist.is_main and last is not None:
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
        # The one host sync of a log step: every sum and the last grad norm in one transfer.
        metrics: Metrics = {}
        for st in window:
            add_metrics(metrics, st.metrics)
        last = window[-1]
        metrics, (grad_norm,) = metrics_to_host(metrics, last.grad_norm)
        metrics = gather_metrics(metrics)
        if not self.dist.is_main:
            return
        seconds = sum(st.seconds for st in window)
        tokens = sum(st.tokens for st in window)
        values = {k: mean(v) for k, v in sorted(metrics.items())}
        values.update(self.objective.log_metrics())
        values["lr"] = last.lr
        values["grad_norm"] = grad_norm
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
        data = data_summary(values)
        self._print(bar, f"{line} | {data}" if data else line)
        if bar is not None:
            bar.set_postfix_str(f"loss {values.get('loss', float('nan')):.4g} lr {last.lr:.2e}", refresh=False)
        writer = self._tensorboard()
        if writer is not None:
            for k, v in values.items():
                writer.add_scalar(k if "/" in k else f"train/{k}", v, last.step)
            writer.add_scalar("train/tokens_seen", self.state.tokens_seen, last.step)

    # -- signals

    def _install_signal_handlers(self) -> dict[int, Any]:
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


__all__ = ["EXIT_INTERRUPTED", "Trainer", "LoopSettings", "StepStats", "EvalHook", "apply_stage",
           "set_train_modes", "build_optimizer", "build_scheduler"]
