"""Evaluation: FVD, KVD, FAD and audio-visual alignment (CMMD §3.1, SPEC §9), every setting stated.

The MM-Diffusion evaluation could not be reproduced (its FAD scale was off by 10x, its audio was not
resampled to what the embedder expects). Here each number comes from a function with a test against a
reference or a closed form, and the settings below are all the settings there are.

Fréchet distance (Heusel et al. 2017), used by FVD and FAD:
    FD = ‖μ₁ − μ₂‖² + Tr(Σ₁ + Σ₂ − 2·(Σ₁^½ Σ₂ Σ₁^½)^½)
  μ, Σ: sample mean and covariance (ddof = 1) in float64. Tr((Σ₁^½ Σ₂ Σ₁^½)^½) = Tr((Σ₁Σ₂)^½) is computed
  from the eigenvalues of the symmetric PSD matrix Σ₁^½ Σ₂ Σ₁^½ (eigh; eigenvalues under the numerical
  rank cut λ_max·D·eps of numpy's matrix_rank count as 0), which stays real and stable where
  scipy.linalg.sqrtm(Σ₁Σ₂) can go complex on rank-deficient covariances (N < D, as with few clips).
  Values are raw squared distances: no ×1e4 or other scaling.

KVD (Bińkowski et al. 2018, "Demystifying MMD GANs", the KID estimator): unbiased MMD² with the
  polynomial kernel k(x, y) = (x·y/d + 1)³, averaged over `n_subsets` random subsets of
  m = min(subset_size, N_gen, N_ref) drawn without replacement from each set (defaults 100 and 1000,
  those of KID); reported as mean and std over subsets, raw (no ×10³ scaling).

FVD / KVD (Unterthiner et al. 2018) on I3D (Carreira & Zisserman 2017) Kinetics-400 logits:
  clips are read by data.read_av (10 fps, centre square crop, resized to `size` px: the "resolution of the
  evaluated frames" of CMMD Table 1), optionally cut to their first `frames` frames (I3D needs >= 9),
  resized to 224×224 with torch F.interpolate(mode="bilinear", antialias=True, align_corners=False) (from
  64 or 128 px this is an upsampling, where antialias changes nothing; it matters only for larger inputs),
  scaled to [-1, 1] by x/127.5 − 1, and fed to the RGB I3D (TF "SAME" padding, BatchNorm eps 1e-3, no
  dropout at test time). The feature is the 400-d logits averaged over the output time steps.
  Protocol (CMMD §3.1): the generated set is all generations (5 per test clip), the reference set the
  ground-truth test clips, one Fréchet distance / one KVD between the two sets.

FAD (Kilgour et al. 2019), per set and per sample (Gui et al. 2024, "Adapting Frechet Audio Distance for
  generative music evaluation", fadtk): an `AudioEmbedder` maps a waveform to (frames, D) embeddings; its
  `sample_rate`, `window` and `hop` are part of its definition, and audio is resampled to its rate with
  librosa.resample(res_type="soxr_hq") (the resampler data.read_av uses). Per set: FD between the pooled
  frames of all generated clips and the pooled frames of the reference set. Per sample: FD between one
  clip's own frame statistics and the reference set's (fadtk `score_individual`); it needs >= 2 frames
  per clip (VGGish: clips >= 1.92 s), else it is NaN.
  VGGish (Hershey et al. 2017), written here: 16 kHz; log-mel front end of the TF reference
  (mel_features.py: 25 ms periodic-Hann window, 10 ms hop, 512-point FFT magnitude, 64 HTK-mel bands
  125–7500 Hz with triangles linear in mel, log(mel + 0.01)); 96×64 patches = 0.96 s windows with a
  0.96 s hop (non-overlapping, as the reference); VGG conv 64-128-256×2-512×2, fc 4096-4096-128; the
  128-d output of the last linear layer, no final ReLU and no PCA/quantisation (the TF reference's
  `embedding` tensor and fadtk's default, `use_activation=False`, `use_pca=False`). Clips shorter than
  0.96 s are zero-padded to one window (fadtk pads to 1 s). Weights: torchvggish's vggish-10086976.pth
  (Apache-2.0), from `--vggish PATH` or its release URL `VGGISH_URL` via the torch hub cache.
  CLAP (the paper's choice; reference [5] of CMMD is Microsoft's CLAP) is not implemented here, because
  its weights and package cannot be fetched in this environment. What it needs, as fadtk runs it:
  - MS-CLAP 2023 (fadtk "clap-2023"): `pip install msclap`; weights CLAP_weights_2023.pth from the
    Hugging Face repo microsoft/msclap; 44.1 kHz mono; 7 s windows with a 1 s hop, the last ones
    zero-padded to 7 s; the 1024-d output of `clap.audio_encoder`.
  - LAION-CLAP (fadtk "clap-laion-audio" / "-music"): `pip install laion_clap`; weights
    630k-audioset-best.pt (HTSAT-tiny) or music_audioset_epoch_15_esc_90.14.pt (HTSAT-base) from the
    Hugging Face repo lukewys/laion_clap, `CLAP_Module(enable_fusion=False, amodel=...)`; 48 kHz mono,
    audio quantised to int16 and back; 10 s windows with a 1 s hop, zero-padded to 10 s; 512-d
    `get_audio_embedding_from_data`.
  Either is a subclass of `AudioEmbedder` with that sample_rate/window/hop and `embed`; nothing else
  here changes. A 3.6 s test clip gives 4 frames with either CLAP (one per 1 s hop start).

Alignment (CMMD §3.1 "Temporal Alignment"):
  - beat hit rate: librosa.beat.beat_track(y, sr=16000, hop_length=256, units="time"; librosa defaults
    otherwise: onset envelope of a 128-band mel spectrogram with n_fft 2048, start_bpm 120,
    tightness 100, trim=True) on generated and ground-truth audio; the hit rate is the fraction of
    ground-truth beats with at least one generated beat within ±tolerance (±100 ms, and ±500 ms which
    the paper reports but does not trust), pooled over all pairs (total hits / total ground-truth beats).
  - onset P/R/F1: librosa.onset.onset_detect(y, sr=16000, hop_length=256, backtrack=False,
    units="time"; librosa defaults otherwise) on generated audio against the stored event times, with a
    one-to-one matching at ±100 ms (greedy in time order, which is a maximum matching for equal
    tolerance windows); counts pooled over clips.
  - visual onsets (audio-to-video): the motion envelope is the mean absolute difference of consecutive
    frames (pixels in [0, 1]), normalised to [0, 1] like librosa's onset envelope, peaks picked with
    librosa.util.peak_pick(pre_max=1, post_max=2, pre_avg=2, post_avg=3, delta=0.1, wait=1); a peak in
    the difference between frames i−1 and i is an event at i / fps. Scored like audio onsets.
  Tolerance edges are inclusive: |t_est − t_ref| <= tolerance + 1e-9 s (the slack absorbs float round-off:
  1.1 − 1.0 > 0.1 in binary floating point).

Command line: `python metrics.py --gen DIR --ref DIR [--metrics fvd,kvd,fad,beat,onset] [--i3d PATH]
  [--vggish PATH] [--json OUT]`. Both folders hold .mp4 files. A generated file NAME_k.mp4 (k = 0, 1, ...,
  the k-th generation) or NAME.mp4 pairs with the reference NAME.mp4 (an exact stem match wins);
  pairing is needed by beat and onset, not by the set metrics. Onset ground truth is a sidecar JSON next
  to each reference clip, NAME.json = {"events": [seconds from the clip start, ...], "tempo": bpm}.
"""
from abc import ABC, abstractmethod
import argparse
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

