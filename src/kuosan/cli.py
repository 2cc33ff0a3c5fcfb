"""The `kuosan` command: train a recipe, sample a checkpoint, inspect one, list recipes, run the demo.

    kuosan train toy2d-ddpm --set train.steps=2000        # a recipe name or a YAML path
    torchrun --nproc_per_node=2 -m kuosan train digits-ddpm
    kuosan sample runs/toy2d-ddpm --method dpmpp-2m --nfe 20 --n 1000
    kuosan info runs/toy2d-ddpm
    kuosan tune-steps runs/toy2d-ddpm --method dpmpp-2m --nfe 10   # a grid fitted to the model (LD3)
    kuosan edit runs/digits-ddpm --inpaint digits.npz --mask top-half   # or --img2img x.png --strength 0.6
    kuosan export runs/digits-ddpm --format diffusers --out out/ddpm-diffusers   # docs/interop.md
    kuosan recipes
    kuosan demo                                             # = make demo

Only this module (and serve) reads config files; errors the user can fix are printed as one message.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from .config import ConfigError, load_config

app = typer.Typer(
    name="kuosan",
    help="Diffusion models as the book AIGC 扩散模型 lays them out: train, sample, inspect.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True, soft_wrap=True)
out = Console(soft_wrap=True)

# The demo's sampler: DDPM ancestral sampling (book Algorithm 2) on a 100-step subgrid, about a second for 64
# digits. On this small, briefly trained U-Net the PF-ODE solvers (DDIM, DPM-Solver++ 2M at 20 NFE) leave
# speckles (a few pixels far outside [-1, 1]); the ancestral sampler's fresh noise does not (docs/training.md).
DEMO_SAMPLER = ("ddpm", 100)
# Single-threaded: on a CPU shared with other work, torch's second thread spends its time spin-waiting
# (measured 5x slower per step under load); on an idle 2-core machine it costs little.
DEMO_OVERRIDES = ["train.threads=1"]


# --- recipes ---------------------------------------------------------------------------------------------
def recipe_dirs() -> list[Path]:
    """Where recipes live: kuosan/configs/ inside the package (shipped in the wheel as package data)."""
    here = Path(__file__).resolve().parent
    return [d for d in (here / "configs",) if d.is_dir()]


def recipe_files() -> dict[str, Path]:
    """Recipe name -> YAML file (first directory wins)."""
    found: dict[str, Path] = {}
    for d in recipe_dirs():
        for f in sorted(d.glob("*.yaml")):
            found.setdefault(f.stem, f)
    return found


def resolve_recipe(name_or_path: str) -> Path:
    """A YAML path as given, or the file of a recipe name ("digits-ddpm")."""
    p = Path(name_or_path)
    if p.is_file():
        return p
    recipes = recipe_files()
    if p.stem in recipes and p.suffix in ("", ".yaml"):
        found = recipes[p.stem]
        return found.relative_to(Path.cwd()) if found.is_relative_to(Path.cwd()) else found
    raise ConfigError(
        f"{name_or_path!r} is neither a config file nor a recipe; recipes: {', '.join(recipes) or '(none)'}"
    )


def recipe_header(path: Path) -> dict[str, str]:
    """The leading comment of a recipe: its first line is the title, then "key: value" lines (book: §4.1)."""
    info: dict[str, str] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            break
        text = line.lstrip("#").strip()
        key, sep, value = text.partition(":")
        if "title" not in info:
            info["title"] = text
        elif sep and key.strip().isidentifier():
            info[key.strip()] = value.strip()
    return info


# --- errors ---------------------------------------------------------------------------------------------
def _fail(err: BaseException, code: int = 1) -> typer.Exit:
    """Print an expected error as one message (KUOSAN_DEBUG=1 re-raises it with its traceback)."""
    if os.environ.get("KUOSAN_DEBUG"):
        raise err
    console.print(f"[bold red]error:[/] {err}", highlight=False, markup=True)
    return typer.Exit(code)


def _expected_errors() -> tuple[type[BaseException], ...]:
    from .data import DataError
    from .train import TrainingDiverged

    return ConfigError, DataError, TrainingDiverged, FileExistsError, FileNotFoundError, ValueError, ImportError


# --- commands -------------------------------------------------------------------------------------------
def _resolve_run_config(config: str | None, overrides: list[str], out_dir: Path | None, resume: bool):
    """The config to train: the recipe's with overrides; when resuming a run that has a saved config, that config
    (only train.steps and other RESUMABLE_KEYS may change, and a recipe given must agree with it)."""
    from .config import RESUMABLE_KEYS, ConfigError, config_dict, load_config

    saved = out_dir / "config.yaml" if out_dir is not None else None
    if resume and saved is not None and saved.is_file():
        for item in overrides:
            key = item.partition("=")[0].strip()
            if not key.startswith(RESUMABLE_KEYS):
                keys = ", ".join(k + "*" if k.endswith(".") else k for k in RESUMABLE_KEYS)
                raise ConfigError(f"--set {key}: a resumed run keeps its saved config ({saved}); only {keys} may "
                                  "change. Train into a new --out to change anything else")
        cfg = load_config(saved, overrides).model_copy(update={"out_dir": out_dir})
        if config is not None:  # the recipe may change what a resumed run may change (train.steps, ...), no more
            recipe_cfg = load_config(resolve_recipe(config), overrides)
            differ = sorted(_diff(config_dict(recipe_cfg), config_dict(cfg)))
            if differ:
                raise ConfigError(f"{config} differs from the run's saved config {saved} in {', '.join(differ[:6])}; "
                                  f"resume with `kuosan train --resume --out {out_dir}` (no recipe) to continue the "
                                  "run as it was, or train into a new --out")
            return recipe_cfg.model_copy(update={"out_dir": out_dir, "name": cfg.name})
        return cfg
    if config is None:
        if resume and out_dir is not None:
            raise ConfigError(f"{out_dir} holds no config.yaml: it is not a kuosan run (or was never started)")
        raise ConfigError("give a recipe or config file (see `kuosan recipes`), or --resume --out RUN")
    return load_config(resolve_recipe(config), [*overrides, *([f"out_dir={out_dir}"] if out_dir else [])])


def _diff(a: Any, b: Any, prefix: str = "") -> list[str]:
    """Dotted keys where two config trees differ, ignoring the keys a resumed run may change."""
    from .config import RESUMABLE_KEYS

    if prefix.startswith(RESUMABLE_KEYS) or prefix == "name":
        return []
    if isinstance(a, dict) and isinstance(b, dict):
        return [k for key in sorted(set(a) | set(b))
                for k in _diff(a.get(key), b.get(key), f"{prefix}.{key}" if prefix else key)]
    return [] if a == b else [prefix]


@app.command()
def train(
    config: str | None = typer.Argument(None, help="A recipe name (see `kuosan recipes`) or a YAML config file; "
                                        "omit it with --resume --out RUN to continue a run with its saved config."),
    set_: list[str] = typer.Option([], "--set", "-s", help="Override a key: --set train.steps=100 (repeatable); "
                                   "a whole section: --set 'data={kind: folder, root: DIR}'."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its newest checkpoint."),
    out_dir: Path | None = typer.Option(None, "--out", help="Output directory (default runs/<name>)."),
    skip_bad: bool = typer.Option(False, "--skip-bad", help="Skip unreadable or mismatched images (listed in the "
                                  "run's skipped_files.txt) instead of failing on the first."),
) -> None:
    """Train a model from a recipe or config (torchrun --nproc_per_node=N -m kuosan train ... for DDP)."""
    try:
        cfg = _resolve_run_config(config, [*set_, *(["data.skip_bad=true"] if skip_bad else [])], out_dir, resume)
        from .train import train_from_config

        result = train_from_config(cfg, resume=resume, log=lambda s: out.print(s, markup=False, highlight=False))
    except _expected_errors() as err:
        raise _fail(err) from None
    if int(os.environ.get("RANK", "0")) == 0:
        verb = "interrupted at" if result.interrupted else "trained to"
        out.print(f"{verb} step {result.step}; checkpoint {result.checkpoint}")
        clf = cfg.objective.kind == "classifier"
        use = f"guide a run with it: kuosan sample RUN --classifier {cfg.run_dir}" if clf else \
            f"sample it with: kuosan sample {cfg.run_dir}"
        more = f"; continue it with: kuosan train --resume --out {cfg.run_dir}" if result.interrupted else ""
        out.print(use + more)
    if result.interrupted:
        raise typer.Exit(130)


@app.command()
def resume(
    run: Path = typer.Argument(..., help="A run directory written by `kuosan train`."),
    set_: list[str] = typer.Option([], "--set", "-s", help="e.g. --set train.steps=4000 to train longer."),
) -> None:
    """Continue a stopped or finished run with its saved config (= kuosan train --resume --out RUN)."""
    train(None, set_, True, run, False)


@app.command()
def finetune(
    base_run: Path = typer.Argument(..., help="The run to adapt (a run or checkpoint directory)."),
    lora: int = typer.Option(..., "--lora", help="LoRA rank r (Hu et al. 2021): factors B (out x r) A (r x in)."),
    alpha: float | None = typer.Option(None, "--alpha", help="LoRA alpha; the update is scaled by alpha / r "
                                       "(default alpha = r)."),
    targets: str | None = typer.Option(None, "--targets", help="Comma-separated layer names, e.g. qkv,proj "
                                       "(default: the network's, see docs/finetune.md)."),
    set_: list[str] = typer.Option([], "--set", "-s", help="Override a key, e.g. --set data.classes=[3] "
                                   "--set train.steps=500 (repeatable)."),
    out_dir: Path | None = typer.Option(None, "--out", help="Output directory (default runs/<base name>-lora<r>)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the fine-tuning run in --out."),
) -> None:
    """Fine-tune a trained run with LoRA: only low-rank factors train; the run holds the adapter alone."""
    try:
        from .train import train_from_config
        from .train.finetune import finetune_config, write_adapter

        names = [t.strip() for t in targets.split(",") if t.strip()] if targets else None
        cfg = finetune_config(base_run, lora, alpha, names, set_, out_dir)
        if resume and (cfg.run_dir / "config.yaml").is_file():  # the same settings, but train.steps and the like
            from .config import config_dict

            differ = sorted(_diff(config_dict(cfg), config_dict(load_config(cfg.run_dir / "config.yaml"))))
            if differ:
                raise ConfigError(f"{cfg.run_dir} was fine-tuned with other settings ({', '.join(differ[:6])}): "
                                  "resume with the same --lora / --alpha / --targets / --set (or `kuosan resume "
                                  f"{cfg.run_dir}`), or fine-tune into a new --out")
        result = train_from_config(cfg, resume=resume, log=lambda s: out.print(s, markup=False, highlight=False))
        adapter = write_adapter(cfg.run_dir)
    except _expected_errors() as err:
        raise _fail(err) from None
    verb = "interrupted at" if result.interrupted else "fine-tuned to"
    out.print(f"{verb} step {result.step}; checkpoint {result.checkpoint}; adapter {adapter}")
    out.print(f"sample it with: kuosan sample {cfg.run_dir}")
    if result.interrupted:
        raise typer.Exit(130)


def _parse_classes(text: str | None, num_classes: int | None) -> list[int] | None:
    """--class: None -> the run's default; "all" -> every class; "3" or "3,5" -> those classes."""
    if text is None:
        return None
    if num_classes is None:
        raise ValueError("--class needs a class-conditional run (trained on labelled data); this run has no classes")
    if text.strip() == "all":
        return list(range(num_classes))
    try:
        return [int(k) for k in text.split(",") if k.strip()]
    except ValueError:
        raise ValueError(f"--class takes 'all' or class indices like 3 or 3,5; got {text!r}") from None


