"""Sampling (CMMD §2.1, Eq. 3 and 5): what is known, the conditioned denoiser, and the solvers.

A solver sees only a denoiser, xₙ ↦ (x̂₀, ε̂), and owns its loop and its history: DDIM (Song et al. 2021)
and DPM-Solver++ (Lu et al. 2022), multistep (2M) and singlestep (2S). The denoiser is the only code that
knows 𝐯 against ε, the masks of the known part and λ: it does the replacement of Eq. 5, the network call,
the guidance of Eq. 3 and the clipping. MM-Diffusion's guidance (its Eq. 12, as its official code runs it)
acts after a solver's update; mmdiffusion.py supplies it (AFTER_STEP).

α = √ᾱₙ and σ = √(1−ᾱₙ) at step n; the last step goes to ᾱ = 1, so the result is x̂₀. Noise is drawn from the
generator in MODALITIES order: first each modality's start (and the ε of its known part), then, per step,
DDIM's σₙ·z. Derivations and choices: docs/sampling.md.
"""
import dataclasses
import math
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from diffusion import randn
from modalities import MODALITIES, NDIM, TIME_AXIS, check

GUIDANCE_FORMS = ("cmmd", "mmdiffusion")
AFTER_STEP = {}  # guidance form -> hook(denoiser, prediction, x_prev, n_prev) -> x_prev; mmdiffusion.py adds its own
PAPER_SAMPLER = {"sampler": "ddim", "steps": 200}  # the paper's sampler: 200 DDIM steps (CMMD App. B.2, Table 4)


def grads(err: torch.Tensor, inputs: list) -> list:
    """∇ of err for each input; zero where err does not depend on it (a network with fusion off)."""
    found = torch.autograd.grad(err, inputs, allow_unused=True)
    return [torch.zeros_like(x) if g is None else g for x, g in zip(inputs, found)]


class Known:
    """What the sampler is given (CMMD Eq. 5, along time): per modality x₀ (the sample's full shape), a mask
    along time, (B, F) or (B, T), True where x₀ is known (no mask: known whole, as in video→audio), and the
    noise ε of Eq. 5, drawn once."""

    def __init__(self, x0: dict, mask: dict, noise: dict):
        if x0:
            check(x0, "sampling.py cond")
        unknown = set(mask) - set(x0)
        assert not unknown, f"sampling.py: mask for {sorted(unknown)} without cond values"
        self.x0, self.mask, self.noise = dict(x0), {}, {k: noise[k] for k in x0}
        for k, m in mask.items():
            t = self.x0[k]
            want = (t.shape[0], t.shape[TIME_AXIS[k]])
            assert m.dtype == torch.bool and tuple(m.shape) == want, \
                f"sampling.py: mask[{k!r}] must be bool {want} (B, time), got {m.dtype} {tuple(m.shape)}"
            if not m.all():  # an all-True mask is the whole modality
                shape = (*want, *[1] * (t.ndim - 2))  # (B, time, 1, …), then time moved to its axis
                self.mask[k] = m.to(t.device).view(shape).movedim(1, TIME_AXIS[k])
        self.whole = [k for k in MODALITIES if k in self.x0 and k not in self.mask]

    def replace(self, x: dict, alpha: float, sigma: float):
        """xₙ's known part = α·x₀ + σ·ε (CMMD Eq. 5), in place in the dict x."""
        for k in self.x0:
            q = alpha * self.x0[k] + sigma * self.noise[k]
            x[k] = torch.where(self.mask[k], q, x[k]) if k in self.mask else q

    def reconstruction_error(self, x0_hat: dict) -> torch.Tensor:
        """‖m ⊙ (x₀ − x̂₀)‖² summed over the known elements of the batch (CMMD Eq. 3)."""
        err = 0
        for k in self.x0:
            e = (self.x0[k] - x0_hat[k]).pow(2)
            err = err + (torch.where(self.mask[k], e, 0.0) if k in self.mask else e).sum()
        return err

    def result(self, x: dict) -> dict:
        """The sample with its known part exactly as given."""
        out = {}
        for k in (k for k in MODALITIES if k in x or k in self.x0):
            out[k] = self.x0[k] if k in self.whole else x[k]
            if k in self.mask:
                out[k] = torch.where(self.mask[k], self.x0[k], x[k])
        return out


