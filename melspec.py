"""The one log-mel front end (CMMD §3 "Feature Extraction", App. B), shared by the diffusion model, the
vocoder and the metrics: audio features are made here and nowhere else.

16 kHz mono audio; STFT with a 512-point periodic Hann window (32 ms) and hop 256 (16 ms, 50 % overlap),
after MelGAN's reflect padding of (N_FFT − HOP)/2 = 128 samples on both sides and center=False, so a clip
of L samples gives T = ⌊L / 256⌋ frames (1.8 s = 28 800 samples -> 112); 80 Slaney mel bands 0-8 kHz
(librosa's filterbank). With m the magnitude mel spectrogram, the model's feature is

    n = 2 · (log10 max(m, 1e-5) − LOG_MEL_MIN) / (LOG_MEL_MAX − LOG_MEL_MIN) − 1,    LOG_MEL_MIN, MAX = −5, 1

a fixed affine map of MelGAN's log10-mel to about [-1, 1] ([choice], stored with every checkpoint).
`mel_to_wav` inverts it by Griffin-Lim (Griffin & Lim 1984), the fallback before a vocoder is trained.
"""
import math

import torch
import torch.nn.functional as F

SAMPLE_RATE = 16000  # Hz, CMMD §3
N_FFT = 512  # 32 ms Hann window, CMMD §3
HOP = 256  # 16 ms hop, 50 % overlap, CMMD §3
N_MELS = 80  # CMMD §3, Table 5
MEL_FMIN, MEL_FMAX = 0.0, 8000.0  # full band at 16 kHz, as MelGAN's Audio2Mel (fmin 0, fmax = sr / 2)
LOG_MEL_FLOOR = 1e-5  # MelGAN's clamp before log10
# [choice] fixed affine map of log10-mel to about [-1, 1]: the floor log10(1e-5) = -5 maps to -1 and
# log10 = 1 (about 6 dB above a full-scale sine's mel peak) maps to +1. Stored with every checkpoint.
LOG_MEL_MIN, LOG_MEL_MAX = -5.0, 1.0

_MEL_BASIS: dict = {}


def mel_basis(device=None, dtype=torch.float32) -> torch.Tensor:
    """librosa's Slaney mel filterbank, (M, N_FFT // 2 + 1), cached per device and dtype."""
    key = (str(device), dtype)
    if key not in _MEL_BASIS:
        import librosa
        fb = librosa.filters.mel(sr=SAMPLE_RATE, n_fft=N_FFT, n_mels=N_MELS, fmin=MEL_FMIN, fmax=MEL_FMAX)
        with torch.inference_mode(False):  # a normal tensor even when first asked for in inference mode: autograd
            _MEL_BASIS[key] = torch.from_numpy(fb).to(device=device, dtype=dtype)  # may use it later
    return _MEL_BASIS[key]


def _hann(device, dtype):
    return torch.hann_window(N_FFT, periodic=True, device=device, dtype=dtype)  # = scipy 'hann', librosa's


def mel_magnitude(wav: torch.Tensor) -> torch.Tensor:
    """Magnitude mel spectrogram (B, L) -> (B, M, L // HOP), MelGAN's front end: reflect-pad
    (N_FFT - HOP) / 2 on both sides, then an STFT with center=False."""
    assert wav.ndim == 2, f"waveform must be (B, L), got {tuple(wav.shape)}"
    pad = (N_FFT - HOP) // 2
    x = F.pad(wav.float().unsqueeze(1), (pad, pad), mode="reflect").squeeze(1)  # (B, L + 256)
    spec = torch.stft(x, N_FFT, HOP, N_FFT, _hann(x.device, x.dtype), center=False, return_complex=True)
    return mel_basis(x.device) @ spec.abs()  # (B, M, T)


def normalize_log_mel(log_mel: torch.Tensor) -> torch.Tensor:
    return 2 * (log_mel - LOG_MEL_MIN) / (LOG_MEL_MAX - LOG_MEL_MIN) - 1


def denormalize_log_mel(mel: torch.Tensor) -> torch.Tensor:
    return (mel + 1) / 2 * (LOG_MEL_MAX - LOG_MEL_MIN) + LOG_MEL_MIN


def wav_to_mel(wav: torch.Tensor) -> torch.Tensor:
    """Normalised log-mel (B, L) -> (B, M, T), T = L // 256, values in about [-1, 1] (the docstring's n)."""
    return normalize_log_mel(torch.log10(mel_magnitude(wav).clamp(min=LOG_MEL_FLOOR)))


def mel_to_wav(mel: torch.Tensor, n_iter: int = 32, generator: torch.Generator | None = None) -> torch.Tensor:
    """Griffin-Lim inverse of `wav_to_mel` (B, M, T) -> (B, 256·T): mel -> linear magnitude by
    non-negative least squares through the filterbank's pseudo-inverse, then `n_iter` Griffin-Lim
    iterations (Griffin & Lim 1984). Frame j of the front end is centred on sample 256·j + 128, so the
    iterations run on the signal advanced by 128 samples with torch's centred STFT."""
    assert mel.ndim == 3 and mel.shape[1] == N_MELS, f"mel must be (B, {N_MELS}, T), got {tuple(mel.shape)}"
    B, _, T = mel.shape
    mag_mel = 10 ** denormalize_log_mel(mel.float())  # (B, M, T)
    fb = mel_basis(mel.device)
    mag = (torch.linalg.pinv(fb) @ mag_mel).clamp(min=0)  # (B, N_FFT // 2 + 1, T)
    mag = torch.cat([mag, mag[..., -1:]], dim=-1)  # (B, N_FFT // 2 + 1, T + 1): centred STFT of 256·T samples
    L = HOP * T
    window = _hann(mel.device, torch.float32)
    phase = torch.rand(mag.shape, generator=generator, device="cpu").to(mel.device) * 2 * math.pi
    spec = mag * torch.exp(1j * phase)
    for _ in range(n_iter):
        z = torch.istft(spec, N_FFT, HOP, N_FFT, window, center=True, length=L)  # (B, L)
        rebuilt = torch.stft(z, N_FFT, HOP, N_FFT, window, center=True, return_complex=True)
        spec = mag * torch.exp(1j * rebuilt.angle())
    z = torch.istft(spec, N_FFT, HOP, N_FFT, window, center=True, length=L)  # (B, L), z[t] = wav[t + 128]
    shift = (N_FFT - HOP) // 2
    return F.pad(z, (shift, -shift))  # (B, L), at the level the mel describes: generate.py sets the output level


PEAK_DBFS = -1.0  # the loudest a generated waveform may be: louder ones are scaled down whole, never clipped


def limit_peak(wav: torch.Tensor, peak_dbfs: float = PEAK_DBFS) -> torch.Tensor:
    """(B, L) with each example whose peak exceeds `peak_dbfs` scaled down to it (quieter ones unchanged)."""
    limit = 10 ** (peak_dbfs / 20)
    peak = wav.abs().amax(dim=-1, keepdim=True)  # (B, 1)
    return wav * torch.where(peak > limit, limit / peak.clamp(min=limit), torch.ones_like(peak))