@app.command()
def sample(
    checkpoint: Path = typer.Argument(..., help="A run directory or a checkpoint directory."),
    method: str | None = typer.Option(None, help="Sampler spec, e.g. dpmpp-2m or ddim:eta=1.0 "
                                      "(kuosan.samplers.available()), or another tool's name like 'DPM++ 2M Karras' "
                                      "(docs/samplers.md); default: the run's."),
    nfe: int | None = typer.Option(None, help="Network evaluations to spend; default: the run's."),
    seed: int = typer.Option(0, help="Seed of the prior noise and any sampler noise."),
    n: int | None = typer.Option(None, "--n", help="Number of samples (per class with --class); default: the run's."),
    classes: str | None = typer.Option(None, "--class", help="Class-conditional runs: 'all' (one row per class) or "
                                       "indices '3' / '3,5'; default: the classes in turn."),
    guidance: float | None = typer.Option(None, help="Classifier-free guidance scale w (1 = the conditional model)."),
    guidance_interval: str | None = typer.Option(None, "--guidance-interval", help="Guide only at noise levels "
                                                 "sigma/alpha in (LO, HI], e.g. 0.3,5 (arXiv:2404.07724); none: "
                                                 "everywhere; default: the run's sample.guidance_interval."),
    guidance_rescale: float = typer.Option(0.0, "--guidance-rescale", help="Guidance rescale phi in [0, 1] "
                                           "(arXiv:2305.08891; 0.7 is the paper's)."),
    classifier: Path | None = typer.Option(None, "--classifier", help="Classifier guidance (arXiv:2105.05233) by this "
                                           "classifier run, for any run; --class then names the classifier's classes."),
    classifier_scale: float | None = typer.Option(None, "--classifier-scale", help="Classifier guidance scale s "
                                                  "(default 1 with --classifier)."),
    control: Path | None = typer.Option(None, "--control", help="ControlNet runs: condition images, .npy / .npz "
                                        "(array 'control') or one PNG; --n defaults to their count (docs/control.md)."),
    clip_x0: str | None = typer.Option(None, "--clip-x0", help="x0 clipping: auto, none, clip, dynamic; "
                                       "default: the run's (auto: clip images to [-1, 1])."),
    out_path: Path | None = typer.Option(None, "--out", help="PNG path; the .npz goes beside it."),
    ema: bool = typer.Option(True, "--ema/--no-ema", help="Use the EMA weights (default) or the raw ones."),
    device: str = typer.Option("auto", help="cpu, cuda, or auto."),
    grid: str | None = typer.Option(None, "--grid", help="'default': ignore a grid stored by kuosan tune-steps "
                                    "for this method and NFE (used when one exists)."),
) -> None:
    """Generate samples: a PNG (image grid, or a scatter plot of 2-D points) and an .npz (samples, labels)."""
    try:
        if n is not None and n < 1:
            raise ValueError(f"--n must be at least 1; got {n}")
        png, npz, x = sample_run(checkpoint, method, nfe, seed, n, out_path, ema, device, classes=classes,
                                 guidance=guidance, clip_x0=clip_x0,
                                 guidance_interval=parse_interval(guidance_interval),
                                 guidance_rescale=guidance_rescale, classifier=classifier,
                                 classifier_scale=classifier_scale, control=control, tuned=grid != "default")
    except _expected_errors() as err:
        raise _fail(err) from None
    out.print(f"wrote {png} and {npz} ({' x '.join(map(str, x.shape))} samples)")
    if method and (line := _sampler_note(method)):  # another tool's sampler name (kuosan.samplers.resolve)
        out.print(line)