@dataclass
class Prediction:
    """One denoiser evaluation at step n: its input xₙ after replacement, x̂₀ and ε̂ guided and clipped, and
    the network's own x̂₀ (clipped, unguided), which the second-order solvers extrapolate."""
    n: int
    x: dict
    x0: dict
    eps: dict
    x0_net: dict


def trained_conditions(model, known: Known) -> dict:
    """The network's extra inputs for a model trained with conditional modes (MM-LDM Fig. 2; train.py
    --cond-tasks): {"cond": the clean modalities known whole}; {} for any other network, or when no modality
    is known whole (joint generation, continuation)."""
    if not getattr(getattr(model, "cfg", None), "cond_modes", False) or not known.whole:
        return {}
    return {"cond": {k: known.x0[k] for k in known.whole}}


class Denoiser:
    """xₙ, n ↦ Prediction: replacement (Eq. 5), the network, 𝐯 or ε to x̂₀ and ε̂, guidance (Eq. 3), clipping."""

    def __init__(self, diffusion, model, known: Known, cfg, shapes: dict, generator=None, progress=False,
                 text: list[str] | None = None):
        self.diffusion, self.model, self.known, self.cfg, self.shapes = diffusion, model, known, cfg, shapes
        self.abar_of = diffusion.alphas_cumprod.tolist()
        self.generated = [k for k in shapes if k not in known.whole]  # modalities with an unknown part
        if not self.generated:
            raise ValueError(f"sampling.py: nothing to generate: shapes {list(shapes)}, all known")
        self.guided = cfg.guidance > 0
        self.after_step = None
        if self.guided and cfg.guidance_form != "cmmd":
            if cfg.guidance_form not in AFTER_STEP:
                raise ValueError(f"sampling.py: guidance form {cfg.guidance_form!r} has no hook: import the module "
                                 "that supplies it (mmunet.py for 'mmdiffusion')")
            self.after_step = AFTER_STEP[cfg.guidance_form]
        # stepped: the generated modalities, and the known ones that an after-step guidance compares
        stepped = set(self.generated) | (set(known.whole) if self.after_step else set())
        self.stepped = [k for k in MODALITIES if k in stepped]
        self.conditions = trained_conditions(model, known)
        if text is not None:
            self.conditions["text"] = list(text)
        elif cfg.cfg != 1:
            raise ValueError(f"sampling.py: classifier-free guidance (cfg {cfg.cfg:g}) needs a caption (text)")
        self.generator, self.evaluations = generator, 0
        self.bar = tqdm(total=cfg.steps, desc=cfg.sampler, disable=not progress)

    def abar(self, n: int | None) -> float:
        """ᾱₙ; 1 for n = None, the end of sampling."""
        return 1.0 if n is None else self.abar_of[n]

    def alpha_sigma(self, n: int | None) -> tuple[float, float]:
        abar = self.abar(n)
        return math.sqrt(abar), math.sqrt(1 - abar)

    def randn(self, k: str, like: torch.Tensor) -> torch.Tensor:
        return randn(self.shapes[k], self.generator, like.device, like.dtype)

    def __call__(self, x: dict, n: int) -> Prediction:
        alpha, sigma = self.alpha_sigma(n)
        self.known.replace(x, alpha, sigma)  # CMMD Eq. 5
        B, device = x[self.generated[0]].shape[0], x[self.generated[0]].device
        x_in = {k: x[k].detach().requires_grad_(self.guided and k in self.generated) for k in self.shapes}
        out = self.network(x_in, torch.full((B,), n, dtype=torch.long, device=device))
        x0, eps = {}, {}
        for k in self.shapes:
            assert out[k].shape == x_in[k].shape, f"model output {k} {tuple(out[k].shape)} != {tuple(x_in[k].shape)}"
            x0[k], eps[k] = self.diffusion.x0_eps(x_in[k], out[k], alpha, sigma)
        x0_net = {k: v.clamp(-1, 1) if self.cfg.clip_x0 else v for k, v in x0.items()}
        changed = []  # the modalities whose x̂₀ guidance or clipping moved
        if self.guided and self.cfg.guidance_form == "cmmd":
            found = grads(self.known.reconstruction_error(x0), [x_in[k] for k in self.generated])
            for k, g in zip(self.generated, found):
                x0[k] = x0[k] - self.cfg.guidance * alpha * g  # â₀ = x̂₀ − λ·α·∇‖x₀ − x̂₀‖² (CMMD Eq. 3)
            changed = self.generated
        if self.cfg.clip_x0:
            x0, changed = {k: v.clamp(-1, 1) for k, v in x0.items()}, list(self.shapes)  # as GLIDE
        for k in changed:
            eps[k] = (x_in[k] - alpha * x0[k]) / sigma  # ε̂ = (xₙ − α·â₀) / σ, from the guided or clipped x̂₀
        self.bar.update()
        return Prediction(n, x_in, x0, eps, x0_net)

    def network(self, x: dict, n: torch.Tensor) -> dict:
        """The network's output with the conditions; with a caption and cfg s ≠ 1, classifier-free guidance
        (Ho & Salimans 2022): out(∅) + s·(out(text) − out(∅)), ∅ the empty caption the model was trained on."""
        out = self.model(x, n, **self.conditions)
        self.evaluations += 1
        if "text" in self.conditions and self.cfg.cfg != 1:
            empty = self.model(x, n, **{**self.conditions, "text": [""] * len(self.conditions["text"])})
            self.evaluations += 1
            out = {k: empty[k] + self.cfg.cfg * (out[k] - empty[k]) for k in out}
        return out

    def finish(self, p: Prediction, x_prev: dict, n_prev: int | None) -> dict:
        """xₙ₋₁ of the generated modalities, after the after-step guidance (none on the last step)."""
        if self.after_step is not None and n_prev is not None:
            x_prev = self.after_step(self, p, x_prev, n_prev)
        return {k: x_prev[k] for k in self.generated}


