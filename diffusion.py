"""Joint video-audio diffusion: the schedule, the 𝐯/ε conversions and the losses (CMMD §2.1–2.2, Eq. 1, 2,
5, 6, Algorithm 1; Salimans & Ho 2022). Sampling is sampling.py.

Both modalities share one schedule and one step n per example (CMMD §2.1); the maths is written once per
tensor and looped over the modality dict {"video": (B, F, C, H, W), "audio": (B, M, T)}. Steps are
0-indexed, n ∈ {0, …, N−1}, ᾱ[n] = ∏_{i≤n} (1 − β_i) (diffusers' convention): the paper's αₙ is this ᾱₙ;
α = √ᾱₙ and σ = √(1−ᾱₙ) below.

[choice] L_jdiff (Eq. 2) is the mean squared error of each modality, summed over the two modalities.
[choice] L_cont (Eq. 6) follows the equation, not Algorithm 1: every negative pair is a data point of its own,
with its own noise and targets, at the positive's step n; a list of negatives is summed (η absorbs the count).
[choice] Loss weighting: uniform over n (Eq. 2); snr_gamma = γ > 0 weights each example by Min-SNR-γ (Hang et
al. 2023), written for the network's target. Notes: docs/training.md.
"""
import math
from dataclasses import dataclass

import torch

from modalities import MODALITIES, check

COSINE_S = 0.008  # offset of the cosine schedule (Nichol & Dhariwal 2021, Eq. 17)
MAX_BETA = 0.999  # β clip of the cosine schedule (Nichol & Dhariwal 2021; diffusers' squaredcos_cap_v2)
LINEAR_BETAS = (1e-4, 0.02)  # β₁ … β_N of the linear schedule (Ho et al. 2020, §4), used by MM-Diffusion


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


def randn(shape, generator, device, dtype) -> torch.Tensor:
    """Normal noise drawn on the generator's device, so a CPU generator gives the same numbers on any device."""
    gen_device = generator.device if generator is not None else device
    return torch.randn(shape, generator=generator, device=gen_device, dtype=dtype).to(device)