def _sampler_note(spec: str) -> str | None:
    from .samplers.names import describe

    return describe(spec)


def parse_floats(text: str | None, flag: str) -> list[float] | None:
    """'0,1,2.5' -> [0.0, 1.0, 2.5]."""
    if text is None:
        return None
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"{flag} takes comma-separated numbers like 0,1,3; got {text!r}") from None


def parse_interval(text: str | None) -> tuple[float, float] | None | str:
    """--guidance-interval LO,HI -> (LO, HI); none -> None (guide at every noise level); absent -> "run" (the
    run's sample.guidance_interval)."""
    if text is None:
        return "run"
    if text.strip().lower() == "none":
        return None
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise ValueError(f"--guidance-interval takes two noise levels LO,HI like 0.3,5; got {text!r}") from None
    return lo, hi


def sample_run(checkpoint, method=None, nfe=None, seed=0, n=None, out_path=None, ema=True, device="auto", *,
               classes=None, guidance=None, clip_x0=None, title=None, **guide):
    """Load a run, sample it and write the PNG (one row per class with `classes`) and .npz; returns
    (png, npz, samples)."""
    from .export.diffusers_sample import is_diffusers_dir, sample_diffusers

    if is_diffusers_dir(checkpoint):  # a local diffusers UNet2DModel directory (docs/interop.md)
        guide.pop("tuned", None)
        return sample_diffusers(checkpoint, method, nfe, seed, n, out_path, device, classes=classes,
                                guidance=guidance, clip_x0=clip_x0, title=title, **guide)
    from .eval.evaluate import parse_sampler
    from .pictures import save_npz, save_samples
    from .pipeline import load, load_classifier
    from .tuned_grids import load_tuned

    pipe = load(checkpoint, ema=ema, device=device)
    spec = method or pipe.config.sample.method
    name, options = parse_sampler(spec)
    nfe = nfe or pipe.config.sample.nfe
    if guide.pop("tuned", False) and not options and (found := load_tuned(pipe.run_dir, name, nfe)):
        guide["grid"] = found[1]  # kuosan tune-steps' grid for (method, nfe)
        out.print(f"using the tuned grid {found[0]} (--grid default ignores it)")
    clf = guide.get("classifier")  # classifier guidance: labels are the classifier's classes
    if clf is not None:
        guide["classifier"] = clf = load_classifier(clf, ema=ema, device=pipe.device)
    k = None if clf is None else clf.num_classes
    if guide.get("control") is not None:  # ControlNet: condition images from a file (kuosan.control)
        from .control import read_control

        guide["control"] = read_control(guide["control"], pipe)
        n = n or (len(guide["control"]) if guide["control"].ndim == 4 and len(guide["control"]) > 1 else None)
    wanted = _parse_classes(classes, pipe.num_classes if clf is None else k)
    if wanted is not None:  # n per class, class-major: one grid row per class
        per = n or 8
        labels = pipe.labels(per * len(wanted), class_major(wanted, per), k)
        x = pipe.generate(len(labels), name, nfe, labels=labels, guidance=guidance, seed=seed, clip_x0=clip_x0,
                          **guide, **options)
        nrow = per
    else:
        n = n or pipe.config.sample.n
        labels = pipe.labels(n, None, k)
        x = pipe.generate(n, name, nfe, guidance=guidance, seed=seed, clip_x0=clip_x0, **guide, **options)
        nrow = None
    stem = f"samples-{spec.replace(':', '_').replace('=', '').replace('/', '-')}-{nfe}"
    stem += "" if guidance is None else f"-w{guidance:g}"
    s = None if clf is None else (1.0 if guide.get("classifier_scale") is None else guide["classifier_scale"])
    stem += "" if s is None else f"-cs{s:g}"
    png = Path(out_path) if out_path else pipe.run_dir / f"{stem}.png"
    w = (f", guidance {guidance:g}" if guidance is not None else "") + ("" if s is None else f", classifier {s:g}")
    save_samples(x, png, title=title or f"{pipe.run_dir.name}: {spec}, {nfe} NFE{w}, step {pipe.step}", nrow=nrow)
    extra = {} if labels is None else {"labels": labels.cpu().numpy()}
    if guide.get("control") is not None:
        extra["control"] = guide["control"].cpu().numpy()
    npz = save_npz(x, png.with_suffix(".npz"), method=spec, nfe=nfe, seed=seed, step=pipe.step,
                   guidance=float("nan") if guidance is None else guidance, **extra)
    return png, npz, x


