"""Random biquad-filter augmentation of the vocoder's training segments (CMMD App. F.1, following HiFi-GAN
training as the paper's improved MelGAN does; the paper gives no parameters, so they are [choice]s in
melgan.MelGANConfig: aug_p, aug_freq, aug_gain_db, aug_q).

A biquad is the second-order IIR filter of the RBJ Audio EQ Cookbook (Bristow-Johnson):
    H(z) = (b₀ + b₁z⁻¹ + b₂z⁻²) / (a₀ + a₁z⁻¹ + a₂z⁻²),
    A = 10^(gain_dB / 40),  ω₀ = 2π f₀ / f_s,  α = sin ω₀ / (2Q),
    peaking:    b = (1 + αA, −2 cos ω₀, 1 − αA),  a = (1 + α/A, −2 cos ω₀, 1 − α/A),
    low shelf:  b = A((A+1) − (A−1)cos ω₀ + 2√A α, 2((A−1) − (A+1)cos ω₀), (A+1) − (A−1)cos ω₀ − 2√A α),
                a = ((A+1) + (A−1)cos ω₀ + 2√A α, −2((A−1) + (A+1)cos ω₀), (A+1) + (A−1)cos ω₀ − 2√A α),
    high shelf: the low shelf with the sign of every (A−1) term flipped.
With probability aug_p a segment goes through one of them: kind uniform, f₀ log-uniform in aug_freq Hz,
gain uniform in ±aug_gain_db dB, Q log-uniform in aug_q; then it is scaled down if its peak exceeds 1
(the generator ends in tanh). The filter runs in the frequency domain, loop-free (`biquad_filter`).
"""
import math

import torch

from melspec import SAMPLE_RATE

BIQUAD_KINDS = ("lowshelf", "highshelf", "peaking")  # RBJ Audio EQ Cookbook (Bristow-Johnson)


def biquad_coefficients(kind: str, f0: torch.Tensor, gain_db: torch.Tensor, q: torch.Tensor,
                        sample_rate: int = SAMPLE_RATE) -> tuple[torch.Tensor, torch.Tensor]:
    """RBJ Audio EQ Cookbook biquads: f0, gain_db, q (...,) -> numerator b and denominator a (..., 3)."""
    A = 10 ** (gain_db / 40)  # amplitude: the square root of the gain, RBJ's A
    w0 = 2 * math.pi * f0 / sample_rate
    cos, alpha = torch.cos(w0), torch.sin(w0) / (2 * q)
    if kind == "peaking":
        b = [1 + alpha * A, -2 * cos, 1 - alpha * A]
        a = [1 + alpha / A, -2 * cos, 1 - alpha / A]
    elif kind in ("lowshelf", "highshelf"):
        sgn = 1 if kind == "lowshelf" else -1  # the high shelf: the low shelf with every (A - 1) negated
        k = 2 * A.sqrt() * alpha
        b = [A * ((A + 1) - sgn * (A - 1) * cos + k), sgn * 2 * A * ((A - 1) - sgn * (A + 1) * cos),
             A * ((A + 1) - sgn * (A - 1) * cos - k)]
        a = [(A + 1) + sgn * (A - 1) * cos + k, -sgn * 2 * ((A - 1) + sgn * (A + 1) * cos),
             (A + 1) + sgn * (A - 1) * cos - k]
    else:
        raise ValueError(f"unknown biquad kind {kind!r}; choose from {BIQUAD_KINDS}")
    return torch.stack(b, -1), torch.stack(a, -1)  # (..., 3) each


def biquad_filter(wav: torch.Tensor, b: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """Filter (B, L) waveforms by per-row biquads b, a (B, 3), loop-free: multiply the spectrum of the
    segment, zero-padded to n_fft = 2L, by the biquad's frequency response
    H(e^{jω}) = (b₀ + b₁e^{−jω} + b₂e^{−2jω}) / (a₀ + a₁e^{−jω} + a₂e^{−2jω}) at ω = 2πk/n_fft.
    This equals the recursive filter (scipy.signal.lfilter from rest) except for the part of the impulse
    response beyond L samples, which wraps around; for the augmentation's stable biquads it has decayed
    to ~1e-6 within a few thousand samples, so on 4 s segments the two agree to float precision."""
    assert wav.ndim == 2 and b.shape == a.shape == (wav.shape[0], 3), \
        f"need wav (B, L), b and a (B, 3); got {tuple(wav.shape)}, {tuple(b.shape)}, {tuple(a.shape)}"
    L = wav.shape[1]
    n_fft = 2 * L
    w = 2 * math.pi * torch.arange(n_fft // 2 + 1, device=wav.device, dtype=torch.float64) / n_fft
    z = torch.exp(-1j * w[:, None] * torch.arange(3, device=wav.device, dtype=torch.float64))  # (n_fft/2+1, 3) e^{-jωk}
    H = (b.double().to(z.dtype) @ z.T) / (a.double().to(z.dtype) @ z.T)  # (B, n_fft/2+1)
    spec = torch.fft.rfft(wav.double(), n=n_fft)  # (B, n_fft/2+1)
    return torch.fft.irfft(spec * H, n=n_fft)[:, :L].to(wav.dtype)  # (B, L)


def random_biquad(wav: torch.Tensor, cfg, generator: torch.Generator) -> torch.Tensor:
    """CMMD App. F.1 augmentation of (B, L): each row, with probability cfg.aug_p, through one random shelf or
    peak EQ drawn from cfg.aug_freq, cfg.aug_gain_db and cfg.aug_q (a melgan.MelGANConfig)."""
    B = wav.shape[0]
    u = torch.rand(B, 5, generator=generator, dtype=torch.float64)  # (B, 5): apply?, kind, f0, gain, Q
    kinds = (u[:, 1] * len(BIQUAD_KINDS)).long().clamp(max=len(BIQUAD_KINDS) - 1)

    def log_uniform(x, lo, hi):
        return torch.exp(math.log(lo) + x * (math.log(hi) - math.log(lo)))
    f0 = log_uniform(u[:, 2], *cfg.aug_freq)
    gain = (2 * u[:, 3] - 1) * cfg.aug_gain_db
    q = log_uniform(u[:, 4], *cfg.aug_q)
    b = torch.tensor([[1.0, 0.0, 0.0]], dtype=torch.float64).repeat(B, 1)  # (B, 3): identity by default
    a = b.clone()
    for i, kind in enumerate(BIQUAD_KINDS):
        rows = (kinds == i) & (u[:, 0] < cfg.aug_p)
        if rows.any():
            b[rows], a[rows] = biquad_coefficients(kind, f0[rows], gain[rows], q[rows])
    y = biquad_filter(wav, b.to(wav.device), a.to(wav.device))
    peak = y.abs().amax(dim=1, keepdim=True).clamp(min=1.0)  # (B, 1): scale down only rows above full scale
    return y / peak

