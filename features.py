"""The feature networks of the metrics (CMMD §3.1), written here and loaded strictly from their published
weights: I3D for FVD/KVD and VGGish for FAD. What is computed from their features is metrics.py's.

- I3D (Carreira & Zisserman 2017, Fig. 3: Inception-v1 inflated to 3-D), the RGB Kinetics-400 network of
  FVD (Unterthiner et al. 2018): 224×224 frames in [-1, 1], TF "SAME" padding; the feature is the 400-d
  logits averaged over time; needs >= 9 frames. Weights: shared/weights/i3d-kinetics400 (`--i3d PATH`).
- VGGish (Hershey et al. 2017), an `AudioEmbedder`: the TF reference's 64-band log-mel, 0.96 s windows, the
  128-d output of the last linear layer (no ReLU, no PCA). Weights: torchvggish's vggish-10086976.pth
  (`--vggish PATH`, or `VGGISH_URL` via the torch hub cache).
CLAP (the paper's choice, CMMD ref. [5]) is not implemented: its weights cannot be fetched here; it would be
an `AudioEmbedder` subclass. Every loading problem is a one-line checkpoint.CheckpointError naming the file.

Every setting, and what CLAP needs: docs/evaluation.md.
"""
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

import checkpoint
import media

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


def load_i3d(path=I3D_DEFAULT_PATH, device="cpu") -> I3D:
    """I3D in eval mode with the Kinetics-400 weights of shared/weights/i3d-kinetics400 (strict load)."""
    path = Path(path)
    if not path.is_file():
        raise checkpoint.CheckpointError(f"{path}: I3D weights not found (need {I3D_WEIGHTS} from "
                                         f"shared/weights/i3d-kinetics400; pass --i3d PATH)")
    state = checkpoint.torch_load(path, "Kinetics-400 I3D state dict")
    return checkpoint.load_strict(I3D(), state, "", path, "the I3D Kinetics-400 network").eval().to(device)


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
        return self.embed(media.resample(wav, sample_rate, self.sample_rate))


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
            raise checkpoint.CheckpointError(f"{path}: VGGish weights not found (download {VGGISH_URL} and pass "
                                             f"--vggish PATH)")
    else:
        path = Path(torch.hub.get_dir()) / "checkpoints" / VGGISH_URL.rsplit("/", 1)[1]
        try:
            state = torch.hub.load_state_dict_from_url(VGGISH_URL, map_location="cpu", progress=False)
        except Exception as e:  # no network, proxy, HTTP error: all end the same way for the user
            raise checkpoint.CheckpointError(f"cannot download VGGish weights {VGGISH_URL} ({type(e).__name__}); "
                                             f"place the file at {path} or pass --vggish PATH") from None
    state = state if state is not None else checkpoint.torch_load(path, "torchvggish VGGish state dict")
    return checkpoint.load_strict(VGGish(cfg), state, "", path, "the torchvggish VGGish network").eval().to(device)