def class_major(classes: list[int], per: int) -> list[int]:
    """[c0] * per + [c1] * per + ...: class-major labels, one grid row per class."""
    return [c for c in classes for _ in range(per)]


@app.command()
def info(checkpoint: Path = typer.Argument(..., help="A run directory or a checkpoint directory.")) -> None:
    """What a checkpoint holds: step, objective, network and parameter count, EMA, process, data, the config."""
    import yaml

    from .checkpoint import load_checkpoint

    try:
        ckpt = load_checkpoint(checkpoint)
    except _expected_errors() as err:
        raise _fail(err) from None
    st = ckpt.state
    cfg = st.get("config") or {}
    n_params = sum(v.numel() for v in ckpt.weights.values())
    obj = st.get("objective") or {"kind": "denoising"}
    targets = ", ".join(f"target {k} (EMA {v['decay']}, {v['updates']} updates)"
                        for k, v in obj.get("targets", {}).items())
    classes = st.get("num_classes")
    rows = [
        ("checkpoint", str(ckpt.path)),
        ("step", f"{ckpt.step} of {cfg.get('train', {}).get('steps', '?')}"),
        ("objective", f"{obj['kind']}" + (f", p_uncond {cfg.get('objective', {}).get('p_uncond')}"
                                          if classes and obj["kind"] == "denoising" else "")
         + (f"; {targets}" if targets else "")),
        ("network", f"{st.get('net', {}).get('kind', '?')}, {n_params:,} parameters ({len(ckpt.weights)} tensors)"),
        (
            "ema",
            f"yes, {st.get('ema_updates', '?')} updates, decay {cfg.get('train', {}).get('ema_decay', '?')}"
            if ckpt.ema is not None
            else "no",
        ),
        ("process", str(cfg.get("process", {}))),
        ("prediction", f"{cfg.get('prediction') or 'default'}, precondition {cfg.get('precondition', 'none')}"),
        ("data", f"{cfg.get('data', {}).get('kind', '?')}, sample shape {st.get('data_shape')}"
         + (f", {classes} classes" if classes else "")
         + (f", {len(st['skipped_files'])} files skipped" if st.get("skipped_files") else "")),
        ("sampling", f"{cfg.get('sample', {}).get('method')} ({cfg.get('sample', {}).get('nfe')} NFE), "
         f"clip_x0 {cfg.get('sample', {}).get('clip_x0', 'none')}"),
        ("seed / processes", f"{st.get('seed')} / {st.get('world_size', 1)}"),
        ("optimizer", "saved" if st.get("optimizer") else "not saved"),
        ("files", ", ".join(f"{f.name} ({f.stat().st_size / 1e6:.2f} MB)" for f in sorted(ckpt.path.iterdir()))),
    ]
    if "lora" in obj:  # a LoRA run: the adapter's settings and the base it adapts (network row = the factors)
        lo, bs = obj["lora"], obj.get("base", {})
        rows.insert(3, ("lora", f"rank {lo['rank']}, alpha {lo['alpha']:g}, {len(lo['layers'])} layers "
                                f"({', '.join(lo['targets'])}); base {bs.get('path')} (step {bs.get('step')})"))
    for k, v in rows:
        out.print(f"{k + ':':<18}{v}", highlight=False, markup=False)
    out.print("config:")
    out.print(yaml.safe_dump(cfg, sort_keys=False), highlight=False, markup=False)


