"""Audio-visual alignment scores (CMMD §3.1 "Temporal Alignment"), every setting stated, and the paired
bootstrap that compares two systems on the same clips.

- beat hit rate: librosa.beat.beat_track (16 kHz, hop 256) on generated and ground-truth audio; the fraction
  of ground-truth beats with a generated beat within ±100 ms (and ±500 ms, which the paper reports but does
  not trust), pooled over all pairs.
- onset P/R/F1: librosa.onset.onset_detect (16 kHz, hop 256, no backtracking) on generated audio against the
  stored event times, one-to-one matching at ±100 ms, counts pooled over clips:
      P = matched / n_est,   R = matched / n_ref,   F1 = 2·matched / (n_est + n_ref).
- visual onsets (audio-to-video): peaks of the motion envelope e_i = mean |x_{i+1} − x_i| of consecutive
  frames; a peak between frames i−1 and i is an event at i / fps. Scored like audio onsets.
Tolerance edges are inclusive (EDGE_SLACK). Audio is resampled to 16 kHz first (media.resample).

Every librosa setting, the matching and the peak picking: docs/evaluation.md.
"""
import math
from typing import NamedTuple

import numpy as np
import torch

import media
import melspec

ALIGN_SAMPLE_RATE = melspec.SAMPLE_RATE  # Hz: beat and onset detection run at the model's rate
ALIGN_HOP = melspec.HOP  # samples (16 ms): librosa's default 512 would be 32 ms at 16 kHz
BEAT_TOLERANCES = (0.1, 0.5)  # s, CMMD §3.1 (±100 ms proposed, ±500 ms reported "not suggested")
ONSET_TOLERANCE = 0.1  # s, the same perceptual synchronicity threshold (CMMD §3.1, [51])
EDGE_SLACK = 1e-9  # s, makes the tolerance edge inclusive despite float round-off
VISUAL_PEAK_PICK = dict(pre_max=1, post_max=2, pre_avg=2, post_avg=3, delta=0.1, wait=1)  # frames


def _times(x) -> np.ndarray:
    """Event times as a float64 vector; NaN entries (synthetic.py pads event lists with NaN) are dropped."""
    x = np.asarray(x.cpu() if torch.is_tensor(x) else x, dtype=np.float64).ravel()
    return x[~np.isnan(x)]


def _within(distance, tolerance):
    return distance <= tolerance + EDGE_SLACK  # inclusive edge, see EDGE_SLACK


def hit_count(reference_times, estimated_times, tolerance: float) -> int:
    """How many reference times have at least one estimated time within ±tolerance (inclusive)."""
    ref, est = _times(reference_times), np.sort(_times(estimated_times))
    if ref.size == 0 or est.size == 0:
        return 0
    i = np.clip(np.searchsorted(est, ref), 1, est.size - 1) if est.size > 1 else np.zeros(ref.size, int)
    nearest = np.minimum(np.abs(est[i] - ref), np.abs(est[np.maximum(i - 1, 0)] - ref))  # (R,)
    return int(_within(nearest, tolerance).sum())


def hit_rate(reference_times, estimated_times, tolerance: float) -> float:
    """Fraction of reference times with an estimated time within ±tolerance (inclusive); NaN if no reference."""
    n = _times(reference_times).size
    return hit_count(reference_times, estimated_times, tolerance) / n if n else math.nan


def match_count(reference_times, estimated_times, tolerance: float) -> int:
    """Size of a maximum one-to-one matching of times within ±tolerance (inclusive). Greedy in time order
    is optimal here: all windows have the same width, so their starts and ends are in the same order."""
    ref, est = np.sort(_times(reference_times)), np.sort(_times(estimated_times))
    i = j = matched = 0
    while i < ref.size and j < est.size:
        if est[j] < ref[i] and not _within(ref[i] - est[j], tolerance):
            j += 1  # too early for this reference and for every later one
        elif est[j] > ref[i] and not _within(est[j] - ref[i], tolerance):
            i += 1  # no estimate left for this reference
        else:
            matched, i, j = matched + 1, i + 1, j + 1
    return matched


class PRF(NamedTuple):
    precision: float  # matched / estimated (NaN with no estimates)
    recall: float  # matched / reference (NaN with no reference)
    f1: float  # 2·matched / (estimated + reference) (NaN with neither)
    matched: int
    n_ref: int
    n_est: int


