"""A trained run as one object: `kuosan.load(run)` -> Pipeline -> `generate`. The only way anything outside
train/ (the CLI, eval, and later serving and export) loads a run.

    pipe = kuosan.load("runs/digits-ddpm")                      # run or checkpoint dir; EMA weights by default
    x = pipe.generate(64, method="dpmpp-2m", nfe=20, seed=0)    # (64, 1, 8, 8) in data space
    x = pipe.generate(10, labels=7, guidance=3.0)               # class-conditional runs: classifier-free guidance
    x = pipe.img2img(images, 0.6); x = pipe.inpaint(images, mask)  # SDEdit; inpainting, mask 1 = known (kuosan.edit)
    pipe.denoiser, pipe.config, pipe.checkpoint

The pipeline holds the Denoiser (and, as later parts land, an autoencoder between data and denoiser and
adapters); it depends on the registry, samplers and checkpoints, nothing above them.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from .checkpoint import Checkpoint, load_checkpoint
from .config import RunConfig, parse_config
from .control import control_images
from .denoiser import Denoiser
from .latent import CODEC_MODULE

if TYPE_CHECKING:  # pragma: no cover
    from .guidance import NoisyClassifier

__all__ = ["Pipeline", "load", "load_classifier", "generate", "x0_clipper", "CLIP_X0"]

CLIP_X0 = ("auto", "none", "clip", "dynamic")


@torch.no_grad()
def generate(
    denoiser: Denoiser,
    shape: tuple[int, ...],
    *,
    method: str = "dpmpp-2m",
    nfe: int = 20,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
    cond: dict[str, Any] | None = None,
    **options: Any,
) -> Tensor:
    """x_T ~ N(0, prior_std^2 I) of `shape`, then `method` with at most `nfe` network evaluations; options
    (grid, thresholding, a method's own keywords) go to kuosan.sample."""
    from .samplers import sample

    x_T = denoiser.process.prior_sample(shape, generator=generator, dtype=torch.float32, device=device)
    return sample(denoiser, x_T, method=method, nfe=nfe, generator=generator, cond=cond, **options)


def _clip_unit(x0: Tensor) -> Tensor:
    """x0 clipped to the image range [-1, 1] (DDPM's sampler, Ho et al. 2020, and diffusers' clip_sample)."""
    return x0.clamp(-1.0, 1.0)


def _dynamic_unit(x0: Tensor) -> Tensor:
    """Dynamic thresholding as Imagen defines it (Saharia et al. 2022, arXiv:2205.11487, §2.3): per sample
    s = max(1, 99.5th percentile of |x0|), x0 <- clip(x0, -s, s) / s. No upper bound on s: with diffusers'
    default sample_max_value = 1 the rule is plain clipping."""
    from .samplers.common import dynamic_threshold

    return dynamic_threshold(x0, ratio=0.995, max_value=math.inf)


def x0_clipper(kind: str, data_range: tuple[float, float] | None = (-1.0, 1.0)) -> Callable[[Tensor], Tensor] | None:
    """The x0 transform a `sample.clip_x0` setting names: "clip" (to [-1, 1]), "dynamic" (Saharia et al. 2022,
    arXiv:2205.11487, §2.3), "none"; "auto" is "clip" for data with a known range (images) and none otherwise."""
    if kind not in CLIP_X0:
        raise ValueError(f"clip_x0 must be one of {', '.join(CLIP_X0)}; got {kind!r}")
    if kind == "auto":
        kind = "clip" if data_range is not None else "none"
    if kind != "none" and data_range != (-1.0, 1.0):
        raise ValueError(f"clip_x0={kind!r} needs data in [-1, 1]; this run's data has no known range")
    return {"none": None, "clip": _clip_unit, "dynamic": _dynamic_unit}[kind]


class Pipeline:
    """A trained run: its Denoiser, config and checkpoint; generates in data space."""

    def __init__(
        self,
        denoiser: Denoiser,
        config: RunConfig,
        checkpoint: Checkpoint,
        *,
        device: torch.device | str = "cpu",
    ):
        self.denoiser, self.config, self.checkpoint = denoiser, config, checkpoint
        self.device = torch.device(device)
        st = checkpoint.state
        self.data_shape: tuple[int, ...] = tuple(st["data_shape"])
        self.num_classes: int | None = st.get("num_classes")
        self.class_names: tuple[str, ...] = tuple(st.get("class_names") or ())
        self.control_shape: tuple[int, ...] | None = None  # control runs: the condition image's (C, H, W)
        self.control_kind: str | None = None
        self.lora: Any = None  # LoRA runs: the kuosan.nets.lora.LoraAdapter (merge / unmerge / set_scale)
        self.codec: Any = None  # latent runs: the kuosan.latent.LatentCodec; data_shape is then the latents'

    @property
    def image_shape(self) -> tuple[int, ...]:
        """The shape of what generate returns: the decoded images of a latent run, else data_shape."""
        return self.codec.image_shape if self.codec is not None else self.data_shape

    def decode(self, z: Tensor) -> Tensor:
        """Samples in the model's space -> data space (a latent run's decoder; the identity otherwise)."""
        return z if self.codec is None else self.codec.decode(z)

    @property
    def step(self) -> int:
        return self.checkpoint.step

    @property
    def run_dir(self) -> Path:
        """The run directory (the checkpoint's grandparent)."""
        return self.checkpoint.path.parents[1]

    def __repr__(self) -> str:
        cls = f", {self.num_classes} classes" if self.num_classes else ""
        return (f"Pipeline({str(self.run_dir)!r}, step {self.step}, data {self.data_shape}{cls}, "
                f"{self.config.process.kind} / {self.denoiser.prediction})")

    def labels(self, n: int, labels: int | Sequence[int] | Tensor | None,
               num_classes: int | None = None) -> Tensor | None:
        """(n,) labels: None -> the classes in turn (i mod K) for a conditional run; an int -> n copies;
        a sequence -> repeated in turn. An unconditional run takes none, unless `num_classes` (a guiding
        classifier's) gives the classes."""
        k = self.num_classes if num_classes is None else num_classes
        if k is None:
            if labels is not None:
                raise ValueError(f"{self.run_dir} is an unconditional run: it takes no labels (guide it with a "
                                 "classifier to ask for classes)")
            return None
        if labels is None:
            y = torch.arange(n) % k
        else:
            y = torch.as_tensor(labels, dtype=torch.int64).reshape(-1)
            if len(y) == 0:
                raise ValueError("labels is empty")
            y = y.repeat((n + len(y) - 1) // len(y))[:n]
        bad = y[(y < 0) | (y >= k)]
        if len(bad):
            raise ValueError(f"label {int(bad[0])} is not a class of this run (0 .. {k - 1})")
        return y.to(self.device)

    def model(
        self,
        guidance: float | None = None,
        clip_x0: str | None = None,
        *,
        guidance_interval: tuple[float, float] | None | str = "run",
        guidance_rescale: float = 0.0,
        classifier: NoisyClassifier | None = None,
        classifier_scale: float = 1.0,
        control: Tensor | None = None,
    ) -> Denoiser:
        """The Denoiser with classifier-free guidance w (w = 1: the conditional model; optionally only on an
        interval of noise levels sigma/alpha, and rescaled: see Denoiser) and the run's x0 clipping (or
        `clip_x0`) applied. guidance_interval "run": the run's sample.guidance_interval; None: guide everywhere."""
        kind = clip_x0 or self.config.sample.clip_x0
        clip = x0_clipper(kind, _range(self.config)) if self.codec is None else self.codec.clipper(kind)
        if self.config.net.kwargs.get("guidance_embedding"):  # LCM students: w is an input, one evaluation a step
            from .lcm_function import default_w, embedded_guidance

            o = self.config.objective
            return embedded_guidance(self.denoiser, guidance, clip, default_w(o.w_min, o.w_max), interval=
                                     guidance_interval, rescale=guidance_rescale, classifier=classifier)
        changes: dict[str, Any] = {"clip_x0": clip}
        if isinstance(guidance_interval, str):
            if guidance_interval != "run":
                raise ValueError(f"guidance_interval: (lo, hi), None or 'run'; got {guidance_interval!r}")
            guidance_interval = self.config.sample.guidance_interval if guidance is not None else None
        if guidance is None and (guidance_interval is not None or guidance_rescale):
            raise ValueError("guidance_interval / guidance_rescale modify classifier-free guidance: give a scale w too")
        if guidance is not None:
            if self.num_classes is None:
                raise ValueError(f"{self.run_dir} is an unconditional run: classifier-free guidance needs a run "
                                 "trained with labels (e.g. recipe digits-cond); to guide this one, train a noise-"
                                 "conditional classifier (kuosan train digits-classifier) and use classifier guidance")
            null = {"y": torch.tensor(self.num_classes), **({} if control is None else {"control": control})}
            changes.update(guidance=float(guidance), uncond=null,  # the uncond branch sees the same control image
                           guidance_interval=guidance_interval, guidance_rescale=guidance_rescale)
        if classifier is not None:  # classifier guidance on top, x0 clipped after it
            return self._classifier_guided(self.denoiser.replace(**{**changes, "clip_x0": None}), classifier,
                                           classifier_scale).replace(clip_x0=clip)
        return self.denoiser.replace(**changes)

    def _classifier_guided(self, den: Denoiser, classifier: NoisyClassifier, scale: float) -> Denoiser:
        """den guided by the noise-conditional classifier (kuosan.guidance.classifier_guided) at `scale`, after
        checking that the classifier knows this run's data shape, process and classes."""
        from .guidance import classifier_guided

        classifier.check(self.denoiser.process, self.data_shape, f"run {self.run_dir}")
        if self.num_classes not in (None, classifier.num_classes):
            raise ValueError(f"classifier {classifier.name} has {classifier.num_classes} classes, run "
                             f"{self.run_dir} {self.num_classes}: their labels do not match")
        return classifier_guided(den, classifier.log_prob, scale, conditional=self.num_classes is not None)

    @torch.no_grad()
    def generate(
        self,
        n: int,
        method: str | None = None,
        nfe: int | None = None,
        labels: int | Sequence[int] | Tensor | None = None,
        guidance: float | None = None,
        seed: int = 0,
        grid: str | Tensor | None = None,
        *,
        clip_x0: str | None = None,
        guidance_interval: tuple[float, float] | None | str = "run",
        guidance_rescale: float = 0.0,
        batch_size: int | None = None,
        progress: Callable[[int], None] | None = None,
        classifier: NoisyClassifier | str | Path | None = None,
        classifier_scale: float | None = None,
        control: Tensor | None = None,
        **options: Any,
    ) -> Tensor:
        """n samples in data space by `method` (default: the run's sample.method) with an `nfe` budget;
        batches of batch_size share one generator seeded by `seed`; progress(k) after each batch of k.
        `classifier` (kuosan.load_classifier's result or a classifier run's path) guides towards `labels`
        (default: its classes in turn) at `classifier_scale` (default 1), on conditional and unconditional runs."""
        if n < 1:
            raise ValueError(f"n must be at least 1; got {n}")
        method, nfe = method or self.config.sample.method, nfe or self.config.sample.nfe
        if classifier is None and classifier_scale is not None:
            raise ValueError("classifier_scale needs a classifier (a classifier run or kuosan.load_classifier)")
        if isinstance(classifier, (str, Path)):
            classifier = load_classifier(classifier, device=self.device)
        y = self.labels(n, labels, None if classifier is None else classifier.num_classes)
        model = functools.partial(self.model, guidance, clip_x0, guidance_interval=guidance_interval,
                                  guidance_rescale=guidance_rescale, classifier=classifier,
                                  classifier_scale=1.0 if classifier_scale is None else classifier_scale)
        den, ctl = model(), None if control is None else control_images(self, control, n)
        g = torch.Generator(self.device).manual_seed(seed)
        if grid is not None:
            options["grid"] = grid
        out, b = [], batch_size or n
        for i in range(0, n, b):
            k = min(b, n - i)
            cond = {"y": y[i : i + k]} if y is not None else None
            if ctl is not None:  # ControlNet (kuosan.control): cond["control"], also in guidance's uncond branch
                cond, den = {**(cond or {}), "control": ctl[i : i + k]}, model(control=ctl[i : i + k])
            out.append(generate(den, (k, *self.data_shape), method=method, nfe=nfe, generator=g, device=self.device,
                                cond=cond, **options))
            if progress is not None:
                progress(k)
        return self.decode(torch.cat(out))

    def img2img(self, images: Tensor, strength: float, method: str | None = None, nfe: int | None = None,
                seed: int = 0, labels: int | Sequence[int] | Tensor | None = None, guidance: float | None = None,
                *, clip_x0: str | None = None, batch_size: int | None = None, **options: Any) -> Tensor:
        """SDEdit (Meng et al. 2022, arXiv:2108.01073): images (N, *data_shape) in data space noised to the
        time `strength` in [0, 1] names, then denoised with about strength * nfe evaluations (kuosan.edit.img2img);
        strength 0 returns the images, strength 1 is `generate(N, ...)` with the same seed and batch_size."""
        from .edit import img2img

        return self._edit(lambda den, x, i, **kw: img2img(den, x, strength, **kw), images, method, nfe, seed,
                          labels, guidance, clip_x0, batch_size, options)

    def inpaint(self, images: Tensor, mask: Tensor, method: str | None = None, nfe: int | None = None,
                seed: int = 0, resample: int = 1, jump: int = 10, labels: int | Sequence[int] | Tensor | None = None,
                guidance: float | None = None, *, clip_x0: str | None = None, batch_size: int | None = None,
                reconstruction: float = 0.0, **options: Any) -> Tensor:
        """Fill images (N, *data_shape) where mask = 0, keep them exactly where mask = 1; mask broadcasts to the
        images ((H, W), (1, H, W), (N, 1, H, W), ...). resample > 1: RePaint with chunks of `jump` steps
        (Lugmayr et al. 2022, arXiv:2201.09865); reconstruction = w_r > 0: reconstruction guidance (Ho et al.
        2022, arXiv:2204.03458, eq. 7); see kuosan.edit.inpaint.
        A latent run inpaints in latent space: the latent cells whose pixels are all known are held at the
        input's encoding (kuosan.latent.latent_known), the rest diffused, decoded, and the known pixels pasted
        back, so they are the input's exactly here too (Blended Latent Diffusion, Avrahami et al. 2023,
        arXiv:2206.02779, §3)."""
        from .edit import inpaint, known_mask

        pixels = self._pixels(images)
        known = known_px = known_mask(mask, pixels)
        if self.codec is not None:
            from .latent import latent_known

            known = latent_known(known_px, self.data_shape)
        out = self._edit(lambda den, x, i, **kw: inpaint(den, x, known[i].to(x.device), resample=resample,
                                                         jump=jump, reconstruction=reconstruction, **kw),
                         images, method, nfe, seed, labels, guidance, clip_x0, batch_size, options)
        return out if self.codec is None else torch.where(known_px, pixels, out)

    def _images(self, images: Tensor) -> Tensor:
        """images as the model sees them: _pixels, then encoded on a latent run."""
        x = self._pixels(images)
        return x if self.codec is None else self.codec.encode(x)

    def _pixels(self, images: Tensor) -> Tensor:
        """images as float32 on the pipeline's device, checked against the run's image shape and data range (not
        on a latent run: its decoder's images, e.g. its own samples, may overshoot the range slightly)."""
        x = torch.as_tensor(images).to(self.device, torch.float32)
        if tuple(x.shape[1:]) != self.image_shape or len(x) == 0:
            raise ValueError(f"images of shape {tuple(x.shape)} do not match this run's data: need "
                             f"(N, {', '.join(map(str, self.image_shape))})")
        lo_hi = _range(self.config)
        if lo_hi is not None and x.abs().max() > lo_hi[1] + 1e-3:
            raise ValueError(f"images must lie in [{lo_hi[0]:g}, {lo_hi[1]:g}] (data space); found "
                             f"{float(x.abs().max()):g}")
        return x

    @torch.no_grad()
    def _edit(self, run: Callable[..., Tensor], images, method, nfe, seed, labels, guidance, clip_x0, batch_size,
              options) -> Tensor:
        """run(den, batch, slice, method=, nfe=, generator=, cond=) on the checked images in batches sharing one
        generator seeded by `seed`, as generate does."""
        x = self._images(images)
        y, den = self.labels(len(x), labels), self.model(guidance, clip_x0)
        g = torch.Generator(self.device).manual_seed(seed)
        kw = {"method": method or self.config.sample.method, "nfe": nfe or self.config.sample.nfe, **options}
        out, b = [], batch_size or len(x)
        for i in range(0, len(x), b):
            sl = slice(i, i + b)
            out.append(run(den, x[sl], sl, generator=g, cond=None if y is None else {"y": y[sl]}, **kw))
        return self.decode(torch.cat(out))


def _range(cfg: RunConfig) -> tuple[float, float] | None:
    """The range the model's samples lie in: the data's, or none for a latent run's latents."""
    from .registry import data_range

    return None if cfg.autoencoder is not None else data_range(cfg.data)


def load_config_of(ckpt: Checkpoint) -> RunConfig:
    """The run config stored in a checkpoint, with out_dir set to the run directory it was found in."""
    if ckpt.config is None or "net" not in ckpt.state:
        raise ValueError(f"{ckpt.path} holds no run config; it was not written by `kuosan train`")
    cfg = parse_config(ckpt.config, str(ckpt.path / "state.json"))
    return cfg.model_copy(update={"out_dir": ckpt.path.parents[1]})


# What a U-Net argument left out of a checkpoint meant before kuosan chose GroupNorm groups and levels itself
_UNET_OLD_DEFAULTS = {"groups": 32, "channel_mults": (1, 2, 2), "attention_resolutions": (4,)}


def _net_kwargs(state: dict[str, Any]) -> dict[str, Any]:
    """build_net keyword arguments (with kind) from a checkpoint's state; runs written before automatic U-Net
    groups/levels (no "net_defaults" record) get the defaults they were trained with."""
    kw = dict(state["net"])
    if kw.get("kind") == "unet" and "net_defaults" not in state:
        for k, v in _UNET_OLD_DEFAULTS.items():
            kw.setdefault(k, v)
    return kw


def load(path: str | Path, ema: bool = True, device: str | torch.device = "auto") -> Pipeline:
    """The run (or checkpoint directory) at `path` as a Pipeline, with its EMA weights unless ema=False."""
    from .devices import pick_device
    from .nets import build_net
    from .registry import build_denoiser

    dev = pick_device(device) if isinstance(device, str) else torch.device(device)
    ckpt = load_checkpoint(path, device=dev)
    cfg = load_config_of(ckpt)
    if cfg.objective.kind == "classifier":
        raise ValueError(f"{ckpt.path} is a classifier run (objective kind 'classifier'): load it with "
                         "kuosan.load_classifier, or guide a diffusion run with it (--classifier)")
    if cfg.objective.kind == "autoencoder":
        raise ValueError(f"{ckpt.path} is an autoencoder run (objective kind 'autoencoder'): it has no diffusion "
                         "model to sample; it is the first stage of a latent diffusion run")
    if cfg.base is not None:  # an adapter run: the base run's network with this run's weights applied
        pipe = _load_adapted(ckpt, cfg, ema, dev)
    else:
        net = build_net(**_net_kwargs(ckpt.state))
        weights = ckpt.ema if ema and ckpt.ema is not None else ckpt.weights
        net.load_state_dict(weights)
        net.to(dev).eval().requires_grad_(False)
        pipe = Pipeline(build_denoiser(cfg, net), cfg, ckpt, device=dev)
    if CODEC_MODULE in ckpt.state:  # a latent run: the autoencoder it carries (kuosan/latent.py)
        from .latent import codec_from_checkpoint

        pipe.codec = codec_from_checkpoint(ckpt, dev)
        if pipe.codec.bound is None:  # a run trained before the bound was recorded: its training latents give it
            pipe.codec.bound = _latent_bound_of(cfg, pipe.codec)
    return pipe


def _latent_bound_of(cfg: RunConfig, codec: Any) -> list[float] | None:
    """The latent range of cfg's training data (kuosan.latent.latent_bound), or None where the data is gone."""
    from .latent import latent_bound
    from .registry import build_data

    try:
        data = build_data(cfg.data, cfg.train.seed)
    except (OSError, ValueError, ImportError):
        return None
    return latent_bound(codec.encode(data.x.to(next(codec.ae.parameters()).device)))


def _load_adapted(ckpt: Checkpoint, cfg: RunConfig, ema: bool, dev: torch.device) -> Pipeline:
    """A run that adapts a base run (cfg.base): one branch per objective kind (LoRA, control)."""
    if cfg.objective.kind == "control":  # ControlNet: base U-Net + trained branch (kuosan/control.py)
        from .control import load_control

        return load_control(ckpt, cfg, ema, dev)
    if cfg.objective.kind == "lora":  # the base run's network with this run's LoRA factors (docs/finetune.md)
        from .lora_pipeline import load_lora

        return load_lora(ckpt, cfg, ema, dev)
    raise ValueError(f"{ckpt.path}: runs of objective kind {cfg.objective.kind!r} (base {cfg.base}) cannot be "
                     "loaded by this kuosan")


def load_classifier(path: str | Path, ema: bool = True, device: str | torch.device = "auto") -> NoisyClassifier:
    """The classifier run (objective kind "classifier") at `path` as a NoisyClassifier: `.log_prob(x_t, t, y)`,
    `num_classes`, `data_shape`, `process` (Dhariwal & Nichol 2021, arXiv:2105.05233, §4)."""
    from .devices import pick_device
    from .guidance import NoisyClassifier
    from .nets import build_net
    from .registry import build_process

    dev = pick_device(device) if isinstance(device, str) else torch.device(device)
    ckpt = load_checkpoint(path, device=dev)
    cfg = load_config_of(ckpt)
    if cfg.objective.kind != "classifier":
        raise ValueError(f"{ckpt.path} is not a classifier run (objective kind {cfg.objective.kind!r}); train one "
                         "with `kuosan train digits-classifier` or objective.kind=classifier")
    net = build_net(**_net_kwargs(ckpt.state))
    net.load_state_dict(ckpt.ema if ema and ckpt.ema is not None else ckpt.weights)
    net.to(dev).eval().requires_grad_(False)
    st = ckpt.state
    return NoisyClassifier(net, build_process(cfg.process), st["num_classes"], st["data_shape"],
                           name=str(ckpt.path.parents[1]), class_names=st.get("class_names") or ())