@app.command()
def recipes() -> None:
    """The recipes: one YAML per book model, with its book section and the command that trains it."""
    t = Table(title="kuosan recipes: kuosan train RECIPE [--set key=value]", title_justify="left")
    t.add_column("recipe", no_wrap=True)
    t.add_column("book", no_wrap=True)
    t.add_column("model", overflow="fold")
    for name, path in recipe_files().items():
        h = recipe_header(path)
        t.add_row(name, h.get("book", "").split(" (")[0], h.get("title", "").split(":")[0])
    out.print(t)


@app.command()
def demo(
    out_dir: Path = typer.Option(Path("runs/demo"), "--out", help="Where the run and the samples go."),
    set_: list[str] = typer.Option([], "--set", "-s", help="Override a key of the digits-ddpm recipe."),
    fresh: bool = typer.Option(False, "--fresh", help="Retrain even if a finished demo run is there."),
) -> None:
    """Train the digits-ddpm recipe on the CPU (a few minutes), sample 64 digits, save a grid and the raw samples."""
    import shutil

    from .train import find_checkpoint, train_from_config

    try:
        cfg = load_config(resolve_recipe("digits-ddpm"), [*DEMO_OVERRIDES, *set_, f"out_dir={out_dir}"])
        if fresh:
            shutil.rmtree(out_dir, ignore_errors=True)
        step = _finished_step(out_dir)
        done = step >= cfg.train.steps
        t0 = time.perf_counter()
        if done:
            out.print(f"{find_checkpoint(out_dir)} is already trained to {cfg.train.steps} steps (--fresh retrains)")
        else:
            out.print(f"training digits-ddpm ({cfg.train.steps} steps) into {out_dir} ...")
            result = train_from_config(cfg, resume=step >= 0, log=None)  # a demo stopped half-way continues
            if result.interrupted:
                raise typer.Exit(130)
        t1 = time.perf_counter()
        method, nfe = DEMO_SAMPLER
        png, npz, x = sample_run(out_dir, method, nfe, 0, cfg.sample.n, out_dir / "samples.png",
                                 title=f"kuosan demo: digits DDPM, {method} ({nfe} NFE)")
    except _expected_errors() as err:
        raise _fail(err) from None
    t2 = time.perf_counter()
    if not done:
        out.print(f"trained in {t1 - t0:.0f} s")
    out.print(f"sampled {x.shape[0]} digits with {method} ({nfe} NFE) in {t2 - t1:.1f} s")
    out.print(f"samples: {png} (grid) and {npz} ({' x '.join(map(str, x.shape))} raw samples)")