def prf_from_counts(matched: int, n_ref: int, n_est: int) -> PRF:
    div = lambda a, b: a / b if b else math.nan  # noqa: E731
    return PRF(div(matched, n_est), div(matched, n_ref), div(2 * matched, n_ref + n_est), matched, n_ref, n_est)


def onset_prf(reference_times, estimated_times, tolerance: float = ONSET_TOLERANCE) -> PRF:
    """Precision, recall, F1 of event times under a one-to-one matching within ±tolerance (inclusive)."""
    n_ref, n_est = _times(reference_times).size, _times(estimated_times).size
    return prf_from_counts(match_count(reference_times, estimated_times, tolerance), n_ref, n_est)


def _at_align_rate(wav, sample_rate: int) -> np.ndarray:
    wav = np.asarray(wav.cpu() if torch.is_tensor(wav) else wav, dtype=np.float64)
    return media.resample(wav, sample_rate, ALIGN_SAMPLE_RATE)


def beat_times(wav, sample_rate: int = ALIGN_SAMPLE_RATE) -> np.ndarray:
    """Beat times (s) by librosa.beat.beat_track at 16 kHz, hop 256, other settings librosa's defaults."""
    import librosa
    _, beats = librosa.beat.beat_track(y=_at_align_rate(wav, sample_rate), sr=ALIGN_SAMPLE_RATE,
                                       hop_length=ALIGN_HOP, units="time")
    return np.asarray(beats, np.float64)


def audio_onsets(wav, sample_rate: int = ALIGN_SAMPLE_RATE) -> np.ndarray:
    """Onset times (s) by librosa.onset.onset_detect at 16 kHz, hop 256, no backtracking, else defaults."""
    import librosa
    return np.asarray(librosa.onset.onset_detect(y=_at_align_rate(wav, sample_rate), sr=ALIGN_SAMPLE_RATE,
                                                 hop_length=ALIGN_HOP, backtrack=False, units="time"), np.float64)


def motion_envelope(video: torch.Tensor) -> np.ndarray:
    """uint8 (F, 3, H, W) -> (F − 1,) mean absolute difference of consecutive frames, pixels in [0, 1]."""
    assert video.ndim == 4 and video.shape[1] == 3, f"video must be (F, 3, H, W), got {tuple(video.shape)}"
    x = video.float() / 255.0
    return (x[1:] - x[:-1]).abs().mean(dim=(1, 2, 3)).double().numpy()  # entry i: change into frame i + 1


def visual_onsets(video: torch.Tensor, fps: float) -> np.ndarray:
    """Times (s) of motion peaks in uint8 (F, 3, H, W): a peak in the change into frame i is an event at i / fps."""
    import librosa
    env = motion_envelope(video)
    if env.size < 2 or env.max() - env.min() <= 0:
        return np.zeros(0)
    env = (env - env.min()) / (env.max() - env.min())  # normalised like librosa's onset envelope
    peaks = librosa.util.peak_pick(env, **VISUAL_PEAK_PICK)
    return (peaks + 1) / fps


def pooled_f1(rows: list[dict]) -> float:
    """F1 of the counts summed over clips (rows with "matched", "n_ref", "n_est"): 2·Σm / (Σref + Σest)."""
    m, r, e = (sum(x[k] for x in rows) for k in ("matched", "n_ref", "n_est"))
    return 2 * m / (r + e) if r + e else math.nan


def paired_bootstrap(rows_a: list[dict], rows_b: list[dict], stat=pooled_f1, n: int = 2000, seed: int = 0,
                     level: float = 0.95) -> tuple[float, float, float]:
    """stat(a) − stat(b) on the same clips, with a percentile bootstrap interval over clips (Efron &
    Tibshirani 1993): each resample draws clips with replacement and scores both on the same draw.
    Returns (difference, low, high)."""
    assert len(rows_a) == len(rows_b) > 0, "paired rows: the same clips on both sides"
    rng = np.random.default_rng(seed)
    diffs = []
    for _ in range(n):
        idx = rng.integers(0, len(rows_a), len(rows_a))
        diffs.append(stat([rows_a[i] for i in idx]) - stat([rows_b[i] for i in idx]))
    lo, hi = np.nanpercentile(diffs, [100 * (1 - level) / 2, 100 * (1 + level) / 2])
    return stat(rows_a) - stat(rows_b), float(lo), float(hi)


