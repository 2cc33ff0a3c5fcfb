"""The training loop (book Algorithm 1, generalised): AdamW, warm-up, clipping, EMA, bf16, DDP, exact resume.

    result = fit(objective, data, cfg.train, run_dir, sample=cfg.sample, meta={"config": ...})

The loop knows nothing about diffusion: an objective (kuosan.train.objectives) owns the networks, draws
its batch and computes the loss; the loop optimises its trainable parameters, keeps the EMA of its online
network, updates its targets and checkpoints all of them.

Step n (1-based) draws its batch and noise from generators seeded by (seed, n - 1, rank), so a run resumed
from its checkpoint at step k repeats steps k+1, ... exactly as the uninterrupted run would have.
"""

from __future__ import annotations

import math
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..checkpoint import find_checkpoint, load_checkpoint, optimizer_state, save_checkpoint
from ..config import SampleConfig, TrainConfig
from ..pictures import save_samples
from ..pipeline import generate, x0_clipper
from ..registry import Dataset
from ..rng import batch_indices, seed_everything, step_generator
from .distributed import Dist, setup, teardown
from .ema import EMA
from .monitor import Monitor
from .objectives import Objective
from .speed import adamw, compiled

__all__ = ["fit", "TrainResult", "TrainingDiverged", "learning_rate"]


class TrainingDiverged(RuntimeError):
    """A non-finite loss or gradient; the message names the step and the last good checkpoint."""


@dataclass
class TrainResult:
    step: int  # completed optimizer steps
    checkpoint: Path | None  # the newest checkpoint written
    interrupted: bool = False  # stopped by Ctrl-C / SIGTERM (a checkpoint was written)
    loss: float = math.nan  # the last step's loss


def learning_rate(opts: TrainConfig, step: int) -> float:
    """lr of (0-based) step: linear warm-up over `warmup` steps, then constant or cosine to zero."""
    if opts.warmup and step < opts.warmup:
        return opts.lr * (step + 1) / opts.warmup
    if opts.schedule == "cosine":
        span = max(opts.steps - opts.warmup, 1)
        return opts.lr * 0.5 * (1 + math.cos(math.pi * (step - opts.warmup) / span))
    return opts.lr


class _StopFlag:
    """The first Ctrl-C / SIGTERM asks the loop to stop after the current step (and save); a second Ctrl-C aborts."""

    def __init__(self) -> None:
        self.requested = False
        self._old: dict[int, Any] = {}

    def __enter__(self) -> _StopFlag:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc: Any) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


