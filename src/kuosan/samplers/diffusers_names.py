"""diffusers scheduler classes (0.42) and their configs as kuosan methods and grids (see names.py).

The grid follows from the config: use_karras_sigmas -> "karras", use_exponential_sigmas / use_lu_lambdas ->
"logsnr", timestep_spacing "leading" / "trailing" -> DiscreteVP's integer grids, "linspace" -> "uniform" (only
approximately: see the notes). DPMSolverMultistep, UniPC and DPMSolverSinglestep round the network's timestep
to an integer even on Karras sigmas while their update uses the exact sigma: kuosan evaluates the network at
the grid's own time, so those entries are "nearest" (tests/test_sampler_names.py measures the gap).
"""

from __future__ import annotations

from typing import Any

from .names import NoEquivalent, Resolved

__all__ = ["DIFFUSERS_CLASSES", "TABLE_CONFIGS", "resolve_diffusers", "split_config", "option_value"]

# class -> (kuosan method or None, how its timesteps reach the network, options, note)
#   "integer": integer timesteps (DDIM, DDPM); "rounded": the network sees rounded timesteps; "float": fractional
DIFFUSERS_CLASSES: dict[str, tuple[str | None, str, dict[str, Any], str]] = {
    "DDIMScheduler": ("ddim", "integer", {}, ""),
    "DDPMScheduler": ("ddpm", "integer", {}, "variance_type fixed_small = the posterior variance"),
    "DPMSolverMultistepScheduler": ("dpmpp-2m", "rounded", {}, ""),
    "UniPCMultistepScheduler": ("unipc", "rounded", {"order": 2}, "kuosan also corrects the final denoise"),
    "DPMSolverSinglestepScheduler": ("dpmpp-2s", "rounded", {}, "diffusers takes the intermediate point from the "
                                     "grid itself (kuosan: the log-SNR midpoint)"),
    "EulerDiscreteScheduler": ("euler", "float", {}, ""),
    "EulerAncestralDiscreteScheduler": ("ddim", "float", {"eta": 1.0}, "the ancestral Euler step is DDIM's eta = 1 "
                                        "step on x/alpha; sampler noise differs as random numbers only"),
    "HeunDiscreteScheduler": ("heun", "float", {}, "2 evaluations a step + 1 final: use an odd nfe"),
    "KDPM2DiscreteScheduler": ("dpm-solver-2", "float", {}, "the same midpoint rule; its final step is not "
                               "checked against kuosan's"),
    "LMSDiscreteScheduler": (None, "", {}, "linear multistep on eps in sigma; closest: eabm, dpmpp-3m"),
    "KDPM2AncestralDiscreteScheduler": (None, "", {}, "ancestral DPM-Solver-2; closest: dpm-solver-2, ddim:eta=1"),
    "DEISMultistepScheduler": (None, "", {}, "DEIS log-rho Adams-Bashforth; closest: eabm, unipc"),
    "PNDMScheduler": (None, "", {}, "pseudo linear multistep (PNDM/PLMS); closest: eabm, dpmpp-3m"),
    "DPMSolverSDEScheduler": (None, "", {}, "singlestep SDE-DPM-Solver++; closest: dpmpp-2m-sde, dpmpp-2s"),
    "LCMScheduler": (None, "", {}, "needs a latent consistency model; closest: none"),
}

_MODEL_KEYS = {  # describe the model, not the sampler
    "num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas", "prediction_type",
    "_class_name", "_diffusers_version", "sample_max_value", "dynamic_thresholding_ratio", "clip_sample_range",
    "rescale_betas_zero_snr", "timestep_type", "variance_type", "lambda_min_clipped", "skip_prk_steps",
    "lower_order_final", "euler_at_final", "disable_corrector", "predict_x0", "use_flow_sigmas", "flow_shift",
}
_SAMPLER_KEYS = {
    "timestep_spacing", "use_karras_sigmas", "use_exponential_sigmas", "use_lu_lambdas", "use_beta_sigmas",
    "steps_offset", "clip_sample", "set_alpha_to_one", "thresholding", "algorithm_type", "solver_order",
    "solver_type", "final_sigmas_type", "interpolation_type", "eta",
}