@app.command()
def edit(
    checkpoint: Path = typer.Argument(..., help="A run directory or a checkpoint directory."),
    img2img: Path | None = typer.Option(None, "--img2img", help="SDEdit these inputs: an image, a folder, .npy/.npz."),
    inpaint: Path | None = typer.Option(None, "--inpaint", help="Inpaint these inputs: an image, a folder, .npy/.npz."),
    strength: float = typer.Option(0.6, help="img2img: 0 = the input, 1 = a fresh sample (same seed as sample)."),
    mask: str | None = typer.Option(None, help="inpaint: top-half|bottom-half|left-half|right-half (the half kept), "
                                    "an image (white = known) or an .npy of 0/1 (1 = known)."),
    method: str | None = typer.Option(None, help="Sampler spec (kuosan.samplers.available()); default: the run's."),
    nfe: int | None = typer.Option(None, help="Network evaluations of a full pass; default: the run's."),
    seed: int = typer.Option(0, help="Seed of the noise."),
    resample: int = typer.Option(1, help="inpaint: RePaint resamplings r (1 = plain replacement)."),
    jump: int = typer.Option(10, help="inpaint: RePaint jump length j (grid steps per chunk)."),
    reconstruction: float = typer.Option(0.0, help="inpaint: reconstruction guidance weight w_r (Ho et al. 2022, "
                                         "eq. 7; 0 = off)."),
    label: str | None = typer.Option(None, help="Class-conditional runs: a class index, or one per input: 3,5,..."),
    guidance: float | None = typer.Option(None, help="Classifier-free guidance scale w (1 = the conditional model)."),
    out_path: Path | None = typer.Option(None, "--out", help="PNG path; the .npz goes beside it."),
    device: str = typer.Option("auto", help="cpu, cuda, or auto."),
) -> None:
    """Edit images with a run: SDEdit (--img2img) or inpainting (--inpaint, --mask); writes a PNG grid
    (input | mask | result per image) and an .npz (samples, inputs, mask)."""
    from .edit_files import edit_run

    try:
        if (img2img is None) == (inpaint is None):
            raise ValueError("give exactly one of --img2img INPUT or --inpaint INPUT")
        labels = None if label is None else [int(k) for k in label.split(",") if k.strip()]
        png, npz, x = edit_run(checkpoint, "img2img" if img2img else "inpaint", img2img or inpaint,
                               strength=strength, mask=mask, method=method, nfe=nfe, seed=seed, out_path=out_path,
                               labels=labels, guidance=guidance, resample=resample, jump=jump, device=device,
                               reconstruction=reconstruction)
    except _expected_errors() as err:
        raise _fail(err) from None
    out.print(f"wrote {png} and {npz} ({' x '.join(map(str, x.shape))} results)")