class _Run:
    """The state of one training run on one process."""

    def __init__(self, objective: Objective, opts: TrainConfig, run_dir: Path, dist: Dist, meta: dict[str, Any] | None):
        self.opts, self.run_dir, self.dist, self.meta = opts, run_dir, dist, meta or {}
        self.obj = objective.to(dist.device)
        self.net = objective.net
        objective.bind(compiled(dist.wrap(self.net), opts.compile))  # the loss calls it; EMA, saves see self.net
        self.ema = EMA(self.net, opts.ema_decay, opts.ema_warmup)
        groups = [{"params": list(g["params"]), "lr_scale": float(g.get("lr_scale", 1.0))}
                  for g in objective.param_groups()]
        self.params = [p for g in groups for p in g["params"]]
        if not self.params:
            raise ValueError(f"the {objective.kind} objective has no trainable parameters")
        self.opt = adamw([g for g in groups if g["params"]], lr=opts.lr, weight_decay=opts.weight_decay)
        self.step = 0
        self.last_ckpt: Path | None = None

    def resume(self) -> bool:
        try:
            ckpt = load_checkpoint(self.run_dir, device=self.dist.device)
        except FileNotFoundError:
            return False
        if ckpt.state.get("seed") != self.opts.seed:
            raise ValueError(
                f"{ckpt.path} was trained with seed {ckpt.state.get('seed')}; this run has seed "
                f"{self.opts.seed}: resuming with another seed would not continue the same run"
            )
        self.net.load_state_dict(ckpt.weights)
        self.ema.module.load_state_dict(ckpt.ema if ckpt.ema is not None else ckpt.weights)
        self.ema.updates = int(ckpt.state.get("ema_updates", ckpt.step))
        self.obj.load_module_states(ckpt.modules, ckpt.state.get("objective", {}))
        opt_sd = optimizer_state(ckpt)
        if opt_sd is not None:
            self.opt.load_state_dict(opt_sd)
        self.step, self.last_ckpt = ckpt.step, ckpt.path
        return True

    def save(self) -> Path:
        if self.dist.main:
            self.obj.before_save(self.ema.module)
            save_checkpoint(
                self.run_dir / "checkpoints",
                self.step,
                weights=self.net.state_dict(),
                ema=self.ema.module.state_dict(),
                optimizer=self.opt.state_dict(),
                state={
                    **self.meta,
                    "seed": self.opts.seed,
                    "ema_updates": self.ema.updates,
                    "world_size": self.dist.world,
                    "objective": self.obj.state(),
                },
                modules=self.obj.module_states(),
                keep=self.opts.keep,
            )
        self.dist.barrier()
        self.last_ckpt = self.run_dir / "checkpoints" / f"step-{self.step:08d}"
        return self.last_ckpt

    def _diverged(self, what: str, value: float) -> TrainingDiverged:
        last = (
            f"the last good checkpoint is {self.last_ckpt} (step {int(self.last_ckpt.name.removeprefix('step-'))})"
            if self.last_ckpt
            else "no checkpoint had been written yet"
        )
        return TrainingDiverged(
            f"{what} is {value} at step {self.step + 1}; training stopped, {last}. Try a lower train.lr, "
            f"train.grad_clip, or train.bf16=false."
        )

    def train_step(self, data: Dataset, stop: _StopFlag) -> tuple[float, float, bool]:
        """One optimizer step (0-based index self.step); returns (global mean loss, grad norm, stop requested).

        A stop request is shared through the same all-reduce as the loss, so every process stops at the same
        step; the step that sees it makes no update."""
        o, d, n = self.opts, self.dist, self.step
        idx = batch_indices(len(data.x), o.batch_size, n, o.seed).chunk(d.world)[d.rank]
        batch = self.obj.batch(data, idx, d.device)
        seed_everything(o.seed, n, d.rank)
        g = step_generator(o.seed, n, "noise", d.rank, d.device)
        for group in self.opt.param_groups:
            group["lr"] = learning_rate(o, n) * group.get("lr_scale", 1.0)  # Objective.param_groups' scale
        with torch.autocast(d.device.type, dtype=torch.bfloat16, enabled=o.bf16):
            loss = self.obj.loss(batch, g).float().mean()
        flags = d.all_sum(torch.stack([loss.detach(), torch.tensor(float(stop.requested), device=d.device)]))
        mean_loss, stop_now = (flags[0] / d.world).item(), bool(flags[1] > 0)
        if stop_now:  # Ctrl-C / SIGTERM on any process: leave the weights as they were after step n
            return mean_loss, math.nan, True
        if not math.isfinite(mean_loss):
            raise self._diverged("the loss", mean_loss)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = float(nn.utils.clip_grad_norm_(self.params, o.grad_clip or math.inf))
        if not math.isfinite(grad_norm):
            raise self._diverged("the gradient norm", grad_norm)
        self.opt.step()
        self.ema.update(self.net)
        self.obj.after_step()
        self.step = n + 1
        if self.obj.restart(self.step, self.ema):  # a new stage: fresh Adam moments (progressive distillation)
            self.opt.state.clear()
        return mean_loss, grad_norm, stop_now

    def preview(self, data: Dataset, sample: SampleConfig) -> Path | None:
        """Save a PNG of EMA samples (a scatter plot over the data for 2-D points) at the current step."""
        den = self.obj.denoiser(self.ema.module)
        if not self.dist.main or den is None:
            return None
        den = den.replace(clip_x0=x0_clipper(sample.clip_x0, data.value_range))  # as kuosan.load will sample
        g = torch.Generator(self.dist.device).manual_seed(sample.seed)
        k = data.num_classes
        cond = {"y": torch.arange(sample.n, device=self.dist.device) % k} if k else None
        x = generate(den, (sample.n, *data.shape), method=sample.method, nfe=sample.nfe, generator=g,
                     device=self.dist.device, cond=cond)
        if self.obj.decode is not None:  # a latent run: its preview shows the decoded images
            x = self.obj.decode(x)
        ref = data.x[:2000] if data.x.ndim == 2 else None
        title = f"{self.run_dir.name}: step {self.step}, {sample.method} ({sample.nfe} NFE)"
        return save_samples(x, self.run_dir / "samples" / f"step-{self.step:08d}.png", ref, title)