class Diffusion:
    """The forward process, the 𝐯/ε conversions and the losses for one schedule and parameterisation.

    Holds `alphas_cumprod` ᾱ (N,) in float64 on the CPU; every method takes its device and dtype from its
    inputs, so there is nothing to move.
    """

    def __init__(self, cfg: DiffusionConfig):
        self.cfg = cfg
        self.betas = make_betas(cfg)  # (N,)
        self.alphas_cumprod = torch.cumprod(1 - self.betas, dim=0)  # (N,) ᾱₙ

    # ---- closed forms (CMMD §2.1; Salimans & Ho 2022 §4) -----------------------------------------------

    def _coefs(self, n: torch.Tensor, x: torch.Tensor):
        """α = √ᾱₙ and σ = √(1−ᾱₙ) for a step per example n (B,), shaped (B, 1, …) to broadcast against x."""
        assert n.ndim == 1 and n.shape[0] == x.shape[0], f"n must be (B,) with B={x.shape[0]}, got {tuple(n.shape)}"
        abar = self.alphas_cumprod.to(x.device)[n].view(-1, *[1] * (x.ndim - 1))  # (B, 1, …)
        return abar.sqrt().to(x.dtype), (1 - abar).sqrt().to(x.dtype)

    def q_sample(self, x0: torch.Tensor, n: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        alpha, sigma = self._coefs(n, x0)
        return alpha * x0 + sigma * noise  # xₙ = √ᾱₙ·x₀ + √(1−ᾱₙ)·ε (CMMD Eq. 5)

    def v_target(self, x0: torch.Tensor, n: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        alpha, sigma = self._coefs(n, x0)
        return alpha * noise - sigma * x0  # 𝐯 = √ᾱₙ·ε − √(1−ᾱₙ)·x₀ (CMMD Eq. 2)

    def target(self, x0: torch.Tensor, n: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """What the network is trained to output: 𝐯, or ε for an ε-prediction model."""
        return self.v_target(x0, n, noise) if self.cfg.prediction == "v" else noise

    def x0_eps(self, x_n, out, alpha, sigma):
        """(x̂₀, ε̂) from any network output, 𝐯 or ε, with α = √ᾱₙ and σ = √(1−ᾱₙ) (tensors or floats): the one
        place that knows the parameterisation."""
        if self.cfg.prediction == "v":
            # x̂₀ and ε̂ from 𝐯̂ (Salimans & Ho 2022, App. D; the 𝐯 of CMMD §2.1)
            return alpha * x_n - sigma * out, sigma * x_n + alpha * out
        return (x_n - sigma * out) / alpha, out  # x̂₀ from ε̂ (Ho et al. 2020, Eq. 4 inverted)

    def predict_x0(self, x_n: torch.Tensor, n: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        return self.x0_eps(x_n, out, *self._coefs(n, x_n))[0]

    def predict_eps(self, x_n: torch.Tensor, n: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        return self.x0_eps(x_n, out, *self._coefs(n, x_n))[1]

    # ---- losses (CMMD Eq. 2, Eq. 6, Algorithm 1) --------------------------------------------------------

    def min_snr_weights(self, n: torch.Tensor, gamma: float) -> torch.Tensor:
        """Min-SNR-γ weight of each example's error (B,) at steps n (B,), in float64 on n's device (module
        docstring; Hang et al. 2023): min(SNR, γ) / (SNR + 1) for a 𝐯 target, min(SNR, γ) / SNR for ε."""
        abar = self.alphas_cumprod.to(n.device)[n]  # (B,) ᾱₙ
        snr = abar / (1 - abar)
        return snr.clamp(max=gamma) / (snr + 1 if self.cfg.prediction == "v" else snr)

    def _pair_losses(self, model, pairs: list, n, noise, generator, snr_gamma: float = 0.0, known=None,
                     text=None):
        """Per-modality MSE (P,) of P pairs of equal shapes, all at the same steps n (B,), in one forward pass;
        each example's error weighted by Min-SNR-γ if snr_gamma > 0. known: {modality: (B,) bool} for a network
        with trained conditional modes (MM-LDM): that modality's clean x₀ is its condition, and its error is
        left out of the loss. text: B captions for a text-conditioned network, the same for every pair."""
        for i, p in enumerate(pairs):
            check(p, f"diffusion.py pair {i}")
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
            noise = [{k: randn(pairs[0][k].shape, generator, device, x0[k].dtype) for k in keys} for _ in pairs]
        assert len(noise) == P, f"diffusion.py: need one noise dict per pair ({P}), got {len(noise)}"
        eps = {k: torch.cat([e[k] for e in noise]) for k in keys}  # (P·B, ...)
        n_all = n.repeat(P)  # (P·B,): the same step n for every pair
        x_n = {k: self.q_sample(x0[k], n_all, eps[k]) for k in keys}
        extra = {} if text is None else {"text": list(text) * P}
        if known is None:
            out = model(x_n, n_all, **extra)
        else:
            assert P == 1, "diffusion.py: trained conditions take one pair"
            out = model(x_n, n_all, cond={k: x0[k] for k in known}, cond_on=known, **extra)
        weight = self.min_snr_weights(n, snr_gamma) if snr_gamma > 0 else None  # (B,)
        mse = {}
        for k in keys:
            assert out[k].shape == x_n[k].shape, \
                f"model output {k} {tuple(out[k].shape)} != input {tuple(x_n[k].shape)}"
            err = (out[k].to(x_n[k].dtype) - self.target(x0[k], n_all, eps[k])).pow(2)
            err = err.reshape(P, B, -1).mean(dim=2)  # (P, B): each example's MSE
            if weight is not None:
                err = err * weight.to(err.dtype)
            if known is not None and k in known:  # [choice] a known modality's examples count as zeros in the mean
                err = err * (~known[k]).to(err.dtype)
            mse[k] = err.mean(dim=1)  # (P,): MSE of each pair
        return mse

    def joint_loss(self, model, x0: dict, n=None, noise=None, generator=None, snr_gamma: float = 0.0, known=None,
                   text=None):
        """L_jdiff (CMMD Eq. 2): one step n per example shared by both modalities, each modality its own noise.

        x0: {"video": (B, F, C, H, W), "audio": (B, M, T)}; n: (B,) or None (uniform over the N steps);
        noise: a dict like x0 or None (drawn from `generator`); snr_gamma: γ of the Min-SNR-γ weighting (0: the
        paper's uniform weighting; module docstring); known: trained conditional modes, text: captions
        (_pair_losses). Returns (loss, {modality: detached MSE}).
        """
        mse = self._pair_losses(model, [x0], n, None if noise is None else [noise], generator, snr_gamma, known,
                                text)
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
        jdiff = sum(mse.values())  # (P,): L_jdiff of each pair
        loss = jdiff[0] - eta * jdiff[1:].sum()  # CMMD Eq. 6
        terms = {"jdiff": jdiff[0].detach(), **{k: m[0].detach() for k, m in mse.items()}}
        terms.update({f"neg{i}": jdiff[1 + i].detach() for i in range(len(negs))})
        return loss, terms

    # ---- the sampling grid (Song et al. 2021) --------------------------------------------------------------

    def timesteps(self, steps: int) -> list:
        """S evenly spaced steps, high to low: (S−1)·k, …, k, 0 with k = N // S (DDIM's, diffusers' "leading").
        Every solver uses these (sampling.py); the last step goes from n = 0 to ᾱ = 1, so the result is x̂₀."""
        if not 1 <= steps <= self.cfg.num_steps:
            raise ValueError(f"diffusion.py: steps must be in 1..{self.cfg.num_steps}, got {steps}")
        k = self.cfg.num_steps // steps
        return [i * k for i in reversed(range(steps))]