@app.command("tune-steps")
def tune_steps(
    checkpoint: Path = typer.Argument(..., help="A run directory."),
    method: str = typer.Option(..., help="A deterministic ODE sampler, e.g. dpmpp-2m, unipc, dpmpp-3m."),
    nfe: int = typer.Option(..., help="Network evaluations the grid is for (the final denoise counts one)."),
    n_calib: int = typer.Option(256, "--n-calib", help="Prior draws to fit on (the classes in turn)."),
    seed: int = typer.Option(0, help="Seed of the calibration draws."),
    ref_tol: float = typer.Option(1e-6, "--ref-tol", help="rtol = atol of the rk45 reference solve."),
    device: str = typer.Option("auto", help="cpu, cuda, or auto."),
) -> None:
    """Fit a time grid to the run's model (LD3, arXiv:2405.15506); `kuosan sample` then uses it (docs/samplers.md)."""
    try:
        from .pipeline import load
        from .tuned_grids import tune_run

        path, rec = tune_run(load(checkpoint, device=device), method, nfe, n_calib, seed=seed, ref_tol=ref_tol)
    except _expected_errors() as err:
        raise _fail(err) from None
    out.print(f"wrote {path}: RMS to the reference on {n_calib} draws {rec['rms_default']:.4g} (default grid) -> "
              f"{rec['rms_tuned']:.4g} (tuned), {rec['fit_seconds']} s")