def transitions(steps: list) -> list:
    """(n, n_prev) for each step, high to low; n_prev = None on the last, which goes to ᾱ = 1."""
    return list(zip(steps, [*steps[1:], None]))


def dpm_first_order(denoise: Denoiser, x: dict, x0: dict, n: int, n_prev: int | None) -> dict:
    """DPM-Solver++(1) of x's modalities from xₙ with x̂₀ to n_prev (Lu et al. 2022, Eq. 8); x̂₀ at the end (σ = 0)."""
    if n_prev is None:
        return {k: x0[k] for k in x}
    abar, abar_prev = denoise.abar(n), denoise.abar(n_prev)
    h = log_snr(denoise, n_prev) - log_snr(denoise, n)
    ratio, alpha_prev = math.sqrt((1 - abar_prev) / (1 - abar)), math.sqrt(abar_prev)  # σₙ₋₁ / σₙ and αₙ₋₁
    return {k: ratio * x[k] - alpha_prev * math.expm1(-h) * x0[k] for k in x}


def log_snr(denoise: Denoiser, n: int) -> float:
    """λ = log(α/σ), the half log-SNR that DPM-Solver steps in."""
    abar = denoise.abar(n)
    return 0.5 * math.log(abar / (1 - abar))


# ---- solvers: solver(denoise, x, steps, cfg) -> x₀, x holding the generated modalities' start ---------------

def ddim(denoise: Denoiser, x: dict, steps: list, cfg) -> dict:
    """DDIM (Song et al. 2021, Eq. 12); η > 0 adds σₙ·z (Eq. 16; η = 1 is DDPM with the posterior variance)."""
    for n, n_prev in transitions(steps):
        p = denoise(x, n)
        abar, abar_prev = denoise.abar(n), denoise.abar(n_prev)
        sigma_eta = cfg.eta_ddim * math.sqrt((1 - abar_prev) / (1 - abar) * (1 - abar / abar_prev))  # σₙ(η), Eq. 16
        c0, c_eps = math.sqrt(abar_prev), math.sqrt(max(1 - abar_prev - sigma_eta**2, 0.0))  # max: rounding at η = 1
        x_prev = {k: c0 * p.x0[k] + c_eps * p.eps[k] for k in denoise.stepped}
        if cfg.eta_ddim > 0:  # on every modality stepped: a known one's enters MM-Diffusion's guidance
            for k in denoise.stepped:
                x_prev[k] = x_prev[k] + sigma_eta * denoise.randn(k, x_prev[k])
        x = denoise.finish(p, x_prev, n_prev)
    return x


