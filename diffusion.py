"""Joint video-audio diffusion: schedules, 𝐯/ε conversions, losses and the samplers (DDIM, DPM-Solver++)
(CMMD §2.1–2.2, Eq. 1–3, 5, 6, Algorithm 1; Salimans & Ho 2022; Song et al. 2021 DDIM; Lu et al. 2022
DPM-Solver++; MM-Diffusion §3.4, Eq. 12).

Both modalities share one schedule and one step n per example (CMMD §2.1, MM-Diffusion §3.2); the maths
is written once per tensor and looped over the modality dict {"video": (B, F, C, H, W), "audio": (B, M, T)}.
Steps are 0-indexed, n ∈ {0, …, N−1}, ᾱ[n] = ∏_{i≤n} (1 − β_i) (diffusers' convention); the paper's αₙ is
this cumulative ᾱₙ.

[choice] L_jdiff (Eq. 2) is the mean squared error of each modality, summed over the two modalities.
[choice] L_cont (Eq. 6) follows the equation, not Algorithm 1: every negative pair is a data point of its
own, with its own noise and its own targets (Algorithm 1 writes the positive's 𝐯 as every term's target),
at the same step n as the positive. A list of negatives is summed (one draw per term of Eq. 6 by default;
η absorbs their count, as CDCD's η replaces M).
[choice] Loss weighting: uniform over n by default (CMMD Eq. 2). With snr_gamma = γ > 0, each example's error
is weighted by Min-SNR-γ (Hang et al. 2023): the x₀-error weight min(SNR(n), γ), written for the
network's target, so min(SNR, γ) / (SNR + 1) for 𝐯 and min(SNR, γ) / SNR for ε, with SNR(n) = ᾱₙ / (1 − ᾱₙ).
Against the uniform 𝐯 loss (an x₀ weight SNR + 1) it caps the low-noise steps at γ and lets the steps near pure
noise fade, which leaves the mid-noise steps (where, we guess, one modality's content is read from the other).
"""
import dataclasses
import math
from contextlib import nullcontext
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

MODALITIES = ("video", "audio")  # fixed order: noise is drawn in this order, so seeds are reproducible
NDIM = {"video": 5, "audio": 3}  # (B, F, C, H, W) and (B, M, T)
TIME_AXIS = {"video": 1, "audio": 2}  # F and T: where masks of the known part lie (Known)
COSINE_S = 0.008  # offset of the cosine schedule (Nichol & Dhariwal 2021, Eq. 17)
MAX_BETA = 0.999  # β clip of the cosine schedule (Nichol & Dhariwal 2021; diffusers' squaredcos_cap_v2)
LINEAR_BETAS = (1e-4, 0.02)  # β₁ … β_N of the linear schedule (Ho et al. 2020, §4), used by MM-Diffusion
GUIDANCE_FORMS = ("cmmd", "mmdiffusion")


@dataclass
class DiffusionConfig:
    schedule: str = "cosine"  # "cosine" (CMMD Table 4) or "linear" (MM-Diffusion §3.1)
    prediction: str = "v"  # what the network predicts: "v" (CMMD Table 4) or "eps" (MM-Diffusion)
    num_steps: int = 1000  # N training steps (CMMD Table 4)

    def __post_init__(self):
        if self.schedule not in ("cosine", "linear"):
            raise ValueError(f"diffusion.py: schedule must be 'cosine' or 'linear', got {self.schedule!r}")
        if self.prediction not in ("v", "eps"):
            raise ValueError(f"diffusion.py: prediction must be 'v' or 'eps', got {self.prediction!r}")
        if self.num_steps < 1:
            raise ValueError(f"diffusion.py: num_steps must be positive, got {self.num_steps}")