# ----------------------------------------------------------------------------------------------------
# Constants, each with its source
I3D_SIZE = 224  # I3D input side, Carreira & Zisserman 2017 (Kinetics training crops)
I3D_MIN_FRAMES = 9  # fewer leave < 2 time steps before the (2, 7, 7) average pool (SOURCE.txt)
I3D_BN_EPS = 1e-3  # Sonnet BatchNorm default, DeepMind kinetics-i3d
I3D_WEIGHTS = "i3d_kinetics400_tfhub_piergiaj_layout.pt"  # shared/weights/i3d-kinetics400/SOURCE.txt
I3D_DEFAULT_PATH = Path(__file__).resolve().parent.parent / "shared" / "weights" / "i3d-kinetics400" / I3D_WEIGHTS

VGGISH_URL = "https://github.com/harritaylor/torchvggish/releases/download/v0.1/vggish-10086976.pth"  # hubconf.py
VGGISH_SAMPLE_RATE = 16000  # vggish_params.SAMPLE_RATE
VGGISH_STFT_WINDOW = 0.025  # s, vggish_params.STFT_WINDOW_LENGTH_SECONDS
VGGISH_STFT_HOP = 0.010  # s, vggish_params.STFT_HOP_LENGTH_SECONDS
VGGISH_MEL_BANDS = 64  # vggish_params.NUM_MEL_BINS
VGGISH_MEL_MIN_HZ, VGGISH_MEL_MAX_HZ = 125.0, 7500.0  # vggish_params.MEL_MIN_HZ / MEL_MAX_HZ
VGGISH_LOG_OFFSET = 0.01  # vggish_params.LOG_OFFSET
VGGISH_PATCH_FRAMES = 96  # 0.96 s of 10 ms frames, vggish_params.EXAMPLE_WINDOW_SECONDS
VGGISH_EMBEDDING = 128  # vggish_params.EMBEDDING_SIZE

ALIGN_SAMPLE_RATE = 16000  # Hz, data.SAMPLE_RATE: beat and onset detection run at the model's rate
ALIGN_HOP = 256  # samples (16 ms), data.HOP: librosa's default 512 would be 32 ms at 16 kHz
BEAT_TOLERANCES = (0.1, 0.5)  # s, CMMD §3.1 (±100 ms proposed, ±500 ms reported "not suggested")
ONSET_TOLERANCE = 0.1  # s, the same perceptual synchronicity threshold (CMMD §3.1, [51])
EDGE_SLACK = 1e-9  # s, makes the tolerance edge inclusive despite float round-off
VISUAL_PEAK_PICK = dict(pre_max=1, post_max=2, pre_avg=2, post_avg=3, delta=0.1, wait=1)  # frames

METRICS = ("fvd", "kvd", "fad", "beat", "onset")


class MetricsError(ValueError):
    """A missing file or an unusable input; the message is one line naming the file and what is wrong."""


# ----------------------------------------------------------------------------------------------------
# Fréchet distance
def feature_stats(feats) -> tuple[np.ndarray, np.ndarray]:
    """Mean (D,) and covariance (D, D) (ddof = 1) of features (N, D), in float64."""
    x = np.asarray(feats, dtype=np.float64)
    assert x.ndim == 2 and x.shape[0] >= 2, f"features must be (N >= 2, D), got {x.shape}"
    return x.mean(axis=0), np.cov(x, rowvar=False).reshape(x.shape[1], x.shape[1])