# the rows of the docs table: (label, class, config)
TABLE_CONFIGS: list[tuple[str, str, dict[str, Any] | None]] = [
    ("DDIMScheduler(clip_sample=False)", "DDIMScheduler", {"clip_sample": False}),
    ("DDIMScheduler (SD config: steps_offset=1, clip_sample=False)", "DDIMScheduler",
     {"clip_sample": False, "steps_offset": 1, "set_alpha_to_one": False}),
    ("DDPMScheduler(clip_sample=False)", "DDPMScheduler", {"clip_sample": False}),
    ("DPMSolverMultistepScheduler", "DPMSolverMultistepScheduler", None),
    ("DPMSolverMultistepScheduler(use_karras_sigmas=True)", "DPMSolverMultistepScheduler",
     {"use_karras_sigmas": True}),
    ("DPMSolverMultistepScheduler(algorithm_type=sde-dpmsolver++, use_karras_sigmas=True)",
     "DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++", "use_karras_sigmas": True}),
    ("DPMSolverMultistepScheduler(solver_order=3)", "DPMSolverMultistepScheduler", {"solver_order": 3}),
    ("DPMSolverMultistepScheduler(timestep_spacing=trailing)", "DPMSolverMultistepScheduler",
     {"timestep_spacing": "trailing"}),
    ("DPMSolverSinglestepScheduler", "DPMSolverSinglestepScheduler", None),
    ("UniPCMultistepScheduler", "UniPCMultistepScheduler", None),
    ("EulerDiscreteScheduler", "EulerDiscreteScheduler", None),
    ("EulerDiscreteScheduler(use_karras_sigmas=True)", "EulerDiscreteScheduler", {"use_karras_sigmas": True}),
    ("EulerAncestralDiscreteScheduler", "EulerAncestralDiscreteScheduler", None),
    ("HeunDiscreteScheduler(use_karras_sigmas=True)", "HeunDiscreteScheduler", {"use_karras_sigmas": True}),
    ("KDPM2DiscreteScheduler", "KDPM2DiscreteScheduler", None),
] + [(c, c, None) for c, v in DIFFUSERS_CLASSES.items() if v[0] is None]


def option_value(text: str) -> Any:
    """A written option value: 'true'/'false' -> bool, then int, then float, else the string (quotes removed).
    Shared by diffusers configs written inline and kuosan sampler specs (kuosan.eval.evaluate.parse_sampler)."""
    t = text.strip()
    if t.lower() in ("true", "false"):
        return t.lower() == "true"
    for kind in (int, float):
        try:
            return kind(t)
        except ValueError:
            pass
    return t.strip("'\"")


def split_config(text: str, config: dict[str, Any] | None) -> tuple[str, dict[str, Any]]:
    """'Name(k=v; k=v)' -> ('Name', {k: v} merged with config); other text passes unchanged."""
    cfg = dict(config or {})
    if text.endswith(")") and "(" in text:
        text, inner = text[:-1].split("(", 1)
        for pair in filter(str.strip, inner.replace(";", ",").split(",")):
            key, eq, value = pair.partition("=")
            if not eq:
                raise ValueError(f"scheduler config {inner!r}: {pair!r} is not key=value")
            cfg[key.strip()] = option_value(value)
    return text.strip(), cfg


def _grid(kind: str, cfg: dict[str, Any], spacing: str) -> tuple[str, bool, str]:
    """(kuosan grid, exact, note) of a config's timesteps."""
    rounding = "diffusers rounds the network's timestep to an integer, the step uses the exact sigma"
    if cfg.get("use_karras_sigmas"):
        return "karras", kind != "rounded", rounding if kind == "rounded" else ""
    if cfg.get("use_exponential_sigmas"):
        return "logsnr", True, ""
    if cfg.get("use_lu_lambdas"):
        return "logsnr", kind != "rounded", rounding if kind == "rounded" else ""
    if cfg.get("use_beta_sigmas"):
        raise NoEquivalent("use_beta_sigmas: no kuosan grid (karras, logsnr, uniform, leading, trailing)")
    spacing = cfg.get("timestep_spacing", spacing)
    if spacing == "trailing":
        return "trailing", True, ""
    if spacing == "leading":
        if kind == "integer":
            return "leading", True, ""
        return "leading", False, "diffusers' leading grid here is one step higher (n N/n, ..., N/n)"
    if spacing != "linspace":
        raise ValueError(f"timestep_spacing {spacing!r}: expected linspace, leading or trailing")
    if kind == "float":
        how = "linearly in sigma" if cfg.get("interpolation_type", "linear") == "linear" else "in log sigma"
        return "uniform", False, f"the same times as 'uniform'; noise levels between indices interpolated {how}"
    if kind == "integer":
        return "uniform", False, "'uniform' rounded to integer timesteps"
    return "uniform", False, "n rounded timesteps from N-1 down to about N/n (kuosan's 'uniform' reaches t_min)"