# Pooled scores as Σ numerator / Σ denominator over clips, so a bootstrap resample is a weighted sum.
RATIOS = {"f1": (lambda r: 2 * r["matched"], lambda r: r["n_ref"] + r["n_est"]),
          "hit": (lambda r: r["hits"], lambda r: r["n_ref"]),
          "beat": (lambda r: r.get("beat_hits", 0), lambda r: r.get("beats", 0)),
          "mel_l1": (lambda r: r["mel_l1"], lambda r: 1),
          "roughness": (lambda r: r["roughness"], lambda r: 1)}
Z_975, Z_80 = 1.959964, 0.841621  # standard normal quantiles: a two-sided 5 % test, 80 % power


def seed_clip_bootstrap(rows_a: list[list[dict]], rows_b: list[list[dict]], metric: str, n: int = 4000,
                        seed: int = 0, level: float = 0.95) -> dict:
    """Paired metric(a) − metric(b) pooled over seeds and clips, rows given per seed (clip i of a seed is the
    same clip, sampled with the same noise, on both sides), with a two-stage percentile bootstrap that respects
    the seeds (Davison & Hinkley 1997, §3.8): each resample draws the seeds with replacement, then, within each
    drawn seed, its clips with replacement, and scores both sides on that draw. Returns {"delta", "lo", "hi",
    "se" (the resamples' standard deviation), "mde" (the smallest difference a two-sided 5 % test detects with
    80 % power at that spread: (z₀.₉₇₅ + z₀.₈)·se), "n_seeds", "n_clips"}."""
    assert len(rows_a) == len(rows_b) > 0 and all(len(x) == len(y) > 0 for x, y in zip(rows_a, rows_b)), \
        "paired rows: the same seeds and clips on both sides"
    num, den = RATIOS[metric]
    per_seed = [np.array([[num(r), den(r)] for r in ra + rb], dtype=float).reshape(2, len(ra), 2)
                for ra, rb in zip(rows_a, rows_b)]  # per seed: (side, clip, num|den)
    rng = np.random.default_rng(seed)
    seeds = rng.multinomial(len(per_seed), [1 / len(per_seed)] * len(per_seed), size=n)  # (n, seeds): draws
    sums = np.zeros((n, 2, 2))  # (resample, side, num|den)
    for s, x in enumerate(per_seed):  # c draws of a seed's clips pooled = one multinomial of c·clips draws
        counts = np.stack([rng.multinomial(c * x.shape[1], [1 / x.shape[1]] * x.shape[1]) for c in seeds[:, s]])
        sums += np.einsum("bc,scd->bsd", counts, x)  # (n, side, num|den)
    with np.errstate(invalid="ignore", divide="ignore"):
        diffs = sums[:, 0, 0] / sums[:, 0, 1] - sums[:, 1, 0] / sums[:, 1, 1]
    total = sum(x.sum(axis=1) for x in per_seed)  # (side, num|den)
    lo, hi = np.nanpercentile(diffs, [100 * (1 - level) / 2, 100 * (1 + level) / 2])
    se = float(np.nanstd(diffs, ddof=1))
    return {"delta": float(total[0, 0] / total[0, 1] - total[1, 0] / total[1, 1]), "lo": float(lo), "hi": float(hi),
            "se": se, "mde": (Z_975 + Z_80) * se, "n_seeds": len(per_seed),
            "n_clips": sum(x.shape[1] for x in per_seed)}


def verdict(lo: float, hi: float, effect: float | None) -> str:
    """A claim that a difference is positive, judged by its 95 % interval: "held" (above zero), "not held"
    (below zero, or below the paper's `effect`, which it then excludes), else "inconclusive" (across zero and
    still admitting the paper's effect, or any positive one when the paper gives no figure)."""
    if lo > 0:
        return "held"
    if hi < 0 or (effect is not None and hi < effect):
        return "not held"
    return "inconclusive"


def roughness(video: torch.Tensor) -> float:
    """Mean absolute difference between horizontally and vertically neighbouring pixels of uint8
    (F, 3, H, W), in [0, 1]: low for a plain background with a few shapes, about 1/3 for uniform noise.
    It tells a rendered scene from noise, whatever the scene's timing."""
    x = video.float() / 255.0
    return 0.5 * ((x[..., 1:, :] - x[..., :-1, :]).abs().mean() + (x[..., 1:] - x[..., :-1]).abs().mean()).item()