def make_betas(cfg: DiffusionConfig) -> torch.Tensor:
    """β₁ … β_N in float64: the cosine schedule (Nichol & Dhariwal 2021) or DDPM's linear one."""
    N = cfg.num_steps
    if cfg.schedule == "linear":
        return torch.linspace(*LINEAR_BETAS, N, dtype=torch.float64)

    def abar(t):  # continuous ᾱ(t), t ∈ [0, 1] (Nichol & Dhariwal 2021, Eq. 17)
        return math.cos((t + COSINE_S) / (1 + COSINE_S) * math.pi / 2) ** 2

    return torch.tensor([min(1 - abar((i + 1) / N) / abar(i / N), MAX_BETA) for i in range(N)], dtype=torch.float64)


def _check(x: dict, what: str):
    for k, t in x.items():
        assert k in NDIM, f"{what}: unknown modality {k!r}, expected keys from {MODALITIES}"
        assert t.ndim == NDIM[k], f"{what}: {k} must have {NDIM[k]} dims (B, ...), got {tuple(t.shape)}"
    shapes = {k: tuple(t.shape) for k, t in x.items()}
    assert len({s[0] for s in shapes.values()}) == 1, f"{what}: batch sizes differ: {shapes}"


def _grads(err: torch.Tensor, inputs: list) -> list:
    """∇ of err for each input; zero where err does not depend on it (a network with fusion off: the
    condition's reconstruction ignores the generated modality, so guidance has nothing to say)."""
    grads = torch.autograd.grad(err, inputs, allow_unused=True)
    return [torch.zeros_like(x) if g is None else g for x, g in zip(inputs, grads)]


def _randn(shape, generator, device, dtype) -> torch.Tensor:
    # drawn on the generator's device, so a CPU generator gives the same numbers on any device
    gen_device = generator.device if generator is not None else device
    return torch.randn(shape, generator=generator, device=gen_device, dtype=dtype).to(device)