def _dpm_multistep(cfg: dict[str, Any]) -> tuple[str, dict[str, Any], bool, str]:
    algo, order = cfg.get("algorithm_type", "dpmsolver++"), cfg.get("solver_order", 2)
    heun = cfg.get("solver_type", "midpoint") == "heun"
    if algo == "dpmsolver++":
        if order == 1:
            return "ddim", {}, True, ""
        if order == 3:
            return "dpmpp-3m", {}, False, "diffusers' 3M lacks the factor 2 on the second difference (second order)"
        return "dpmpp-2m", {}, not heun, "solver_type heun: another second-order correction" if heun else ""
    if algo == "sde-dpmsolver++":
        if order == 1:
            return "ddim", {"eta": 1.0}, True, "sampler noise differs as random numbers only"
        return "dpmpp-2m-sde", {}, heun, "sampler noise differs as random numbers only" + (
            "" if heun else "; solver_type midpoint: 0.5 (1 - e^{-2h}) D/r (kuosan: the exact integral, 'heun')")
    raise NoEquivalent(f"DPMSolverMultistepScheduler(algorithm_type={algo!r}) (noise-prediction DPM-Solver) has no "
                       "kuosan equivalent; closest kuosan methods: dpm-solver-2, dpmpp-2m", "noise-prediction "
                       "multistep DPM-Solver", ("dpm-solver-2", "dpmpp-2m"))


def resolve_diffusers(name: str, config: dict[str, Any]) -> Resolved:
    """A diffusers scheduler class (exact or case/space-insensitive name) with its config as a Resolved."""
    norm = {c.lower().replace("_", ""): c for c in DIFFUSERS_CLASSES}
    cls = norm[name.lower().replace("_", "").replace(" ", "").replace("-", "")]
    method, kind, options, note = DIFFUSERS_CLASSES[cls]
    if method is None:
        what, _, closest = note.partition("; closest: ")
        near = tuple(c for c in closest.split(", ") if c != "none")
        raise NoEquivalent(f"diffusers {cls} ({what}) has no kuosan equivalent; closest kuosan methods: {closest}",
                           what, near)
    unknown = set(config) - _MODEL_KEYS - _SAMPLER_KEYS
    if unknown:
        raise ValueError(f"{cls}: unknown config key(s) {sorted(unknown)}; sampler keys: {sorted(_SAMPLER_KEYS)}")
    options, exact, notes = dict(options), True, [note] if note else []
    if cls == "DPMSolverMultistepScheduler":
        method, options, exact, extra = _dpm_multistep(config)
        notes += [extra] if extra else []
    if cls == "DPMSolverSinglestepScheduler":
        exact = False
    spacing = "leading" if cls in ("DDIMScheduler", "DDPMScheduler") else "linspace"
    grid, grid_exact, grid_note = _grid(kind, config, spacing)
    exact, notes = exact and grid_exact, notes + ([grid_note] if grid_note else [])
    if cls in ("DDIMScheduler", "DDPMScheduler"):
        if config.get("clip_sample", True):
            exact, notes = False, notes + ["clip_sample (default True) clips x0 to [-1, 1]: kuosan's clip_x0"]
        if config.get("steps_offset", 0):
            exact, notes = False, notes + [f"steps_offset={config['steps_offset']} shifts the timesteps"]
        if cls == "DDIMScheduler" and not config.get("set_alpha_to_one", True):
            exact, notes = False, notes + ["set_alpha_to_one=False: the last step lands on alpha-bar_0, not on 1"]
    if config.get("thresholding"):
        exact, notes = False, notes + ["thresholding: kuosan's thresholding=True (its own ratio)"]
    if config.get("final_sigmas_type", "zero") != "zero":
        exact, notes = False, notes + ["final_sigmas_type sigma_min: no step to sigma = 0"]
    if "eta" in config and method == "ddim":
        options["eta"] = float(config["eta"])
    return Resolved(method, grid, options, exact, "; ".join(notes))