def _psd_eigh(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigen-decomposition of a symmetric PSD matrix, eigenvalues below its numerical rank cut to 0.

    The cut is numpy.linalg.matrix_rank's: λ < λ_max · D · eps is round-off. Left in, a square root
    would lift such ~1e-16 values to ~1e-8 each, which is what breaks FD(x, x) = 0 for N < D samples."""
    w, v = np.linalg.eigh((a + a.T) / 2)
    w = np.where(w > w.max(initial=0.0) * a.shape[0] * np.finfo(np.float64).eps, w, 0.0)
    return w, v


def sqrtm_psd(a: np.ndarray) -> np.ndarray:
    """Symmetric square root of a symmetric positive semi-definite matrix by eigen-decomposition."""
    w, v = _psd_eigh(a)
    return (v * np.sqrt(w)) @ v.T


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """‖μ₁ − μ₂‖² + Tr(Σ₁ + Σ₂ − 2 (Σ₁^½ Σ₂ Σ₁^½)^½), in float64 (Fréchet / Wasserstein-2 between Gaussians)."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    assert mu1.shape == mu2.shape and sigma1.shape == sigma2.shape == mu1.shape * 2, \
        f"statistics disagree: {mu1.shape} {sigma1.shape} vs {mu2.shape} {sigma2.shape}"
    s1_half = sqrtm_psd(sigma1)
    inner = s1_half @ sigma2 @ s1_half  # Σ₁^½ Σ₂ Σ₁^½: symmetric PSD, same eigenvalues as Σ₁Σ₂
    tr_covmean = np.sqrt(_psd_eigh(inner)[0]).sum()  # Tr((Σ₁Σ₂)^½)
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * tr_covmean)


def frechet_distance_features(x, y) -> float:
    """Fréchet distance between the Gaussians fitted to features x (N, D) and y (N', D)."""
    return frechet_distance(*feature_stats(x), *feature_stats(y))


# ----------------------------------------------------------------------------------------------------
# Kernel distance (KID / KVD)
@dataclass
class KVDConfig:
    n_subsets: int = 100  # KID defaults (Bińkowski et al. 2018; torch-fidelity)
    subset_size: int = 1000
    seed: int = 0  # subsets are drawn with numpy's default_rng(seed): the result is deterministic