def dpmpp_2m(denoise: Denoiser, x: dict, steps: list, cfg) -> dict:
    """DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2): multistep second order in x̂₀, first order at the ends."""
    previous = None  # (the network's x̂₀, h) of the step before
    for n, n_prev in transitions(steps):
        p = denoise(x, n)
        D = p.x0
        if n_prev is not None:
            h = log_snr(denoise, n_prev) - log_snr(denoise, n)
            if previous is not None:  # D = (1 + c)·x̂₀ − c·x̂₀ of the previous step, c = h / 2h_prev (Eq. 9)
                c = 0.5 * h / previous[1]
                D = {k: p.x0[k] + c * (p.x0_net[k] - previous[0][k]) for k in p.x0}  # [choice] guidance at first order
            previous = ({k: v.detach() for k, v in p.x0_net.items()}, h)
        x_prev = dpm_first_order(denoise, {k: p.x[k] for k in denoise.stepped}, D, n, n_prev)
        x = denoise.finish(p, x_prev, n_prev)
    return x


def dpmpp_2s(denoise: Denoiser, x: dict, steps: list, cfg) -> dict:
    """DPM-Solver++(2S) (Lu et al. 2022, Algorithm 1 in x̂₀): each step from sₙ to the grid's next-but-one step,
    with a second evaluation at the grid step between; first order where no such pair fits before the end."""
    i = 0
    while i < len(steps):
        s = steps[i]
        p = denoise(x, s)
        if i + 2 >= len(steps):  # first order to the next grid step (or to the end), as diffusers' order list
            n_prev = steps[i + 1] if i + 1 < len(steps) else None
            step = dpm_first_order(denoise, {k: p.x[k] for k in denoise.stepped}, p.x0, s, n_prev)
            x, i = denoise.finish(p, step, n_prev), i + 1
            continue
        m, t = steps[i + 1], steps[i + 2]
        p_mid = denoise(dpm_first_order(denoise, {k: p.x[k] for k in denoise.generated}, p.x0, s, m), m)
        h, h_mid = log_snr(denoise, t) - log_snr(denoise, s), log_snr(denoise, m) - log_snr(denoise, s)
        c = 0.5 * h / h_mid  # D = x̂₀(s) + (1 / 2r)·(x̂₀(m) − x̂₀(s)), r = h_mid / h; [choice] guidance at first order
        D = {k: p.x0[k] + c * (p_mid.x0_net[k] - p.x0_net[k]) for k in denoise.generated}
        x, i = denoise.finish(p, dpm_first_order(denoise, {k: p.x[k] for k in denoise.generated}, D, s, t), t), i + 2
    return x


SOLVERS = {"ddim": ddim, "dpmsolver++": dpmpp_2m, "dpmsolver++2s": dpmpp_2s}


@dataclass
class SamplerConfig:
    """How `sample` samples; by default as the paper does (PAPER_SAMPLER, replacement)."""
    sampler: str = field(default=PAPER_SAMPLER["sampler"], metadata={
        "help": "ddim (Song et al. 2021), dpmsolver++ (Lu et al. 2022, multistep 2M) or dpmsolver++2s "
                "(singlestep 2S: two network evaluations per step)", "choices": list(SOLVERS)})
    steps: int = field(default=PAPER_SAMPLER["steps"], metadata={
        "help": "network evaluations (guidance adds a backward pass to each)"})
    guidance: float = field(default=0.0, metadata={"help": "λ of the guidance (CMMD Eq. 3); 0: replacement (Eq. 5)"})
    guidance_form: str = field(default="cmmd", metadata={
        "help": "cmmd (Eq. 3) or mmdiffusion (MM-Diffusion Eq. 12 as its code runs it)",
        "choices": list(GUIDANCE_FORMS)})
    eta_ddim: float = field(default=0.0, metadata={
        "help": "DDIM's η: 0 deterministic, 1 DDPM (Song et al. 2021, Eq. 16)"})
    clip_x0: bool = field(default=False, metadata={"help": "clamp x̂₀ to [-1, 1] (pixel and waveform models)"})
    cfg: float = field(default=1.0, metadata={
        "help": "classifier-free guidance scale of the caption (Ho & Salimans 2022): out(∅) + s·(out(text) − out(∅)); "
                "1: the captioned model alone"})

    def __post_init__(self):
        if self.sampler not in SOLVERS:
            raise ValueError(f"sampling.py: sampler must be one of {tuple(SOLVERS)}, got {self.sampler!r}")
        if self.guidance_form not in GUIDANCE_FORMS:
            raise ValueError(f"sampling.py: guidance_form must be one of {GUIDANCE_FORMS}, got {self.guidance_form!r}")
        if not (isinstance(self.steps, int) and self.steps >= 1):
            raise ValueError(f"sampling.py: steps must be a positive integer, got {self.steps!r}")
        if not (math.isfinite(self.guidance) and self.guidance >= 0):
            raise ValueError(f"sampling.py: guidance λ must be finite and >= 0, got {self.guidance}")
        if not (math.isfinite(self.cfg) and self.cfg >= 0):
            raise ValueError(f"sampling.py: the classifier-free guidance scale must be finite and >= 0, got {self.cfg}")
        if not 0 <= self.eta_ddim <= 1:
            raise ValueError(f"sampling.py: eta_ddim must be in [0, 1], got {self.eta_ddim}")
        if self.eta_ddim > 0 and self.sampler != "ddim":
            raise ValueError(f"sampling.py: eta_ddim > 0 is DDIM's; {self.sampler} is deterministic")
        if self.guidance > 0 and self.guidance_form != "cmmd" and self.sampler == "dpmsolver++2s":
            raise ValueError(f"sampling.py: {self.guidance_form} guidance acts after one-evaluation steps; "
                             "use ddim or dpmsolver++")