def fit(
    objective: Objective,
    data: Dataset | Tensor,
    opts: TrainConfig,
    run_dir: str | Path,
    *,
    sample: SampleConfig | None = None,
    meta: dict[str, Any] | None = None,
    resume: bool = False,
    callback: Callable[[int, float], None] | None = None,
) -> TrainResult:
    """Optimise `objective` on `data` (a kuosan.registry.Dataset, or a plain (N, ...) tensor) for opts.steps steps.

    Checkpoints go to run_dir/checkpoints every opts.ckpt_every steps, at the end, and on Ctrl-C / SIGTERM;
    `resume` continues from the newest one. `meta` (e.g. the resolved run config) is stored in each checkpoint.
    `callback(step, loss)` runs after every step (tests use it to simulate a crash).
    """
    run_dir = Path(run_dir)
    if isinstance(data, Tensor):
        data = Dataset(data)
    if opts.threads:
        torch.set_num_threads(opts.threads)
    dist = setup(opts.device)
    if opts.batch_size % dist.world:
        raise ValueError(f"train.batch_size={opts.batch_size} must be divisible by the {dist.world} processes")
    run = _Run(objective, opts, run_dir, dist, meta)
    resumed = run.resume() if resume else False
    if not resume and (run_dir / "checkpoints" / "latest").exists():
        raise FileExistsError(
            f"{run_dir} already holds a run (checkpoint {find_checkpoint(run_dir)}); "
            "pass --resume to continue it or --out to train into another directory"
        )
    mon = Monitor(
        run_dir,
        opts.steps,
        run.step,
        enabled=dist.main,
        log_every=opts.log_every,
        batch_size=opts.batch_size,
        progress=opts.progress,
        tensorboard=opts.tensorboard,
    )
    result = TrainResult(step=run.step, checkpoint=run.last_ckpt)
    if resume:
        mon.write(
            f"resuming {run_dir} from step {run.step}"
            if resumed
            else f"nothing to resume in {run_dir}; starting at step 0"
        )
    try:
        with _StopFlag() as stop:
            first_step = run.step
            while run.step < opts.steps:
                loss, grad_norm, stop_now = run.train_step(data, stop)
                if stop_now:  # seen by every process at this step's loss all-reduce: no update was made
                    result.interrupted = True
                    break
                mon.step(run.step, loss, run.opt.param_groups[0]["lr"], grad_norm)
                result.loss = loss
                if callback is not None:
                    callback(run.step, loss)
                if opts.ckpt_every and run.step % opts.ckpt_every == 0 and run.step < opts.steps:
                    run.save()
                if sample is not None and opts.sample_every and run.step % opts.sample_every == 0:
                    run.preview(data, sample)
            if run.last_ckpt is None or run.last_ckpt.name != f"step-{run.step:08d}":
                run.save()
            last_previewed = not opts.sample_every or run.step % opts.sample_every == 0 or run.step == first_step
            if sample is not None and not last_previewed and not result.interrupted:
                run.preview(data, sample)  # the final weights' picture too, whatever the period
            if result.interrupted:
                mon.write(f"stopped at step {run.step}; checkpoint {run.last_ckpt}; continue with --resume")
    finally:
        mon.close()
        teardown(dist)
    result.step, result.checkpoint = run.step, run.last_ckpt
    return result