def polynomial_mmd2(x, y) -> float:
    """Unbiased MMD² with k(a, b) = (a·b/d + 1)³ (Bińkowski et al. 2018, Eq. for KID)."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    m, n, d = x.shape[0], y.shape[0], x.shape[1]
    assert m >= 2 and n >= 2 and y.shape[1] == d, f"need (m >= 2, d) and (n >= 2, d), got {x.shape}, {y.shape}"
    k_xx = (x @ x.T / d + 1) ** 3  # (m, m)
    k_yy = (y @ y.T / d + 1) ** 3  # (n, n)
    k_xy = (x @ y.T / d + 1) ** 3  # (m, n)
    within_x = (k_xx.sum() - np.trace(k_xx)) / (m * (m - 1))  # i ≠ j terms only: the unbiased part
    within_y = (k_yy.sum() - np.trace(k_yy)) / (n * (n - 1))
    return float(within_x + within_y - 2 * k_xy.mean())


def kernel_distance(x, y, cfg: KVDConfig = KVDConfig()) -> tuple[float, float]:
    """KID/KVD: mean and std of `polynomial_mmd2` over random equal-size subsets of x (N, D) and y (N', D)."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    m = min(cfg.subset_size, x.shape[0], y.shape[0])
    rng = np.random.default_rng(cfg.seed)
    vals = [polynomial_mmd2(x[rng.choice(x.shape[0], m, replace=False)], y[rng.choice(y.shape[0], m, replace=False)])
            for _ in range(cfg.n_subsets)]
    return float(np.mean(vals)), float(np.std(vals))


# ----------------------------------------------------------------------------------------------------
# I3D: Inception-v1 inflated to 3-D (Carreira & Zisserman 2017, Fig. 3), the RGB Kinetics-400 network
def same_pad(x: torch.Tensor, kernel, stride, value: float = 0.0) -> torch.Tensor:
    """TensorFlow "SAME" padding of (B, C, F, H, W): output = ceil(input / stride), extra pad at the end."""
    pads = []
    for s, k, st in zip(x.shape[-3:], kernel, stride):
        total = max((math.ceil(s / st) - 1) * st + k - s, 0)
        pads.append((total // 2, total - total // 2))
    return F.pad(x, [p for pair in reversed(pads) for p in pair], value=value)  # F.pad lists the last dim first


class Unit3D(nn.Module):
    """Conv3d with SAME padding (no bias), BatchNorm (eps 1e-3), ReLU; the logits unit has bias, no BN/ReLU."""

    def __init__(self, c_in, c_out, kernel=(1, 1, 1), stride=(1, 1, 1), bn=True, relu=True):
        super().__init__()
        self.kernel, self.stride, self.relu = kernel, stride, relu
        self.conv3d = nn.Conv3d(c_in, c_out, kernel, stride, bias=not bn)
        self.bn = nn.BatchNorm3d(c_out, eps=I3D_BN_EPS) if bn else None

    def forward(self, x):
        x = self.conv3d(same_pad(x, self.kernel, self.stride))
        x = self.bn(x) if self.bn is not None else x
        return F.relu(x) if self.relu else x


class MaxPool3dSame(nn.Module):
    """Max pool with TF "SAME" padding; padded cells are -inf, i.e. ignored, as in TF."""

    def __init__(self, kernel, stride):
        super().__init__()
        self.kernel, self.stride = kernel, stride

    def forward(self, x):
        return F.max_pool3d(same_pad(x, self.kernel, self.stride, value=-math.inf), self.kernel, self.stride)


class Inception(nn.Module):
    """Mixed_*: four branches 1×1×1 | 1×1×1→3×3×3 | 1×1×1→3×3×3 | maxpool 3×3×3→1×1×1, concatenated."""

    def __init__(self, c_in, c):
        super().__init__()
        self.b0 = Unit3D(c_in, c[0])
        self.b1a, self.b1b = Unit3D(c_in, c[1]), Unit3D(c[1], c[2], (3, 3, 3))
        self.b2a, self.b2b = Unit3D(c_in, c[3]), Unit3D(c[3], c[4], (3, 3, 3))
        self.b3a, self.b3b = MaxPool3dSame((3, 3, 3), (1, 1, 1)), Unit3D(c_in, c[5])

    def forward(self, x):
        return torch.cat([self.b0(x), self.b1b(self.b1a(x)), self.b2b(self.b2a(x)), self.b3b(self.b3a(x))], dim=1)


# (name, module): names are those of the DeepMind graph and of piergiaj/pytorch-i3d (KEYS.txt)
def _i3d_layers():
    return [
        ("Conv3d_1a_7x7", Unit3D(3, 64, (7, 7, 7), (2, 2, 2))),
        ("MaxPool3d_2a_3x3", MaxPool3dSame((1, 3, 3), (1, 2, 2))),
        ("Conv3d_2b_1x1", Unit3D(64, 64)),
        ("Conv3d_2c_3x3", Unit3D(64, 192, (3, 3, 3))),
        ("MaxPool3d_3a_3x3", MaxPool3dSame((1, 3, 3), (1, 2, 2))),
        ("Mixed_3b", Inception(192, (64, 96, 128, 16, 32, 32))),
        ("Mixed_3c", Inception(256, (128, 128, 192, 32, 96, 64))),
        ("MaxPool3d_4a_3x3", MaxPool3dSame((3, 3, 3), (2, 2, 2))),
        ("Mixed_4b", Inception(480, (192, 96, 208, 16, 48, 64))),
        ("Mixed_4c", Inception(512, (160, 112, 224, 24, 64, 64))),
        ("Mixed_4d", Inception(512, (128, 128, 256, 24, 64, 64))),
        ("Mixed_4e", Inception(512, (112, 144, 288, 32, 64, 64))),
        ("Mixed_4f", Inception(528, (256, 160, 320, 32, 128, 128))),
        ("MaxPool3d_5a_2x2", MaxPool3dSame((2, 2, 2), (2, 2, 2))),
        ("Mixed_5b", Inception(832, (256, 160, 320, 32, 128, 128))),
        ("Mixed_5c", Inception(832, (384, 192, 384, 48, 128, 128))),
    ]


class I3D(nn.Module):
    """RGB I3D for Kinetics-400: (B, 3, F, 224, 224) in [-1, 1] -> logits (B, 400, F') (F' = 1 for F = 9..16)."""

    def __init__(self, num_classes: int = 400):
        super().__init__()
        self.names = []
        for name, module in _i3d_layers():
            self.add_module(name, module)
            self.names.append(name)
        self.logits = Unit3D(1024, num_classes, bn=False, relu=False)

    def pool5(self, x: torch.Tensor) -> torch.Tensor:
        """Average-pooled Mixed_5c: (B, 3, F, 224, 224) -> (B, 1024, F', 1, 1)."""
        assert x.ndim == 5 and x.shape[1] == 3, f"I3D input must be (B, 3, F, H, W), got {tuple(x.shape)}"
        assert x.shape[2] >= I3D_MIN_FRAMES, f"I3D needs >= {I3D_MIN_FRAMES} frames, got {x.shape[2]}"
        for name in self.names:
            x = getattr(self, name)(x)
        return F.avg_pool3d(x, (2, 7, 7), stride=1)  # VALID (B, 1024, F', 1, 1); dropout is identity at test

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits(self.pool5(x)).flatten(3).squeeze(3)  # (B, 400, F')

    def features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """{"logits": (B, 400) the FVD feature, "pool": (B, 1024)}, both averaged over the output time F'."""
        pool = self.pool5(x)  # (B, 1024, F', 1, 1)
        return {"logits": self.logits(pool).flatten(2).mean(2), "pool": pool.flatten(2).mean(2)}  # (B, 400), (B, 1024)


def _load_strict(model: nn.Module, path, state=None, what="") -> nn.Module:
    """Load a state dict (from `path` unless given) into `model` with strict=True, or stop with one line."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True) if state is None else state
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:  # missing/unexpected keys or shape mismatches: name the first
        raise MetricsError(f"{path}: not {what} ({str(e).splitlines()[-1].strip()})") from None
    except Exception as e:  # not a torch file, or not a dict
        raise MetricsError(f"{path}: not {what} ({type(e).__name__})") from None
    return model


def load_i3d(path=I3D_DEFAULT_PATH, device="cpu") -> I3D:
    """I3D in eval mode with the Kinetics-400 weights of shared/weights/i3d-kinetics400 (strict load)."""
    path = Path(path)
    if not path.is_file():
        raise MetricsError(f"{path}: I3D weights not found (need {I3D_WEIGHTS} from "
                           f"shared/weights/i3d-kinetics400; pass --i3d PATH)")
    return _load_strict(I3D(), path, what="an I3D Kinetics-400 state dict").eval().to(device)


def i3d_preprocess(video: torch.Tensor) -> torch.Tensor:
    """uint8 (B, F, 3, H, W) -> float (B, 3, F, 224, 224) in [-1, 1]: bilinear antialiased resize, x/127.5 − 1."""
    assert video.ndim == 5 and video.shape[2] == 3, f"video must be (B, F, 3, H, W), got {tuple(video.shape)}"
    b, f = video.shape[:2]
    x = video.flatten(0, 1).float()  # (B·F, 3, H, W) in [0, 255]
    x = F.interpolate(x, size=(I3D_SIZE, I3D_SIZE), mode="bilinear", antialias=True, align_corners=False)
    x = x / 127.5 - 1.0  # [-1, 1], the range of the TF-Hub I3D
    return x.view(b, f, 3, I3D_SIZE, I3D_SIZE).transpose(1, 2)  # (B, 3, F, 224, 224)


@torch.no_grad()
def i3d_logits(model: I3D, video: torch.Tensor) -> torch.Tensor:
    """The FVD feature: uint8 (B, F, 3, H, W) -> (B, 400) float64 logits, averaged over output time."""
    device = next(model.parameters()).device
    return model.features(i3d_preprocess(video.to(device)))["logits"].double().cpu()


# ----------------------------------------------------------------------------------------------------
# Audio embedders for FAD
def resample(wav, sr_in: int, sr_out: int) -> np.ndarray:
    """(L,) at sr_in -> (L',) at sr_out, librosa.resample(res_type="soxr_hq") as data.read_av; float64."""
    wav = np.asarray(wav, dtype=np.float64)
    if sr_in == sr_out:
        return wav
    import librosa
    return librosa.resample(wav, orig_sr=sr_in, target_sr=sr_out, res_type="soxr_hq")


class AudioEmbedder(ABC):
    """What FAD needs from an audio model; `sample_rate` (Hz), `window` and `hop` (s) are part of it."""
    name: str
    sample_rate: int
    window: float  # seconds of audio per embedding frame
    hop: float  # seconds between consecutive embedding frames
    dim: int

    @abstractmethod
    def embed(self, wav: np.ndarray) -> torch.Tensor:
        """(L,) waveform at `self.sample_rate` -> (frames, D) embeddings."""

    def embed_at(self, wav, sample_rate: int) -> torch.Tensor:
        """(L,) waveform at `sample_rate` -> (frames, D): resampled to the embedder's rate first."""
        wav = np.asarray(wav.cpu() if torch.is_tensor(wav) else wav, dtype=np.float64)
        assert wav.ndim == 1, f"waveform must be (L,), got {wav.shape}"
        return self.embed(resample(wav, sample_rate, self.sample_rate))


def _hertz_to_mel(hz):
    return 1127.0 * np.log(1.0 + np.asarray(hz) / 700.0)  # HTK mel scale, mel_features.hertz_to_mel


def vggish_mel_matrix(n_fft_bins: int = 257) -> np.ndarray:
    """(257, 64) triangles linear in HTK mel between 125 and 7500 Hz, DC row zeroed (mel_features.py)."""
    bins_mel = _hertz_to_mel(np.linspace(0.0, VGGISH_SAMPLE_RATE / 2, n_fft_bins))
    edges = np.linspace(_hertz_to_mel(VGGISH_MEL_MIN_HZ), _hertz_to_mel(VGGISH_MEL_MAX_HZ), VGGISH_MEL_BANDS + 2)
    lower, center, upper = edges[:-2], edges[1:-1], edges[2:]  # (64,) each
    rising = (bins_mel[:, None] - lower) / (center - lower)  # (257, 64)
    falling = (upper - bins_mel[:, None]) / (upper - center)
    weights = np.maximum(0.0, np.minimum(rising, falling))
    weights[0, :] = 0.0  # the reference drops the DC bin
    return weights


def vggish_log_mel(wav: torch.Tensor) -> torch.Tensor:
    """(L,) at 16 kHz -> (n, 64) log-mel, n = 1 + (L − 400) // 160, float64 as the numpy reference."""
    win = round(VGGISH_SAMPLE_RATE * VGGISH_STFT_WINDOW)  # 400 samples
    hop = round(VGGISH_SAMPLE_RATE * VGGISH_STFT_HOP)  # 160 samples
    n_fft = 2 ** math.ceil(math.log2(win))  # 512
    frames = wav.double().unfold(0, win, hop)  # (n, 400), no padding as mel_features.frame
    window = torch.hann_window(win, periodic=True, dtype=torch.float64, device=wav.device)
    spec = torch.fft.rfft(frames * window, n=n_fft).abs()  # (n, 257) magnitude
    mel = spec @ torch.from_numpy(vggish_mel_matrix(n_fft // 2 + 1)).to(wav.device)  # (n, 64)
    return torch.log(mel + VGGISH_LOG_OFFSET)


@dataclass
class VGGishConfig:
    hop: float = 0.96  # s between patches (vggish_params.EXAMPLE_HOP_SECONDS); smaller overlaps them


class VGGish(nn.Module, AudioEmbedder):
    """VGGish (Hershey et al. 2017): 0.96 s log-mel patches (96, 64) -> 128-d; torchvggish key layout."""
    name = "vggish"
    sample_rate = VGGISH_SAMPLE_RATE
    window = VGGISH_PATCH_FRAMES * VGGISH_STFT_HOP  # 0.96 s
    dim = VGGISH_EMBEDDING

    def __init__(self, cfg: VGGishConfig = VGGishConfig()):
        super().__init__()
        self.cfg, self.hop = cfg, cfg.hop
        layers, c_in = [], 1
        for v in (64, "M", 128, "M", 256, 256, "M", 512, 512, "M"):  # VGG configuration "A" slimmed, Hershey et al.
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(c_in, v, 3, padding=1), nn.ReLU()]
                c_in = v
        self.features = nn.Sequential(*layers)
        self.embeddings = nn.Sequential(nn.Linear(512 * 6 * 4, 4096), nn.ReLU(), nn.Linear(4096, 4096), nn.ReLU(),
                                        nn.Linear(4096, VGGISH_EMBEDDING))  # no final ReLU: the TF `embedding`

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        """(N, 1, 96, 64) log-mel patches (time × mel) -> (N, 128)."""
        x = self.features(patches)  # (N, 512, 6, 4)
        x = x.permute(0, 2, 3, 1).flatten(1)  # (N, 6·4·512) in TF's NHWC order
        return self.embeddings(x)

    def patches(self, wav: np.ndarray) -> torch.Tensor:
        """(L,) at 16 kHz -> (frames, 1, 96, 64); shorter than one window is zero-padded to one."""
        device = next(self.parameters()).device
        wav = torch.as_tensor(np.asarray(wav, dtype=np.float64), device=device)
        need = round(VGGISH_SAMPLE_RATE * VGGISH_STFT_WINDOW) + (VGGISH_PATCH_FRAMES - 1) * round(
            VGGISH_SAMPLE_RATE * VGGISH_STFT_HOP)  # 15 600 samples make 96 log-mel frames
        wav = F.pad(wav, (0, max(need - wav.shape[0], 0)))
        log_mel = vggish_log_mel(wav)  # (n, 64)
        step = max(round(self.hop / VGGISH_STFT_HOP), 1)
        return log_mel.unfold(0, VGGISH_PATCH_FRAMES, step).transpose(1, 2)[:, None].float()  # (frames, 1, 96, 64)

    @torch.no_grad()
    def embed(self, wav: np.ndarray) -> torch.Tensor:
        return self(self.patches(wav)).double().cpu()  # (frames, 128)


def load_vggish(path=None, cfg: VGGishConfig = VGGishConfig(), device="cpu") -> VGGish:
    """VGGish with torchvggish's weights from `path`, or from VGGISH_URL via the torch hub cache (strict)."""
    state = None
    if path:
        path = Path(path)
        if not path.is_file():
            raise MetricsError(f"{path}: VGGish weights not found (download {VGGISH_URL} and pass --vggish PATH)")
    else:
        path = Path(torch.hub.get_dir()) / "checkpoints" / VGGISH_URL.rsplit("/", 1)[1]
        try:
            state = torch.hub.load_state_dict_from_url(VGGISH_URL, map_location="cpu", progress=False)
        except Exception as e:  # no network, proxy, HTTP error: all end the same way for the user
            raise MetricsError(f"cannot download VGGish weights {VGGISH_URL} ({type(e).__name__}); place the "
                               f"file at {path} or pass --vggish PATH") from None
    return _load_strict(VGGish(cfg), path, state, what="a torchvggish VGGish state dict").eval().to(device)


# ----------------------------------------------------------------------------------------------------
# FAD, per set and per sample
def fad(gen_embeds: list, ref_embeds: list) -> float:
    """Per-set FAD: Fréchet distance between the pooled frames of two lists of (frames, D) embeddings."""
    return frechet_distance_features(torch.cat(list(gen_embeds)).numpy(), torch.cat(list(ref_embeds)).numpy())


def fad_per_sample(gen_embeds: list, ref_embeds: list) -> list[float]:
    """Per-sample FAD (Gui et al. 2024): each clip's own frame statistics against the reference set's; NaN
    for a clip with fewer than 2 frames (no covariance)."""
    mu_ref, sigma_ref = feature_stats(torch.cat(list(ref_embeds)).numpy())
    return [frechet_distance(*feature_stats(e.numpy()), mu_ref, sigma_ref) if e.shape[0] >= 2 else math.nan
            for e in gen_embeds]


# ----------------------------------------------------------------------------------------------------
# Alignment: beats, onsets, visual events
def _times(x) -> np.ndarray:
    """Event times as a float64 vector; NaN entries (data.py pads event lists with NaN) are dropped."""
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
    return resample(wav, sample_rate, ALIGN_SAMPLE_RATE)


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


def roughness(video: torch.Tensor) -> float:
    """Mean absolute difference between horizontally and vertically neighbouring pixels of uint8
    (F, 3, H, W), in [0, 1]: low for a plain background with a few shapes, about 1/3 for uniform noise.
    It tells a rendered scene from noise, whatever the scene's timing."""
    x = video.float() / 255.0
    return 0.5 * ((x[..., 1:, :] - x[..., :-1, :]).abs().mean() + (x[..., 1:] - x[..., :-1]).abs().mean()).item()


# ----------------------------------------------------------------------------------------------------
# Folders of mp4s -> every metric
@dataclass
class EvalConfig:
    gen: str = ""  # folder of generated .mp4 (NAME.mp4 or NAME_k.mp4)
    ref: str = ""  # folder of reference .mp4 (+ NAME.json sidecars for onset)
    metrics: str = ",".join(METRICS)
    i3d: str = str(I3D_DEFAULT_PATH)
    vggish: str = ""  # empty: VGGISH_URL through the torch hub cache
    size: int = 64  # px, frames are compared at this resolution (CMMD Table 1 uses 64 and 128)
    frames: int = 0  # first frames (and their audio) of each clip, for every metric (0: all; Table 1: 16-36)
    fps: int = 10  # data.FPS
    batch_size: int = 4  # clips per I3D forward
    kvd: KVDConfig = field(default_factory=KVDConfig)
    vggish_cfg: VGGishConfig = field(default_factory=VGGishConfig)
    json: str = ""
    device: str = "cuda" if torch.cuda.is_available() else "cpu"


def list_mp4(folder) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise MetricsError(f"{folder}: not a folder")
    files = sorted(folder.glob("*.mp4"))
    if not files:
        raise MetricsError(f"{folder}: no .mp4 files")
    return files


def pair_files(gen: list[Path], ref: list[Path]) -> dict[Path, Path | None]:
    """gen NAME.mp4 or NAME_k.mp4 (k an integer) -> ref NAME.mp4; an exact stem match wins; None if none."""
    by_stem = {r.stem: r for r in ref}
    pairs = {}
    for g in gen:
        base, _, k = g.stem.rpartition("_")
        pairs[g] = by_stem.get(g.stem) or (by_stem.get(base) if base and k.isdigit() else None)
    return pairs


def read_events(ref_mp4: Path) -> np.ndarray:
    """Event times (s) from the sidecar NAME.json {"events": [...], "tempo": bpm} next to NAME.mp4."""
    side = ref_mp4.with_suffix(".json")
    if not side.is_file():
        raise MetricsError(f"{side}: onset ground truth missing (want {{\"events\": [s, ...], \"tempo\": bpm}})")
    try:
        return np.asarray(json.loads(side.read_text())["events"], np.float64)
    except (ValueError, KeyError, TypeError) as e:
        raise MetricsError(f"{side}: not a {{\"events\": [...]}} JSON ({type(e).__name__})") from None


def streams_needed(wanted: set) -> tuple[bool, bool]:
    """(video, audio): the streams `scan` reads for these wants."""
    return bool(wanted & {"fvd", "kvd", "visual"}), bool(wanted & {"embed", "beats", "onsets"})


def scan(files: list[Path], cfg: EvalConfig, wanted: set, i3d=None, embedder=None, desc="") -> dict[Path, dict]:
    """Read each clip once and compute what the metrics need: {"i3d", "embed", "beats", "onsets", "visual"}."""
    import data
    from tqdm import tqdm
    need_video, need_audio = streams_needed(wanted)
    out, pending = {}, []

    def flush():
        if pending:
            feats = i3d_logits(i3d, torch.stack([v for _, v in pending]))  # (b, 400)
            for (p, _), f in zip(pending, feats):
                out[p]["i3d"] = f
            pending.clear()

    for path in tqdm(files, desc=desc, unit="clip"):
        av = data.read_av(path, size=cfg.size, frames=cfg.frames or None, fps=cfg.fps,
                          sample_rate=data.SAMPLE_RATE, need_video=need_video, need_audio=need_audio)
        rec = out[path] = {}
        if "embed" in wanted:
            rec["embed"] = embedder.embed_at(av.audio, data.SAMPLE_RATE)  # (frames, D)
        if "beats" in wanted:
            rec["beats"] = beat_times(av.audio, data.SAMPLE_RATE)
        if "onsets" in wanted:
            rec["onsets"] = audio_onsets(av.audio, data.SAMPLE_RATE)
        if "visual" in wanted:
            rec["visual"] = visual_onsets(av.video, cfg.fps)
        if need_video and wanted & {"fvd", "kvd"}:
            if av.video.shape[0] < I3D_MIN_FRAMES:
                raise MetricsError(f"{path}: {av.video.shape[0]} frames at {cfg.fps} fps; "
                                   f"I3D needs >= {I3D_MIN_FRAMES}")
            if pending and pending[0][1].shape != av.video.shape:
                flush()  # a batch holds clips of one shape
            pending.append((path, av.video))  # (F, 3, size, size)
            if len(pending) == cfg.batch_size:
                flush()
    flush()
    return out


def check_config(cfg: EvalConfig) -> list[str]:
    """Every setting's range and the device, before any file is read; returns the metrics asked for."""
    import cli
    metrics = [m.strip() for m in cfg.metrics.split(",") if m.strip()]
    bad = [m for m in metrics if m not in METRICS]
    if bad or not metrics:
        raise MetricsError(f"--metrics: {'unknown ' + ', '.join(bad) if bad else 'none given'} "
                           f"(choose from {','.join(METRICS)})")
    for flag, value, low in (("size", cfg.size, 1), ("frames", cfg.frames, 0), ("fps", cfg.fps, 1),
                             ("batch_size", cfg.batch_size, 1), ("kvd_subsets", cfg.kvd.n_subsets, 1),
                             ("kvd_subset_size", cfg.kvd.subset_size, 2)):  # the unbiased MMD² needs m >= 2
        cli.check_range(flag, value, low)
    cli.check_range("vggish_hop", cfg.vggish_cfg.hop, 0, above=True)
    if cfg.frames and {"fvd", "kvd"} & set(metrics) and cfg.frames < I3D_MIN_FRAMES:
        raise MetricsError(f"--frames {cfg.frames}: fvd and kvd need >= {I3D_MIN_FRAMES} (I3D)")
    cli.device(cfg.device)
    if cfg.json:
        if Path(cfg.json).is_dir():
            raise MetricsError(f"{cfg.json}: a directory (--json names the file to write)")
        cli.check_writable_dir(Path(cfg.json).parent, "--json")
    return metrics


def evaluate(cfg: EvalConfig, embedder: AudioEmbedder | None = None) -> dict:
    """Every requested metric from two folders of mp4s; returns {"settings", "results", "per_file"}."""
    import data
    metrics = check_config(cfg)
    gen_files, ref_files = list_mp4(cfg.gen), list_mp4(cfg.ref)
    pairs = pair_files(gen_files, ref_files)
    if {"beat", "onset"} & set(metrics):
        unpaired = [g for g, r in pairs.items() if r is None]
        if unpaired:
            raise MetricsError(f"{unpaired[0]}: no reference NAME.mp4 in {cfg.ref} for beat/onset "
                               f"(generated files are NAME.mp4 or NAME_k.mp4)")
    if {"fvd", "kvd", "fad"} & set(metrics) and min(len(gen_files), len(ref_files)) < 2:
        raise MetricsError(f"{cfg.gen} / {cfg.ref}: fvd, kvd and fad need >= 2 clips in each folder")
    events = {r: read_events(r) for r in set(pairs.values())} if "onset" in metrics else {}
    if cfg.frames:  # clips are cut to their first `frames` frames: events after that cannot be found
        events = {r: e[e < cfg.frames / cfg.fps] for r, e in events.items()}
    video_wants = {"fvd", "kvd"} & set(metrics)
    gen_wants = video_wants | ({"embed"} if "fad" in metrics else set()) | (
        {"beats"} if "beat" in metrics else set()) | ({"onsets", "visual"} if "onset" in metrics else set())
    ref_wants = video_wants | ({"embed"} if "fad" in metrics else set()) | ({"beats"} if "beat" in metrics else set())
    # Every file probed before a model loads, a truncated one included (by its packets, without decoding)
    for files, wanted in ((gen_files, gen_wants), (ref_files, ref_wants)):
        for f in files:
            info = data.probe(f, complete=True)
            for kind, needed in zip(("video", "audio"), streams_needed(wanted)):
                if needed and not info[kind]:
                    raise MetricsError(f"{f}: no {kind} stream (--metrics {','.join(metrics)} reads it)")

    i3d = load_i3d(cfg.i3d, cfg.device) if video_wants else None
    if "fad" in metrics and embedder is None:
        embedder = load_vggish(cfg.vggish, cfg.vggish_cfg, cfg.device)
    gen = scan(gen_files, cfg, gen_wants, i3d, embedder, desc="generated")
    ref = scan(ref_files, cfg, ref_wants, i3d, embedder, desc="reference")

    results, per_file = {"n_gen": len(gen_files), "n_ref": len(ref_files)}, {str(g): {} for g in gen_files}
    if video_wants:
        x = torch.stack([gen[g]["i3d"] for g in gen_files]).numpy()  # (N_gen, 400)
        y = torch.stack([ref[r]["i3d"] for r in ref_files]).numpy()  # (N_ref, 400)
        if "fvd" in metrics:
            results["fvd"] = frechet_distance_features(x, y)
        if "kvd" in metrics:
            results["kvd"], results["kvd_std"] = kernel_distance(x, y, cfg.kvd)
    if "fad" in metrics:
        gen_e, ref_e = [gen[g]["embed"] for g in gen_files], [ref[r]["embed"] for r in ref_files]
        results[f"fad_{embedder.name}"] = fad(gen_e, ref_e)
        per_sample = fad_per_sample(gen_e, ref_e)
        valid = [v for v in per_sample if not math.isnan(v)]  # clips with >= 2 embedding frames
        results[f"fad_{embedder.name}_per_sample_mean"] = float(np.mean(valid)) if valid else math.nan
        results[f"fad_{embedder.name}_per_sample_median"] = float(np.median(valid)) if valid else math.nan
        for g, v in zip(gen_files, per_sample):
            per_file[str(g)]["fad_per_sample"] = v
    if "beat" in metrics:
        n_ref_beats = sum(ref[pairs[g]]["beats"].size for g in gen_files)
        for tol in BEAT_TOLERANCES:
            hits = [hit_count(ref[pairs[g]]["beats"], gen[g]["beats"], tol) for g in gen_files]
            results[f"beat_hit_{round(tol * 1000)}ms"] = sum(hits) / n_ref_beats if n_ref_beats else math.nan
            for g, h in zip(gen_files, hits):
                per_file[str(g)][f"beat_hit_{round(tol * 1000)}ms"] = h / max(ref[pairs[g]]["beats"].size, 1)
    if "onset" in metrics:
        for kind in ("onsets", "visual"):
            prfs = [onset_prf(events[pairs[g]], gen[g][kind]) for g in gen_files]
            total = prf_from_counts(*(sum(getattr(p, k) for p in prfs) for k in ("matched", "n_ref", "n_est")))
            name = "onset_audio" if kind == "onsets" else "onset_visual"
            results.update({f"{name}_{k}": getattr(total, k) for k in ("precision", "recall", "f1")})
            for g, p in zip(gen_files, prfs):
                per_file[str(g)][name] = p._asdict()
    settings = {**asdict(cfg), "metrics": metrics, "i3d_resize": "bilinear antialias 224x224, x/127.5-1",
                "embedder": {"name": embedder.name, "sample_rate": embedder.sample_rate, "window": embedder.window,
                             "hop": embedder.hop} if embedder else None,
                "beat": {"sr": ALIGN_SAMPLE_RATE, "hop": ALIGN_HOP, "tolerances": BEAT_TOLERANCES},
                "onset": {"sr": ALIGN_SAMPLE_RATE, "hop": ALIGN_HOP, "tolerance": ONSET_TOLERANCE,
                          "visual_peak_pick": VISUAL_PEAK_PICK}, "edge_slack": EDGE_SLACK}
    return {"settings": settings, "results": results, "per_file": per_file}


def markdown_table(results: dict) -> str:
    rows = ["| metric | value |", "|---|---|"]
    for k, v in results.items():
        rows.append(f"| {k} | {v:.4g} |" if isinstance(v, float) else f"| {k} | {v} |")
    return "\n".join(rows)


def main(argv=None):
    d = EvalConfig()
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--gen", required=True, help="folder of generated .mp4 (NAME.mp4 or NAME_k.mp4)")
    p.add_argument("--ref", required=True, help="folder of reference .mp4, with NAME.json sidecars for onset")
    p.add_argument("--metrics", default=d.metrics, help=f"comma-separated subset of {','.join(METRICS)}")
    p.add_argument("--i3d", default=d.i3d, help=f"I3D Kinetics-400 weights ({I3D_WEIGHTS})")
    p.add_argument("--vggish", default=d.vggish, help=f"VGGish weights (empty: download {VGGISH_URL})")
    p.add_argument("--vggish-hop", type=float, default=d.vggish_cfg.hop, help="seconds between VGGish windows")
    p.add_argument("--size", type=int, default=d.size, help="frame resolution compared (Table 1: 64, 128)")
    p.add_argument("--frames", type=int, default=d.frames, help="first N frames of each clip (0: all)")
    p.add_argument("--fps", type=int, default=d.fps, help="frame rate clips are read at")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="clips per I3D forward")
    p.add_argument("--kvd-subsets", type=int, default=d.kvd.n_subsets, help="KVD random subsets")
    p.add_argument("--kvd-subset-size", type=int, default=d.kvd.subset_size, help="KVD subset size (capped by N)")
    p.add_argument("--seed", type=int, default=d.kvd.seed, help="seed of the KVD subsets")
    p.add_argument("--json", default=d.json, help="write settings, results and per-file scores here")
    p.add_argument("--device", default=d.device, help="torch device for I3D and VGGish")
    a = p.parse_args(argv)
    cfg = EvalConfig(gen=a.gen, ref=a.ref, metrics=a.metrics, i3d=a.i3d, vggish=a.vggish, size=a.size,
                     frames=a.frames, fps=a.fps, batch_size=a.batch_size, json=a.json, device=a.device,
                     kvd=KVDConfig(a.kvd_subsets, a.kvd_subset_size, a.seed), vggish_cfg=VGGishConfig(a.vggish_hop))
    import cli
    return cli.run(report, cfg)


def report(cfg: EvalConfig) -> dict:
    """evaluate, then the table on stdout and, with --json, the whole report written atomically."""
    import checkpoint
    result = evaluate(cfg)
    print(markdown_table(result["results"]))
    if cfg.json:
        checkpoint.write_text(cfg.json, json.dumps(result, indent=2, default=float))
    return result


if __name__ == "__main__":
    main()