def full_shapes(shapes: dict, cond: dict) -> dict:
    """{modality: shape} of the whole sample, in MODALITIES order: a known modality's from its values."""
    shapes = {k: tuple(cond[k].shape) if k in cond else tuple(shapes[k])
              for k in MODALITIES if k in cond or k in shapes}
    assert all(len(s) == NDIM[k] for k, s in shapes.items()), f"sampling.py: bad shapes {shapes}"
    assert len({s[0] for s in shapes.values()}) == 1, f"sampling.py: batch sizes differ: {shapes}"
    return shapes


def sample(diffusion, model, shapes: dict, cfg: SamplerConfig | None = None, *, cond: dict | None = None,
           mask: dict | None = None, generator=None, progress: bool = True, text: list[str] | None = None,
           **overrides) -> dict:
    """Joint or conditional generation (CMMD §2.1): the solver `cfg.sampler` on the conditioned denoiser.

    shapes: {modality: shape} to generate; cond: {modality: x₀} known, each of the sample's full shape; mask:
    {modality: (B, F) or (B, T) bool}, True where cond is known (absent: known whole). cond=None is joint
    generation, {"video": v0} video→audio. `cfg` (default: the paper's) is overridden field by field by
    keyword (steps=25, guidance=10, ...). text: B captions for a text-conditioned network (cfg.cfg its
    classifier-free guidance). Returns {modality: x₀}, the known part exactly as given.
    """
    cfg = dataclasses.replace(cfg or SamplerConfig(), **overrides)
    cond, mask = dict(cond or {}), dict(mask or {})
    if cfg.guidance > 0 and not cond:
        raise ValueError("sampling.py: guidance needs a condition (cond=None is joint generation; use guidance=0)")
    if cfg.guidance > 0 and torch.is_inference_mode_enabled():
        raise ValueError("sampling.py: guidance needs autograd; call sample() outside torch.inference_mode()")
    shapes = full_shapes(shapes, cond)
    if cond:
        device, dtype = next(iter(cond.values())).device, next(iter(cond.values())).dtype
    else:
        param = next(model.parameters(), None) if isinstance(model, torch.nn.Module) else None
        device, dtype = (param.device if param is not None else torch.device("cpu")), torch.get_default_dtype()
    noise = {k: randn(shapes[k], generator, device, dtype) for k in shapes}  # the start, and ε of Eq. 5
    known = Known(cond, mask, noise)
    denoise = Denoiser(diffusion, model, known, cfg, shapes, generator, progress, text)
    with torch.enable_grad() if denoise.guided else torch.no_grad():
        x = SOLVERS[cfg.sampler](denoise, {k: noise[k] for k in denoise.generated}, diffusion.timesteps(cfg.steps), cfg)
    denoise.bar.close()
    return known.result({k: v.detach() for k, v in x.items()})