class Diffusion:
    """The forward process, 𝐯/ε conversions, the losses and the sampler for one schedule and parameterisation.

    Holds `alphas_cumprod` ᾱ (N,) in float64 on the CPU; every method takes its device and dtype from its
    inputs, so there is nothing to move.
    """

    def __init__(self, cfg: DiffusionConfig):
        self.cfg = cfg
        self.betas = make_betas(cfg)  # (N,)
        self.alphas_cumprod = torch.cumprod(1 - self.betas, dim=0)  # (N,) ᾱₙ

    # ---- closed forms (CMMD §2.1; Salimans & Ho 2022 §4) -----------------------------------------------

    def _coefs(self, n: torch.Tensor, x: torch.Tensor):
        """√ᾱₙ and √(1−ᾱₙ) for a step per example n (B,), shaped (B, 1, …) to broadcast against x."""
        assert n.ndim == 1 and n.shape[0] == x.shape[0], f"n must be (B,) with B={x.shape[0]}, got {tuple(n.shape)}"
        ab = self.alphas_cumprod.to(x.device)[n].view(-1, *[1] * (x.ndim - 1))  # (B, 1, …)
        return ab.sqrt().to(x.dtype), (1 - ab).sqrt().to(x.dtype)

    def q_sample(self, x0: torch.Tensor, n: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        sa, s1a = self._coefs(n, x0)
        return sa * x0 + s1a * noise  # xₙ = √ᾱₙ·x₀ + √(1−ᾱₙ)·ε (CMMD Eq. 5)

    def v_target(self, x0: torch.Tensor, n: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        sa, s1a = self._coefs(n, x0)
        return sa * noise - s1a * x0  # 𝐯 = √ᾱₙ·ε − √(1−ᾱₙ)·x₀ (CMMD Eq. 2)

    def target(self, x0: torch.Tensor, n: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """What the network is trained to output: 𝐯, or ε for an ε-prediction model."""
        return self.v_target(x0, n, noise) if self.cfg.prediction == "v" else noise

    def _x0_eps(self, x_n, out, sa, s1a):
        """(x̂₀, ε̂) from the network output, with √ᾱₙ and √(1−ᾱₙ) given (tensors or floats)."""
        if self.cfg.prediction == "v":
            # x̂₀ and ε̂ from 𝐯̂ (Salimans & Ho 2022, App. D; the 𝐯 of CMMD §2.1)
            return sa * x_n - s1a * out, s1a * x_n + sa * out
        return (x_n - s1a * out) / sa, out  # x̂₀ from ε̂ (Ho et al. 2020, Eq. 4 inverted)

    def predict_x0(self, x_n: torch.Tensor, n: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        return self._x0_eps(x_n, out, *self._coefs(n, x_n))[0]

    def predict_eps(self, x_n: torch.Tensor, n: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        return self._x0_eps(x_n, out, *self._coefs(n, x_n))[1]

    # ---- losses (CMMD Eq. 2, Eq. 6, Algorithm 1) --------------------------------------------------------

    def min_snr_weights(self, n: torch.Tensor, gamma: float) -> torch.Tensor:
        """Min-SNR-γ weight of each example's error (B,) at steps n (B,), in float64 on n's device (module
        docstring; Hang et al. 2023): min(SNR, γ) / (SNR + 1) for a 𝐯 target, min(SNR, γ) / SNR for ε."""
        ab = self.alphas_cumprod.to(n.device)[n]  # (B,) ᾱₙ
        snr = ab / (1 - ab)
        return snr.clamp(max=gamma) / (snr + 1 if self.cfg.prediction == "v" else snr)

    def _pair_losses(self, model, pairs: list, n, noise, generator, snr_gamma: float = 0.0):
        """Per-modality MSE (P,) of P pairs of equal shapes, all at the same steps n (B,), in one forward pass;
        each example's error weighted by Min-SNR-γ if snr_gamma > 0."""
        for i, p in enumerate(pairs):
            _check(p, f"diffusion.py pair {i}")
            assert {k: tuple(t.shape) for k, t in p.items()} == {k: tuple(t.shape) for k, t in pairs[0].items()}, \
                f"diffusion.py: pair {i} has shapes unlike the positive's"
        P, keys = len(pairs), [k for k in MODALITIES if k in pairs[0]]
        x0 = {k: torch.cat([p[k] for p in pairs]) for k in keys}  # (P·B, ...): concatenated as one batch (Alg. 1)
        B, device = pairs[0][keys[0]].shape[0], x0[keys[0]].device
        if n is None:
            gen_device = generator.device if generator is not None else device
            n = torch.randint(0, self.cfg.num_steps, (B,), generator=generator, device=gen_device)
        n = n.to(device)
        assert n.shape == (B,), f"diffusion.py: n must be (B,) = ({B},), got {tuple(n.shape)}"
        if noise is None:  # each pair and each modality gets its own noise (Eq. 6, Alg. 1)
            noise = [{k: _randn(pairs[0][k].shape, generator, device, x0[k].dtype) for k in keys} for _ in pairs]
        assert len(noise) == P, f"diffusion.py: need one noise dict per pair ({P}), got {len(noise)}"
        eps = {k: torch.cat([e[k] for e in noise]) for k in keys}  # (P·B, ...)
        n_all = n.repeat(P)  # (P·B,): the same step n for every pair
        x_n = {k: self.q_sample(x0[k], n_all, eps[k]) for k in keys}
        out = model(x_n, n_all)
        weight = self.min_snr_weights(n, snr_gamma) if snr_gamma > 0 else None  # (B,)
        mse = {}
        for k in keys:
            assert out[k].shape == x_n[k].shape, f"model output {k} {tuple(out[k].shape)} != input {tuple(x_n[k].shape)}"
            err = (out[k].to(x_n[k].dtype) - self.target(x0[k], n_all, eps[k])).pow(2)
            err = err.reshape(P, B, -1).mean(dim=2)  # (P, B): each example's MSE
            if weight is not None:
                err = err * weight.to(err.dtype)
            mse[k] = err.mean(dim=1)  # (P,): MSE of each pair
        return mse

    def joint_loss(self, model, x0: dict, n=None, noise=None, generator=None, snr_gamma: float = 0.0):
        """L_jdiff (CMMD Eq. 2): one step n per example shared by both modalities, each modality its own noise.

        x0: {"video": (B, F, C, H, W), "audio": (B, M, T)}; n: (B,) or None (uniform over the N steps);
        noise: a dict like x0 or None (drawn from `generator`); snr_gamma: γ of the Min-SNR-γ weighting (0: the
        paper's uniform weighting; module docstring). Returns (loss, {modality: detached MSE}).
        """
        mse = self._pair_losses(model, [x0], n, None if noise is None else [noise], generator, snr_gamma)
        loss = sum(m[0] for m in mse.values())  # [choice] MSE per modality, summed over modalities
        return loss, {k: m[0].detach() for k, m in mse.items()}

    def contrastive_loss(self, model, pos: dict, negs: list, eta: float, n=None, noise=None, generator=None,
                         snr_gamma: float = 0.0):
        """L_cont = L_jdiff(v, a) − η·Σ L_jdiff(negative pair) (CMMD Eq. 6, [choice] above).

        negs: list of pair dicts such as {"video": v, "audio": a¬} and {"video": v¬, "audio": a} (negatives.py).
        All pairs share the step n (B,); noise, if given, is a list of dicts: the positive's first, then one per
        negative. Returns (loss, terms): "jdiff" the positive's L_jdiff, "video"/"audio" its per-modality MSE,
        and "neg0", "neg1", … each negative pair's L_jdiff (log them: the negative term is unbounded below).
        """
        pairs = [pos, *negs]
        mse = self._pair_losses(model, pairs, n, noise, generator, snr_gamma)
        L = sum(mse.values())  # (P,): L_jdiff of each pair
        loss = L[0] - eta * L[1:].sum()  # CMMD Eq. 6
        terms = {"jdiff": L[0].detach(), **{k: m[0].detach() for k, m in mse.items()}}
        terms.update({f"neg{i}": L[1 + i].detach() for i in range(len(negs))})
        return loss, terms

    # ---- sampling (Song et al. 2021; Lu et al. 2022; CMMD Eq. 3, 5; MM-Diffusion Eq. 12) -----------------

    def timesteps(self, steps: int) -> list:
        """S evenly spaced steps, high to low: (S−1)·k, …, k, 0 with k = N // S (DDIM's, diffusers' "leading").
        Every sampler uses these; the last step goes from n = 0 to ᾱ = 1, so the result is x̂₀."""
        if not 1 <= steps <= self.cfg.num_steps:
            raise ValueError(f"diffusion.py: steps must be in 1..{self.cfg.num_steps}, got {steps}")
        k = self.cfg.num_steps // steps
        return [i * k for i in reversed(range(steps))]

    def sample(self, model, shapes: dict, cfg: "SamplerConfig | None" = None, *, cond: dict | None = None,
               mask: dict | None = None, generator=None, progress: bool = True, **overrides) -> dict:
        """Joint or conditional generation with `cfg.sampler` (DDIM or DPM-Solver++(2M)), by replacement
        (CMMD Eq. 5) and guidance (CMMD Eq. 3 or MM-Diffusion Eq. 12) on what is known.

        shapes: {modality: shape} of the modalities to generate. cond: {modality: x₀} of the known modalities,
        each of its sample's full shape; mask: {modality: (B, F) or (B, T) bool}, True at the frames or mel
        steps of cond[modality] that are known (temporal inpainting: continuation, long generation). A
        modality in cond without a mask is known whole: {"video": v0} is video→audio, {"audio": a0}
        audio→video; cond=None is joint generation. `cfg` (SamplerConfig, default the paper's: PAPER_SAMPLER,
        replacement) is overridden field by field by keyword (steps=25, guidance=10, ...).

        Every step, for each sampler alike (`Known` holds what follows):
        1. replacement (Eq. 5): the known part of xₙ is √ᾱₙ·x₀ + √(1−ᾱₙ)·ε, with ε drawn once;
        2. the network's x̂₀ and ε̂ (𝐯- or ε-prediction);
        3. guidance λ > 0 with guidance_form
           "cmmd":        â₀ = ā₀ − λ·√ᾱₙ·∇_{xₙ} ‖m ⊙ (x₀ − x̂₀)‖² over the known elements (Eq. 3; [choice] ‖·‖²
                          summed over elements), then ε̂ is re-derived from â₀: ε̂ = (xₙ − √ᾱₙ·â₀) / √(1−ᾱₙ);
           "mmdiffusion": after the update (σₙ·z included), xₙ₋₁ −= λ·√ᾱₙ·∇_{xₙ} mean ‖xₙ₋₁ − q(xₙ₋₁|x₀)‖² over
                          the known elements of each example, the known modality stepped too (MM-Diffusion Eq. 12
                          as its official code runs it, multimodal_gaussian_diffusion.py:811-817: √ᾱ of the input's
                          step n and ∇ with respect to the input xₙ, where the paper prints √(1−ᾱ_t) and ∇_{a_t} of
                          the step t it produces; no guidance on the last step, :796);
           the gradient is taken with respect to the modalities that have unknown parts;
        4. clip_x0 clamps x̂₀ to [-1, 1] (pixels and waveforms) and re-derives ε̂ from it (as GLIDE);
        5. the sampler's update from xₙ, x̂₀, ε̂ to xₙ₋₁ (`ddim_update`, `dpmpp_2m_update`).
        [choice] Guidance enters the multistep DPM-Solver++ through x̂₀, at first order: the step integrates
        D = â₀ + c·(x̂₀ − x̂₀ of the previous step), the guided â₀ plus the solver's second-order correction
        computed from the network's own x̂₀ only (its history keeps the unguided x̂₀). The correction
        extrapolates the smooth denoiser trajectory; the guidance gradient changes from step to step, and
        extrapolating it too (a history of guided â₀) amplified it: on the demo's model, video→audio F1 at
        25 steps fell to 0.60 against DDIM's 0.68 (README, "Results"). Guidance never changes the known part.
        [mmdiffusion] The official sampler also averages over the batch (:815) and, with use_fp16 as its released
        scripts run, leaves its loss scale 2²⁰ in the gradient (:812-815): its classifier_scale 3 at batch 2 is
        λ = 3·2²⁰/2 here. It is DDPM only: eta_ddim=1 with this form is it with the variance β̃ (its FIXED_SMALL;
        the released scripts use β, FIXED_LARGE), tests/test_mmdiffusion_guidance.py.
        λ = 0 never touches autograd. eta_ddim > 0 (DDIM only) draws σₙ·z (Song et al. 2021, Eq. 16; 1 is
        DDPM with the posterior variance β̃). Noise is drawn from `generator` in this order: one tensor per
        modality in MODALITIES order (the start of its unknown part and the ε of its known part), then per
        step, if eta_ddim > 0, one per modality stepped, in MODALITIES order: those with an unknown part and,
        with "mmdiffusion" guidance, the wholly known ones (the official p_sample noises both). Returns
        {modality: x₀}, with the known part exactly as given (a wholly known modality is returned as the given
        tensor).
        """
        cfg = dataclasses.replace(cfg or SamplerConfig(), **overrides)
        known = Known(cond or {}, mask or {})
        if cfg.guidance > 0 and not known.x0:
            raise ValueError("diffusion.py: guidance needs a condition (cond=None is joint generation; use guidance=0)")
        if cfg.guidance > 0 and torch.is_inference_mode_enabled():
            raise ValueError("diffusion.py: guidance needs autograd; call sample() outside torch.inference_mode()")
        shapes = {k: tuple(known.x0[k].shape) if k in known.x0 else tuple(shapes[k])
                  for k in MODALITIES if k in known.x0 or k in shapes}
        gen = [k for k in shapes if k not in known.whole]  # modalities with an unknown part
        if not gen:
            raise ValueError(f"diffusion.py: nothing to generate: shapes {list(shapes)}, all known")
        assert all(len(s) == NDIM[k] for k, s in shapes.items()), f"diffusion.py: bad shapes {shapes}"
        assert len({s[0] for s in shapes.values()}) == 1, f"diffusion.py: batch sizes differ: {shapes}"
        B = next(iter(shapes.values()))[0]
        if known.x0:
            device, dtype = next(iter(known.x0.values())).device, next(iter(known.x0.values())).dtype
        else:
            param = next(model.parameters(), None) if isinstance(model, torch.nn.Module) else None
            device, dtype = (param.device if param is not None else torch.device("cpu")), torch.get_default_dtype()

        noise = {k: _randn(shapes[k], generator, device, dtype) for k in shapes}  # εᵥ of Eq. 5 drawn once
        known.noise = noise
        x = {k: noise[k] for k in gen}
        ts = self.timesteps(cfg.steps)
        abar = self.alphas_cumprod.tolist()
        guided, update, history = cfg.guidance > 0, UPDATES[cfg.sampler], {k: {} for k in shapes}
        # the modalities stepped: the generated ones, and the known ones where MM-Diffusion's guidance compares
        # their step with the forward process
        step = gen + ([k for k in known.whole] if guided and cfg.guidance_form == "mmdiffusion" else [])
        for i, n in enumerate(tqdm(ts, desc=cfg.sampler, disable=not progress)):
            ab, ab_prev = abar[n], (abar[ts[i + 1]] if i + 1 < len(ts) else 1.0)
            sa, s1a = math.sqrt(ab), math.sqrt(1 - ab)
            known.replace(x, sa, s1a)  # CMMD Eq. 5
            n_b = torch.full((B,), n, dtype=torch.long, device=device)  # (B,)
            with torch.enable_grad() if guided else nullcontext():
                x_in = {k: x[k].detach().requires_grad_(guided and k in gen) for k in shapes}
                out = model(x_in, n_b)
                x0, eps = {}, {}
                for k in shapes:
                    assert out[k].shape == x_in[k].shape, f"model output {k} {tuple(out[k].shape)} != {tuple(x_in[k].shape)}"
                    x0[k], eps[k] = self._x0_eps(x_in[k], out[k], sa, s1a)
                x0_net = {k: v.clamp(-1, 1) if cfg.clip_x0 else v for k, v in x0.items()}  # the network's own x̂₀
                if guided and cfg.guidance_form == "cmmd":
                    grads = _grads(known.reconstruction_error(x0), [x_in[k] for k in gen])
                    for k, g in zip(gen, grads):
                        x0[k] = x0[k] - cfg.guidance * sa * g  # â₀ = ā₀ − λ·√ᾱₙ·∇‖x₀ − x̂₀‖² (CMMD Eq. 3)
                        eps[k] = (x_in[k] - sa * x0[k]) / s1a  # ε̂ = (xₙ − √ᾱₙ·â₀) / √(1−ᾱₙ)
                if cfg.clip_x0:
                    for k in shapes:
                        x0[k] = x0[k].clamp(-1, 1)
                        eps[k] = (x_in[k] - sa * x0[k]) / s1a  # ε̂ re-derived from the clipped x̂₀ (as GLIDE)
                # σₙ(η) of DDIM (Song et al. 2021, Eq. 16)
                sigma = cfg.eta_ddim * math.sqrt((1 - ab_prev) / (1 - ab) * (1 - ab / ab_prev))
                x_prev = {k: update(x_in[k], x0[k], eps[k], ab, ab_prev, sigma, history[k], x0_net[k]) for k in step}
                if cfg.eta_ddim > 0:  # σₙ·z on every modality stepped: a known one's enters the "mmdiffusion" error
                    for k in (k for k in MODALITIES if k in step):
                        x_prev[k] = x_prev[k] + sigma * _randn(shapes[k], generator, device, dtype)
                if guided and cfg.guidance_form == "mmdiffusion" and i + 1 < len(ts):
                    grads = _grads(known.forward_error(x_prev, math.sqrt(ab_prev), math.sqrt(1 - ab_prev)),
                                   [x_in[k] for k in gen])
                    for k, g in zip(gen, grads):
                        x_prev[k] = x_prev[k] - cfg.guidance * sa * g  # x̃ = x − λ·√ᾱₙ·∇ (MM-Diffusion Eq. 12 as coded)
            for k in gen:
                x[k] = x_prev[k].detach()
        return known.result(x)


# ---- the samplers' updates: one signature, (xₙ, x̂₀ guided, ε̂, ᾱₙ, ᾱₙ₋₁, σₙ, history, the network's x̂₀) -> xₙ₋₁ ----

def ddim_update(x_n, x0, eps, ab, ab_prev, sigma, history, x0_net):
    """DDIM (Song et al. 2021, Eq. 12): xₙ₋₁ = √ᾱₙ₋₁·x̂₀ + √(1−ᾱₙ₋₁−σₙ²)·ε̂; the caller adds σₙ·z."""
    c0, c_eps = math.sqrt(ab_prev), math.sqrt(max(1 - ab_prev - sigma**2, 0.0))  # max: rounding at η = 1
    return c0 * x0 + c_eps * eps


def dpmpp_2m_update(x_n, x0, eps, ab, ab_prev, sigma, history, x0_net):
    """DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2): multistep second order in x̂₀, first order at the ends."""
    if ab_prev == 1.0:  # to σ = 0: the first-order step is x̂₀ itself (diffusers' final_sigmas_type="zero")
        return x0
    lam, lam_prev = 0.5 * math.log(ab / (1 - ab)), 0.5 * math.log(ab_prev / (1 - ab_prev))  # λ = log(α/σ)
    h = lam_prev - lam  # step in half log-SNR
    D = x0
    if "x0" in history:  # D = (1 + 1/2r)·x̂₀ − 1/2r·x̂₀ of the previous step, r = h_prev / h (Lu et al. 2022, Eq. 9)
        c = 0.5 * h / history["h"]
        D = x0 + c * (x0_net - history["x0"])  # = (1 + c)·x̂₀ − c·x̂₀_prev unguided; guidance at first order
    history.update(x0=x0_net.detach(), h=h)
    # x_prev = (σₙ₋₁/σₙ)·xₙ − αₙ₋₁·(e^(−h) − 1)·D, with α = √ᾱ, σ = √(1−ᾱ)
    return math.sqrt((1 - ab_prev) / (1 - ab)) * x_n - math.sqrt(ab_prev) * math.expm1(-h) * D


UPDATES = {"ddim": ddim_update, "dpmsolver++": dpmpp_2m_update}
SAMPLERS = tuple(UPDATES)
PAPER_SAMPLER = {"sampler": "ddim", "steps": 200}  # the paper's sampler: 200 DDIM steps (CMMD App. B.2, Table 4)


@dataclass
class SamplerConfig:
    """How `Diffusion.sample` samples; by default as the paper does (PAPER_SAMPLER, replacement)."""
    sampler: str = field(default=PAPER_SAMPLER["sampler"], metadata={
        "help": "ddim (Song et al. 2021) or dpmsolver++ (Lu et al. 2022, multistep 2M)", "choices": list(UPDATES)})
    steps: int = field(default=PAPER_SAMPLER["steps"], metadata={
        "help": "sampling steps, one network evaluation each (guidance adds a backward pass to each)"})
    guidance: float = field(default=0.0, metadata={"help": "λ of the guidance (CMMD Eq. 3); 0: replacement (Eq. 5)"})
    guidance_form: str = field(default="cmmd", metadata={
        "help": "cmmd (Eq. 3) or mmdiffusion (MM-Diffusion Eq. 12 as its code runs it)", "choices": list(GUIDANCE_FORMS)})
    eta_ddim: float = field(default=0.0, metadata={"help": "DDIM's η: 0 deterministic, 1 DDPM (Song et al. 2021, Eq. 16)"})
    clip_x0: bool = field(default=False, metadata={"help": "clamp x̂₀ to [-1, 1] (pixel and waveform models)"})

    def __post_init__(self):
        if self.sampler not in SAMPLERS:
            raise ValueError(f"diffusion.py: sampler must be one of {SAMPLERS}, got {self.sampler!r}")
        if self.guidance_form not in GUIDANCE_FORMS:
            raise ValueError(f"diffusion.py: guidance_form must be one of {GUIDANCE_FORMS}, got {self.guidance_form!r}")
        if not (isinstance(self.steps, int) and self.steps >= 1):
            raise ValueError(f"diffusion.py: steps must be a positive integer, got {self.steps!r}")
        if not (math.isfinite(self.guidance) and self.guidance >= 0):
            raise ValueError(f"diffusion.py: guidance λ must be finite and >= 0, got {self.guidance}")
        if not 0 <= self.eta_ddim <= 1:
            raise ValueError(f"diffusion.py: eta_ddim must be in [0, 1], got {self.eta_ddim}")
        if self.eta_ddim > 0 and self.sampler != "ddim":
            raise ValueError(f"diffusion.py: eta_ddim > 0 is DDIM's; {self.sampler} is deterministic")


class Known:
    """What the sampler is given (CMMD Eq. 5, along time): per modality the values x₀ (the sample's full
    shape) and a mask along time, (B, F) for video or (B, T) for audio, True where x₀ is known. A modality
    without a mask is known whole, the case of video→audio and audio→video. `noise` is ε of Eq. 5, set by
    the sampler; everything here is written once for every sampler."""

    def __init__(self, x0: dict, mask: dict):
        if x0:
            _check(x0, "diffusion.py cond")
        unknown = set(mask) - set(x0)
        assert not unknown, f"diffusion.py: mask for {sorted(unknown)} without cond values"
        self.x0, self.mask, self.noise = dict(x0), {}, {}
        for k, m in mask.items():
            t = self.x0[k]
            want = (t.shape[0], t.shape[TIME_AXIS[k]])
            assert m.dtype == torch.bool and tuple(m.shape) == want, \
                f"diffusion.py: mask[{k!r}] must be bool {want} (B, time), got {m.dtype} {tuple(m.shape)}"
            if not m.all():  # an all-True mask is the whole modality
                self.mask[k] = m.to(t.device).view(*want, *[1] * (t.ndim - 2)).movedim(1, TIME_AXIS[k])  # broadcastable
        self.whole = [k for k in MODALITIES if k in self.x0 and k not in self.mask]

    def replace(self, x: dict, sa: float, s1a: float):
        """xₙ's known part = √ᾱₙ·x₀ + √(1−ᾱₙ)·ε (CMMD Eq. 5), in place in the dict x."""
        for k in self.x0:
            q = sa * self.x0[k] + s1a * self.noise[k]
            x[k] = torch.where(self.mask[k], q, x[k]) if k in self.mask else q

    def reconstruction_error(self, x0_hat: dict) -> torch.Tensor:
        """‖m ⊙ (x₀ − x̂₀)‖² summed over the known elements of the batch (CMMD Eq. 3)."""
        err = 0
        for k in self.x0:
            e = (self.x0[k] - x0_hat[k]).pow(2)
            err = err + (torch.where(self.mask[k], e, 0.0) if k in self.mask else e).sum()
        return err

    def forward_error(self, x_prev: dict, sa_prev: float, s1a_prev: float) -> torch.Tensor:
        """‖xₙ₋₁ − q(xₙ₋₁|x₀)‖² averaged over each example's known elements, summed over the batch
        (MM-Diffusion Eq. 12 as its official code runs it)."""
        err = 0
        for k in self.x0:
            e = (x_prev[k] - (sa_prev * self.x0[k] + s1a_prev * self.noise[k])).pow(2)
            if k in self.mask:
                m = self.mask[k].expand_as(e).flatten(1)
                err = err + (e.flatten(1) * m).sum(1).div(m.sum(1).clamp(min=1)).sum()
            else:
                err = err + e.flatten(1).mean(1).sum()
        return err

    def result(self, x: dict) -> dict:
        """The sample with its known part exactly as given."""
        return {k: self.x0[k] if k in self.whole else torch.where(self.mask[k], self.x0[k], x[k]) if k in self.mask
                else x[k] for k in MODALITIES if k in x or k in self.x0}
