"""Sampler names of other tools (AUTOMATIC1111, ComfyUI, k-diffusion, diffusers) as kuosan methods and grids.

    kuosan.samplers.resolve("DPM++ 2M Karras")          # Resolved(method='dpmpp-2m', grid='karras', exact=True)
    kuosan.samplers.resolve("dpmpp_2m/karras")          # ComfyUI: sampler/scheduler
    kuosan.samplers.resolve("DPMSolverMultistepScheduler", config={"use_karras_sigmas": True})

Matching ignores case, spaces, '_' and '-'. `exact` says whether the tool runs the same update rule on the same
grid of noise levels (random numbers aside); otherwise the note says what differs. A name with no counterpart
raises NoEquivalent naming the closest kuosan methods. Sources read: A1111 modules/sd_samplers_kdiffusion.py and
sd_schedulers.py (v1.9+: "DPM++ 2M" defaults to the Karras schedule, "DPM++ 2M SDE" to the exponential one,
other k-diffusion samplers to the model's own sigmas), ComfyUI comfy/samplers.py + sampler_names.py (default
scheduler "normal"; its "ddim" is Euler), k-diffusion sampling.py, diffusers 0.42 schedulers.

The grids: k-diffusion's "Karras" and "exponential" schedules span the model's sigma range (training index
N-1 down to 0) as kuosan's "karras" and "logsnr" span t_max..t_min of a DiscreteVP; the trailing sigma = 0
is kuosan's final denoise. A schedule uniform in the training index ("normal", A1111's automatic one) hits
the same times as kuosan's "uniform", but between integer indices k-diffusion interpolates log sigma and
kuosan log alpha: up to 0.05% apart in sigma for Stable Diffusion's betas (nfe <= 100), so "nearest".
The table is rendered into docs/samplers.md by markdown_table(); tests/test_sampler_names.py checks it.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Resolved", "NoEquivalent", "resolve", "describe", "markdown_table", "names"]


class NoEquivalent(ValueError):
    """A known sampler name (or schedule) with no kuosan counterpart; `what` says what it is, `closest` lists
    the nearest kuosan methods."""

    def __init__(self, message: str, what: str = "", closest: tuple[str, ...] = ()):
        super().__init__(message)
        self.what, self.closest = what, closest


@dataclass(frozen=True)
class Resolved:
    """A foreign sampler name as a kuosan method, grid kind (None: the method's default) and options."""

    method: str
    grid: str | None
    options: dict[str, Any] = field(default_factory=dict)
    exact: bool = True
    note: str = ""

    @property
    def spec(self) -> str:
        """The CLI sampler spec, e.g. 'dpmpp-2m:grid=karras' (kuosan.eval.evaluate.parse_sampler reads it)."""
        opts = ({"grid": self.grid} if self.grid else {}) | self.options
        return ":".join([self.method, *(f"{k}={str(v).lower() if isinstance(v, bool) else v}"
                                        for k, v in opts.items())])


@dataclass(frozen=True)
class _Entry:
    tool: str
    name: str
    method: str | None  # None: no equivalent
    grid: str | None  # the tool's default schedule as a kuosan grid
    exact: bool
    note: str
    options: dict[str, Any] = field(default_factory=dict)
    closest: tuple[str, ...] = ()


A1111, COMFY, DIFFUSERS = "A1111", "ComfyUI / k-diffusion", "diffusers"
_EULER_A = "k-diffusion's ancestral Euler step is DDIM's eta step on x/alpha (same sigma_up, sigma_down)"
_EXP_A = "sampler noise differs as random numbers only"
_2M_SDE = ("k-diffusion's default second-order term is the 'midpoint' one, 0.5 (1 - e^{-(1+eta)h}) D/r; kuosan "
           "integrates the linear x0 exactly ('heun': 1 - (1 - e^{-(1+eta)h})/((1+eta)h)); both second order")
_HEUN = "2 evaluations a step + 1 final; an even nfe makes kuosan's first step Euler"
_FAST = ("DPM-Solver-fast: orders 3,...,3,r on a log-SNR grid between the first and last nonzero sigma, no final "
         "denoise; for steps divisible by 3 k-diffusion ends with orders 2,1 and one more step")
_UNIPC = "UniPC order 3 (UniP-3 + UniC); kuosan also corrects the final denoise"


def _ok(tool, name, method, grid, note="", **options):
    return _Entry(tool, name, method, grid, True, note, options)


def _near(tool, name, method, grid, note, **options):
    return _Entry(tool, name, method, grid, False, note, options)


def _none(tool, name, closest, note):
    return _Entry(tool, name, None, None, False, note, {}, tuple(closest))


_ENTRIES: list[_Entry] = [
    _ok(A1111, "Euler a", "ddim", "uniform", f"{_EULER_A}; {_EXP_A}", eta=1.0),
    _ok(A1111, "Euler", "euler", "uniform"),
    _ok(A1111, "Heun", "heun", "uniform", _HEUN),
    _near(A1111, "DPM2", "dpm-solver-2", "uniform", "A1111 drops the next-to-last sigma of its schedule"),
    _ok(A1111, "DPM++ 2M", "dpmpp-2m", "karras", "A1111 >= 1.9 (before: the model's sigmas, 'DPM++ 2M Uniform')"),
    _near(A1111, "DPM++ 2M SDE", "dpmpp-2m-sde", "logsnr", f"{_2M_SDE}; {_EXP_A}"),
    _ok(A1111, "DPM++ 2M SDE Heun", "dpmpp-2m-sde", "logsnr", _EXP_A),
    _near(A1111, "DPM fast", "dpm-solver-3", "logsnr", f"{_FAST}; A1111 passes eta = 1 (ancestral)",
          denoise_final=False),
    _near(A1111, "DDIM", "ddim", "leading", "A1111 offsets the timesteps by one (1, 1 + N/n, ...)"),
    _near(A1111, "UniPC", "unipc", "uniform", f"{_UNIPC}; A1111's default variant is bh1 (kuosan: bh2)", order=3),
    _none(A1111, "LMS", ["eabm", "dpmpp-3m"], "linear multistep (Adams-Bashforth, order 4) on eps in sigma"),
    _none(A1111, "DPM2 a", ["dpm-solver-2", "ddim:eta=1"], "ancestral DPM-Solver-2"),
    _none(A1111, "DPM++ 2S a", ["dpmpp-2s", "ddim:eta=1"], "ancestral DPM-Solver++(2S)"),
    _none(A1111, "DPM++ SDE", ["dpmpp-2m-sde", "dpmpp-2s"], "singlestep SDE-DPM-Solver++ with Brownian-tree noise"),
    _none(A1111, "DPM++ 3M SDE", ["dpmpp-2m-sde", "dpmpp-3m"], "third-order multistep SDE solver"),
    _none(A1111, "DPM adaptive", ["rk45"], "adaptive DPM-Solver-12/23 with its own error control"),
    _none(A1111, "PLMS", ["eabm", "dpmpp-3m"], "pseudo linear multistep (PNDM, arXiv:2202.09778)"),
    _none(A1111, "LCM", [], "needs a latent consistency model (one-step x0 of a distilled network)"),
    _ok(COMFY, "euler", "euler", "uniform"),
    _ok(COMFY, "euler_ancestral", "ddim", "uniform", f"{_EULER_A}; {_EXP_A}", eta=1.0),
    _ok(COMFY, "heun", "heun", "uniform", _HEUN),
    _ok(COMFY, "dpm_2", "dpm-solver-2", "uniform", _HEUN.replace("first step Euler", "last step first order")),
    _ok(COMFY, "dpmpp_2m", "dpmpp-2m", "uniform"),
    _near(COMFY, "dpmpp_2m_sde", "dpmpp-2m-sde", "uniform", f"{_2M_SDE}; {_EXP_A}"),
    _near(COMFY, "dpmpp_2m_sde_gpu", "dpmpp-2m-sde", "uniform", f"{_2M_SDE}; {_EXP_A}"),
    _ok(COMFY, "dpmpp_2m_sde_heun", "dpmpp-2m-sde", "uniform", _EXP_A),
    _ok(COMFY, "dpmpp_2m_sde_heun_gpu", "dpmpp-2m-sde", "uniform", _EXP_A),
    _ok(COMFY, "ddpm", "ddpm", "uniform", f"DDPM's step with the posterior variance; {_EXP_A}"),
    _ok(COMFY, "ddim", "euler", "uniform", "ComfyUI's ddim is its Euler sampler (= DDIM, eta 0)"),
    _near(COMFY, "dpm_fast", "dpm-solver-3", "logsnr", _FAST, denoise_final=False),
    _near(COMFY, "uni_pc", "unipc", "uniform", f"{_UNIPC}; variant bh1 (kuosan: bh2)", order=3),
    _near(COMFY, "uni_pc_bh2", "unipc", "uniform", _UNIPC, order=3),
    _none(COMFY, "lms", ["eabm", "dpmpp-3m"], "linear multistep (Adams-Bashforth, order 4) on eps in sigma"),
    _none(COMFY, "dpm_2_ancestral", ["dpm-solver-2", "ddim:eta=1"], "ancestral DPM-Solver-2"),
    _none(COMFY, "dpmpp_2s_ancestral", ["dpmpp-2s", "ddim:eta=1"], "ancestral DPM-Solver++(2S)"),
    _none(COMFY, "dpmpp_sde", ["dpmpp-2m-sde", "dpmpp-2s"], "singlestep SDE-DPM-Solver++"),
    _none(COMFY, "dpmpp_sde_gpu", ["dpmpp-2m-sde", "dpmpp-2s"], "singlestep SDE-DPM-Solver++"),
    _none(COMFY, "dpmpp_3m_sde", ["dpmpp-2m-sde", "dpmpp-3m"], "third-order multistep SDE solver"),
    _none(COMFY, "dpmpp_3m_sde_gpu", ["dpmpp-2m-sde", "dpmpp-3m"], "third-order multistep SDE solver"),
    _none(COMFY, "dpm_adaptive", ["rk45"], "adaptive DPM-Solver-12/23 with its own error control"),
    _none(COMFY, "deis", ["eabm", "unipc"], "DEIS (arXiv:2204.13902): Adams-Bashforth of eps in t"),
    _none(COMFY, "ipndm", ["eabm", "dpmpp-3m"], "improved PNDM: Adams-Bashforth of eps in sigma"),
    _none(COMFY, "res_multistep", ["dpmpp-2m"], "RES second-order multistep (other coefficients than 2M)"),
    _none(COMFY, "lcm", [], "needs a latent consistency model (one-step x0 of a distilled network)"),
]

_INTERP = ("the same times as 'uniform' (training index N-1 down to 0), but the tool interpolates log sigma between "
           "integer indices, kuosan log alpha: the noise levels differ by up to 0.05% (SD's betas; DDPM's linear "
           "betas: 0.12%) for nfe <= 100")
_OWN_GRID = {"DPM fast", "dpm_fast", "DDIM", "UniPC"}  # take no schedule (dpm_fast: only its end points)
_DEFAULT_SCHEDULE = {"uniform": "normal", "karras": "karras", "logsnr": "exponential"}

# A1111 / ComfyUI schedules -> (kuosan grid, exact, note); None: no kuosan grid
_SCHEDULES: dict[str, tuple[str, bool, str] | None] = {
    "karras": ("karras", True, ""), "exponential": ("logsnr", True, "uniform in log sigma = in log-SNR"),
    "normal": ("uniform", False, _INTERP), "automatic": ("uniform", False, _INTERP),
    "uniform": ("uniform", False, _INTERP),
    "sgm_uniform": ("uniform", False, "sgm_uniform drops the last of n+1 uniform times: it stops ~N/n indices "
                    "above t_min"),
    "simple": ("trailing", False, "every (N/n)-th training sigma from the top, truncated (kuosan rounds); "
               "DiscreteVP runs only"),
    "ddim_uniform": ("leading", False, "indices 1, 1 + N//n, ... (offset by one from kuosan's); DiscreteVP runs "
                     "only"),
    "beta": None, "linear_quadratic": None, "kl_optimal": None, "polyexponential": None, "align_your_steps": None,
}


def _key(name: str) -> str:
    return re.sub(r"[\s_\-]+", "", name.lower())


def names() -> list[str]:
    """Every sampler name of the table (diffusers class names are handled by kuosan.samplers.diffusers_names)."""
    from .diffusers_names import DIFFUSERS_CLASSES

    return [e.name for e in _ENTRIES] + list(DIFFUSERS_CLASSES)


def _lookup(text: str, comfy: bool) -> _Entry | None:
    """The entry of this name: spelled exactly so first, then the tool the form of the name implies (a
    scheduler given: ComfyUI); "DPM2" is A1111's, "dpm_2" ComfyUI's."""
    key = _key(text)
    hits = [e for e in _ENTRIES if _key(e.name) == key or _key("sample_" + e.name) == key]
    hits.sort(key=lambda e: (e.name != text.removeprefix("sample_"), (e.tool == COMFY) != comfy))
    return hits[0] if hits else None


def _apply(e: _Entry, schedule: str | None, asked: str) -> Resolved:
    if e.method is None:
        closest = ", ".join(e.closest) or "none"
        raise NoEquivalent(f"sampler {asked!r} ({e.tool}: {e.note}) has no kuosan equivalent; closest kuosan "
                           f"methods: {closest}", e.note, e.closest)
    grid, exact, notes = e.grid, e.exact, [e.note] if e.note else []
    if e.name in _OWN_GRID:
        schedule = None  # the sampler draws its own grid (dpm_fast: between the schedule's end points)
    elif schedule is None:
        schedule = _DEFAULT_SCHEDULE[e.grid]
    if schedule is not None:
        s = {_key(k): v for k, v in _SCHEDULES.items()}.get(_key(schedule))
        if s is None:
            known = ", ".join(k for k, v in _SCHEDULES.items() if v)
            raise NoEquivalent(f"schedule {schedule!r} of {asked!r} has no kuosan grid; those with one: {known}",
                               f"schedule {schedule!r}: no kuosan grid (those with one: {known})")
        grid, exact = s[0], exact and s[1]
        notes += [s[2]] if s[2] else []
    return Resolved(e.method, grid, dict(e.options), exact, "; ".join(notes))


def resolve(name: str, scheduler: str | None = None, config: dict[str, Any] | None = None) -> Resolved:
    """A sampler name of A1111 ("DPM++ 2M Karras"), ComfyUI ("dpmpp_2m", with scheduler= or as "dpmpp_2m/karras"),
    k-diffusion ("sample_dpmpp_2m") or diffusers ("DPMSolverMultistepScheduler", its config as `config` or as
    "Name(use_karras_sigmas=true; solver_order=2)") as a kuosan method, grid and options."""
    text = name.strip()
    if "/" in text and scheduler is None:
        text, scheduler = (p.strip() for p in text.split("/", 1))
    comfy = scheduler is not None
    from .diffusers_names import DIFFUSERS_CLASSES, resolve_diffusers, split_config

    text, cfg = split_config(text, config)
    if _key(text) in {_key(c) for c in DIFFUSERS_CLASSES}:
        return resolve_diffusers(text, cfg)
    if cfg:
        raise ValueError(f"sampler {name!r}: a config applies to diffusers scheduler classes only")
    entry = _lookup(text, comfy)
    if entry is None and scheduler is None:  # A1111 style: "DPM++ 2M Karras", "Euler a Exponential"
        key = _key(text)
        for sk in sorted(_SCHEDULES, key=len, reverse=True):
            if key.endswith(_key(sk)) and (entry := _lookup(key[: -len(_key(sk))], False)) is not None:
                scheduler = sk
                break
    if entry is None:
        from . import METHODS

        close = difflib.get_close_matches(_key(text), [_key(n) for n in names()], n=4, cutoff=0.5)
        close_names = [n for n in names() if _key(n) in close]
        raise ValueError(f"unknown sampler name {name!r}: not a kuosan method ({', '.join(METHODS)}) nor an "
                         f"A1111 / ComfyUI / k-diffusion / diffusers name" +
                         (f"; did you mean {', '.join(map(repr, close_names))}?" if close_names else ""))
    return _apply(entry, scheduler, name)


def describe(spec: str) -> str | None:
    """For a CLI spec naming another tool's sampler: a line saying what it runs as (and what differs, if only
    the nearest); None for a kuosan method."""
    from . import METHODS

    name = spec.strip().split(":")[0]
    if name in METHODS or name == "ancestral":
        return None
    r = resolve(name)
    how = "the same sampler" if r.exact else "the nearest kuosan sampler"
    return f"{name!r} runs as {r.spec} ({how}){': ' + r.note if r.note else ''}"


def _row(tool: str, name: str, r: Resolved | NoEquivalent) -> str:
    if isinstance(r, NoEquivalent):
        return f"| {tool} | {name} | none | - | {r.what}; closest: {', '.join(r.closest) or 'none'} |"
    return f"| {tool} | {name} | `{r.spec}` | {'exact' if r.exact else 'nearest'} | {r.note or '-'} |"


def markdown_table() -> str:
    """The docs table (docs/samplers.md, "Sampler names in other tools"), generated from the registry."""
    from .diffusers_names import TABLE_CONFIGS

    lines = ["| tool | name | kuosan spec | match | what differs |", "|---|---|---|---|---|"]
    rows = [(e.tool, e.name, lambda e=e: _apply(e, None, e.name)) for e in _ENTRIES]
    rows += [(tool, label, lambda n=name: resolve(n)) for tool, label, name in _TABLE_PAIRS]
    rows += [(DIFFUSERS, label, lambda c=cls, g=g: resolve(c, config=g)) for label, cls, g in TABLE_CONFIGS]
    for tool, label, make in rows:
        try:
            r: Resolved | NoEquivalent = make()
        except NoEquivalent as err:
            r = err
        lines.append(_row(tool, label.replace("|", "\\|"), r))
    return "\n".join(lines) + "\n"


_TABLE_PAIRS = [(A1111, "DPM++ 2M Karras", "DPM++ 2M Karras"), (A1111, "DPM++ 2M SDE Karras", "DPM++ 2M SDE Karras"),
                (A1111, "DPM++ 2M SDE Heun Karras", "DPM++ 2M SDE Heun Karras"),
                (A1111, "Euler a Karras", "Euler a Karras"), (COMFY, "dpmpp_2m + karras", "dpmpp_2m/karras"),
                (COMFY, "dpmpp_2m + exponential", "dpmpp_2m/exponential"),
                (COMFY, "dpmpp_2m_sde_gpu + karras", "dpmpp_2m_sde_gpu/karras"),
                (COMFY, "euler + sgm_uniform", "euler/sgm_uniform"), (COMFY, "euler + simple", "euler/simple"),
                (COMFY, "ddim + ddim_uniform", "ddim/ddim_uniform"), (COMFY, "dpmpp_2m + beta", "dpmpp_2m/beta")]