@app.command()
def export(
    checkpoint: Path = typer.Argument(..., help="A run directory or a checkpoint directory."),
    format: str = typer.Option(..., "--format", help="diffusers (a DDPMPipeline directory) or onnx."),
    out_dir: Path | None = typer.Option(None, "--out", help="Output directory (default <run>/export-<format>)."),
    ema: bool = typer.Option(True, "--ema/--no-ema", help="Export the EMA weights (default) or the raw ones."),
) -> None:
    """Write a run for another toolkit: --format diffusers gives a directory diffusers.DDPMPipeline.from_pretrained
    loads (docs/interop.md)."""
    from .export import export_run

    try:
        target, summary = export_run(checkpoint, out_dir, format, ema=ema)
    except _expected_errors() as err:
        raise _fail(err) from None
    out.print(f"wrote {target} (max |kuosan - UNet2DModel| = {summary['max_abs_diff']:.2g})")


def _finished_step(run_dir: Path) -> int:
    from .train import find_checkpoint

    try:
        return int(find_checkpoint(run_dir).name.removeprefix("step-"))
    except (FileNotFoundError, ValueError):
        return -1


@app.command("eval")
def eval_(
    checkpoint: Path = typer.Argument(..., help="A run directory or a checkpoint directory."),
    samplers: str = typer.Option(
        "dpmpp-2m-sde,dpmpp-2m",
        help="Comma-separated samplers (kuosan.samplers.available()), each optionally with options: "
        "unipc:grid=uniform, ddim:eta=1.0, dpmpp-2m:thresholding=true, or other tools' names: DPM++ 2M Karras.",
    ),
    nfe: str = typer.Option("10,20", help="Comma-separated NFE budgets (the book's comparison: 5,10,20,50,1000)."),
    nfe_for: list[str] = typer.Option([], "--nfe-for", help="Budgets of one sampler: --nfe-for dpmpp-2m=5,10,20."),
    n: int = typer.Option(500, "--n", help="Samples per sampler and NFE (1000+ for FD within a few %)."),
    nll: bool = typer.Option(False, "--nll", help="Add held-out bits/dim: PF-ODE (Hutchinson) and the DDPM bound."),
    nll_n: int | None = typer.Option(None, "--nll-n", help="Held-out samples for --nll (default: all)."),
    out_dir: Path | None = typer.Option(None, "--out", help="Output directory (default <run>/eval)."),
    inception: Path | None = typer.Option(None, "--inception", help="Local FID Inception weights (pytorch-fid)."),
    seed: int = typer.Option(0, help="Seed of the prior noise, sampler noise and probes."),
    ema: bool = typer.Option(True, "--ema/--no-ema", help="Use the EMA weights (default) or the raw ones."),
    device: str = typer.Option("auto", help="cpu, cuda, or auto."),
    clip_x0: str | None = typer.Option(None, "--clip-x0", help="x0 clipping for every sampler: auto, none, clip, "
                                       "dynamic; default: the run's."),
    guidance: str | None = typer.Option(None, help="Class-conditional runs: classifier-free guidance scales to "
                                        "sweep, e.g. 0,1,2,3,5 (adds class accuracy and an FD-vs-accuracy plot)."),
) -> None:
    """Sample quality against NFE (FD, KID, precision/recall) per sampler against held-out data:
    report.md/json, plot, sample sheets."""
    from .eval.report import run_eval

    try:
        if n < 2:
            raise ValueError(f"--n must be at least 2; got {n}")
        budgets = {"*": nfe, **dict(item.rsplit("=", 1) for item in nfe_for)}
        nfes = {s.strip(): [int(k) for k in v.split(",") if k.strip()] for s, v in budgets.items()}
        run_eval(checkpoint, [s.strip() for s in samplers.split(",") if s.strip()], nfes, n, nll, out_dir,
                 nll_n=nll_n, inception=inception, seed=seed, ema=ema, device=device, clip_x0=clip_x0,
                 guidance=parse_floats(guidance, "--guidance"),
                 log=lambda line: out.print(line, markup=False, highlight=False))
    except _expected_errors() as err:
        raise _fail(err) from None


def main() -> None:  # pragma: no cover - `python -m kuosan`
    app(prog_name="kuosan")
