"""The MM-Diffusion baseline's network: coupled video-audio U-Net with random-shift multi-modal attention
(Ruan et al. 2023, MM-Diffusion §3.2–3.4, Fig. 3, Eq. 7–12; the baseline of CMMD's Table 3).

ε-prediction (Eq. 7) with DDPM's linear β schedule over 1000 steps (§4.1): `diffusion_config()`; the diffusion
maths is diffusion.py's. Zero-shot conditional generation (§3.4) is sampling.py's: replacement (λ = 0, Eq. 11) or
gradient guidance (λ > 0, Eq. 12, as the official code runs it: `eq12_guidance`, below).
Model call convention (unet.UNet's, checked by unet.check_inputs): model({"video": (B, F, 3, H, W) pixels
in [-1, 1], "audio": (B, 1, L) waveform}, n (B,)) -> {"video": ε̂ᵥ, "audio": ε̂ₐ} of the same shapes.
Written anew at the released AIST++/Landscape flags of the official code (researchmm/MM-Diffusion): two U-Nets,
video 2-D + 1-D and audio dilated 1-D residual blocks sharing each block's timestep projection (the MM-Block,
Fig. 3b), joined by RS-MMA (Fig. 3c, Eq. 8–9); official behaviours that are bugs are not reproduced.
The released checkpoints of the official code convert into this network: mmdiffusion.py.

Design notes (architecture, RS-MMA as computed, windows and shifts, official bugs, presets): docs/networks.md.
"""
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

import sampling
from diffusion import DiffusionConfig
from modalities import MODALITIES, OTHER
from unet import check_inputs, timestep_embedding, zero_

OFFICIAL_PARAMS = 133.68e6  # MultimodalUNet at the released AIST++ flags (tests/test_mmdiffusion.py)


@dataclass
class MMDiffusionConfig:
    """Coupled U-Net hyper-parameters; the defaults are the official AIST++ model (multimodal_train.sh)."""
    frames: int = 16  # F of training/sampling clips (--video_size 16,3,64,64); the network takes any F
    image_size: int = 64  # H = W in pixels
    audio_samples: int = 25_600  # L: 1.6 s at 16 kHz (--audio_size 1,25600)
    video_channels: int = 3  # RGB pixels in [-1, 1]
    audio_channels: int = 1  # raw waveform
    base_channels: int = 128  # --num_channels
    channel_mult: tuple[int, ...] = (1, 2, 3, 4)  # the official default for 64 px
    num_res_blocks: int = 2  # --num_res_blocks
    attention_rates: tuple[int, ...] = (2, 4, 8)  # downsample rates with video self-attention
    audio_attention_rates: tuple[int, ...] = ()  # ... with audio self-attention (--audio_attention_resolutions -1)
    cross_rates: tuple[int, ...] = (2, 4, 8)  # downsample rates with RS-MMA (--cross_attention_resolutions)
    cross_windows: tuple[int, ...] = (1, 4, 8)  # RS-MMA window S in frames at each of cross_rates (§4.1)
    middle_rs_mma: bool = True  # [choice] full cross-attention in the middle block (official: iff windows 1, 4, 8)
    official_windows: bool = False  # [choice] RS-MMA windows cut as the official index arithmetic; False: the
    # paper's segments, which differ off the released shapes (docs/networks.md)
    head_channels: int = 64  # RS-MMA: heads = channels // 64 (--num_head_channels)
    self_attention_heads: int = 4  # video/audio self-attention heads at any width (official num_heads)
    scale_shift_norm: bool = True  # FiLM (1 + scale)·norm(h) + shift (--use_scale_shift_norm); False: norm(h + emb)
    audio_rate: int = 4  # audio down/upsampling factor per level (official Downsample/Upsample, 1-D)
    dilation_cycle: int = 10  # audio dilation 2^(k mod 10) (official max_dila)
    random_shift: bool = True  # draw R in training (--cross_attention_shift); False: R = 0 always
    shift_in_eval: bool = False  # [choice] official: True (R redrawn in sampling too); False: R = 0, for determinism
    dropout: float = 0.1  # [choice] --dropout of the released training flags (the code's default: 0)
    norm_groups: int = 32  # GroupNorm groups (improved-diffusion's normalization)

    def __post_init__(self):
        # JSON round trips give lists; keep tuples so configs compare equal.
        for name in ("channel_mult", "attention_rates", "audio_attention_rates", "cross_rates", "cross_windows"):
            setattr(self, name, tuple(getattr(self, name)))
        if self.head_channels < 1:  # the official num_head_channels=-1 (a fixed head count) has no equivalent
            raise ValueError(f"mmunet.py: head_channels must be positive, got {self.head_channels}")
        if len(self.cross_rates) != len(self.cross_windows):
            raise ValueError(f"mmunet.py: cross_rates {self.cross_rates} and cross_windows "
                             f"{self.cross_windows} differ in length")
        for mult in self.channel_mult:
            ch = self.base_channels * mult
            if ch % self.norm_groups or ch % self.head_channels or ch % self.self_attention_heads:
                raise ValueError(f"mmunet.py: {ch} channels not divisible by norm_groups {self.norm_groups}, "
                                 f"head_channels {self.head_channels} and self_attention_heads "
                                 f"{self.self_attention_heads}")

    @property
    def levels(self) -> int:
        return len(self.channel_mult)


PRESETS = {
    "official": {},  # the released AIST++/Landscape model (OFFICIAL_PARAMS); sizes: docs/networks.md
    # CPU study next to CMMD's "small" preset (unet.py), on the same 18-frame 64 px, 1.8 s clips (data.ClipConfig).
    "small": dict(frames=18, image_size=64, audio_samples=28_800, base_channels=32, num_res_blocks=1,
                  head_channels=32, self_attention_heads=1, dropout=0.0),
    # The study's MM-Diffusion arm: CMMD's "cpu" preset's parameter count (within 10 %) on CMMD's demo
    # representations (train.py --as-cmmd: the patch-2 codec's 12 × 8 × 8 frames, the 80 × 112 mel), two levels
    # as that preset has (experiments/study.py).
    "cpu": dict(base_channels=40, channel_mult=(1, 2), num_res_blocks=2, attention_rates=(2,), cross_rates=(1, 2),
                cross_windows=(1, 2), head_channels=40, self_attention_heads=1, dropout=0.0, norm_groups=8),
    # Unit tests: L = 260 leaves a remainder segment at the second level.
    "tiny": dict(frames=4, image_size=16, audio_samples=260, base_channels=16, channel_mult=(1, 2),
                 num_res_blocks=1, attention_rates=(2,), cross_rates=(1, 2), cross_windows=(1, 2),
                 head_channels=8, self_attention_heads=2, dropout=0.0, norm_groups=8),
}


def preset(name: str, **overrides) -> MMDiffusionConfig:
    """The named configuration ("official", "small", "tiny"), with fields overridden by keyword."""
    if name not in PRESETS:
        raise ValueError(f"mmunet.py: unknown preset {name!r}, choose one of {sorted(PRESETS)}")
    return MMDiffusionConfig(**{**PRESETS[name], **overrides})


def diffusion_config() -> DiffusionConfig:
    """The baseline's diffusion: ε-prediction, DDPM's linear β over 1000 steps (MM-Diffusion §3.1, §4.1)."""
    return DiffusionConfig(schedule="linear", prediction="eps", num_steps=1000)


# ---- zero-shot conditional generation (§3.4, Eq. 12) -------------------------------------------------------

def forward_error(known: sampling.Known, x_prev: dict, alpha_prev: float, sigma_prev: float) -> torch.Tensor:
    """‖xₙ₋₁ − q(xₙ₋₁|x₀)‖² averaged over each example's known elements, summed over the batch (MM-Diffusion
    Eq. 12 as its official code runs it)."""
    err = 0
    for k in known.x0:
        e = (x_prev[k] - (alpha_prev * known.x0[k] + sigma_prev * known.noise[k])).pow(2)
        if k in known.mask:
            m = known.mask[k].expand_as(e).flatten(1)
            err = err + (e.flatten(1) * m).sum(1).div(m.sum(1).clamp(min=1)).sum()
        else:
            err = err + e.flatten(1).mean(1).sum()
    return err


def eq12_guidance(denoise: sampling.Denoiser, p: sampling.Prediction, x_prev: dict, n_prev: int) -> dict:
    """MM-Diffusion's guidance (Eq. 12) as its official code runs it, after the solver's update:
    xₙ₋₁ −= λ·√ᾱₙ·∇_{xₙ} forward_error, with √ᾱ of the input's step and ∇ with respect to the input xₙ, where
    the paper prints √(1−ᾱ_t) and ∇ of the step it produces. Notes on the official code: docs/mmdiffusion.md."""
    error = forward_error(denoise.known, x_prev, *denoise.alpha_sigma(n_prev))
    found = sampling.grads(error, [p.x[k] for k in denoise.generated])
    alpha = denoise.alpha_sigma(p.n)[0]
    x_prev = dict(x_prev)
    for k, g in zip(denoise.generated, found):
        x_prev[k] = x_prev[k] - denoise.cfg.guidance * alpha * g  # x̃ = x − λ·√ᾱₙ·∇ (Eq. 12 as coded)
    return x_prev


sampling.AFTER_STEP["mmdiffusion"] = eq12_guidance


# ---- RS-MMA (§3.3, Eq. 8–9) -------------------------------------------------------------------------------

def segment_of(F_: int, L: int) -> torch.Tensor:
    """Segment (= frame) index (L,) of each audio position: F contiguous segments of ⌊L/F⌋, the remainder
    in the last one (§3.3 Step I)."""
    if L < F_:
        raise ValueError(f"mmunet.py: {L} audio positions cannot be cut into {F_} per-frame segments")
    return (torch.arange(L) // (L // F_)).clamp_(max=F_ - 1)


def window_units(F_: int, window: int, shift: int, repeat: bool = False) -> torch.Tensor:
    """Key units (G, S) of each query unit: (i+R), …, (i+R+S−1) mod F (§3.3 Step II). A window of F or more
    is full cross-attention: G = 1 group holding all F units, whatever the shift; with `repeat` (the
    official arithmetic) a window of S > F units keeps its S units mod F, repeats included."""
    if window == F_ or (window > F_ and not repeat):
        return torch.arange(F_)[None]  # (1, F)
    return (torch.arange(F_)[:, None] + shift + torch.arange(window)[None]) % F_  # (F, S)


def window_samples(F_: int, L: int, window: int, shift: int) -> torch.Tensor | None:
    """The official video→audio windows: frame i sees the S·⌊L/F⌋ consecutive audio positions from
    (i+R)·⌊L/F⌋, mod L (multimodal_unet.py, CrossAttentionBlock.attention_index), as (F, S·⌊L/F⌋); None
    where that is every position once (S = F and F | L), i.e. full cross-attention."""
    p = L // F_
    if window == F_ and L == F_ * p:
        return None
    return ((torch.arange(F_)[:, None] + shift) * p + torch.arange(window * p)[None]) % L  # (F, S·p)


def audio_grid(F_: int, L: int, device=None) -> tuple[torch.Tensor, int, torch.Tensor]:
    """Audio positions laid out per segment: (slot (L,) of each position in an (F, n_max) grid, n_max,
    valid (F·n_max,) bool of the slots that hold a position); n_max is the last (longest) segment."""
    p = L // F_
    seg = segment_of(F_, L).to(device)  # (L,)
    n_max = L - (F_ - 1) * p
    slot = seg * n_max + torch.arange(L, device=device) - seg * p  # (L,)
    valid = torch.zeros(F_ * n_max, dtype=torch.bool, device=device).index_fill_(0, slot, True)  # (F·n_max,)
    return slot, n_max, valid


def rs_mma_keys(F_: int, HW: int, L: int, window: int, shift: int, official: bool = False, device=None) -> dict:
    """The keys of each query group: {m: (index (G, K), valid (G, K) bool or None)}. Queries of modality m
    come in G groups (G = F: unit i's tokens; G = 1: all of them, full cross-attention); index points into
    the other modality's tokens, video (F·H·W) in (F, H, W) order, audio the (F·n_max) grid of `audio_grid`.
    `official`: the official windows (`window_units` with repeats, `window_samples`), see docs/networks.md."""
    slot, n_max, grid_valid = audio_grid(F_, L, device)
    units = window_units(F_, window, shift, repeat=official).to(device)  # (G, S)
    frame_tokens = (units[..., None] * HW + torch.arange(HW, device=device)).flatten(1)  # (G, S·H·W)
    keys = {"audio": (frame_tokens, None)}  # audio segment i → the H·W tokens of its window's frames
    samples = window_samples(F_, L, window, shift) if official else None
    if samples is not None:
        keys["video"] = (slot[samples.to(device)], None)  # (F, S·⌊L/F⌋) grid slots, every one a position
    else:
        grid = (units[..., None] * n_max + torch.arange(n_max, device=device)).flatten(1)  # (G, S·n_max)
        keys["video"] = (grid, None if n_max == L // F_ else grid_valid[grid])
    return keys


def rs_mma_mask(F_: int, L: int, window: int, shift: int) -> dict[str, torch.Tensor]:
    """RS-MMA as boolean (queries, keys) masks, True = attend: {"video": (F, L) frame i → audio positions,
    "audio": (L, F) audio position → frames}. Query unit i (frame i, or the segment holding the position)
    sees key units (i+R) … (i+R+S−1) mod F; the H·W tokens of a frame share its row/column."""
    i = torch.arange(F_)
    units = ((i[None] - i[:, None] - shift) % F_ < window) if window < F_ else torch.ones(F_, F_, dtype=torch.bool)
    seg = segment_of(F_, L)  # (L,)
    return {"video": units[:, seg], "audio": units[seg]}  # (F, L), (L, F)


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, mask=None) -> torch.Tensor:
    """Multi-head SDPA over (rows, Sq, C) queries and (rows, Sk, C) keys/values -> (rows, Sq, C); mask (rows or 1,
    Sk). rows: sequences attended separately; S: positions in each."""
    rows, Sq, C = q.shape
    q, k, v = (t.reshape(rows, -1, heads, C // heads).transpose(1, 2) for t in (q, k, v))  # (rows, heads, S, C/heads)
    if mask is not None:
        mask = mask[:, None, None, :]  # (rows or 1, 1, 1, Sk): broadcast over heads and queries
    y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (rows, heads, Sq, C/heads)
    return y.transpose(1, 2).reshape(rows, Sq, C)


def rs_mma_attention(q: dict, k: dict, v: dict, keys: dict, heads: int) -> dict:
    """Cross-attention of each modality's query groups to the other's keys of `rs_mma_keys` (Eq. 8).

    q, k, v[m]: (B, N_m, C) tokens, video (F·H·W) and audio in the padded (F·n_max) grid. Returns
    {m: (B, N_m, C)}; with the default windows it equals dense SDPA with `rs_mma_mask`
    (tests/test_mmdiffusion.py), with the official ones the official code (tests/test_mmdiffusion_official.py).
    """
    B, _, C = q["video"].shape
    out = {}
    for m in MODALITIES:
        o = OTHER[m]
        index, valid = keys[m]
        G, K = index.shape
        qm = q[m].reshape(B * G, -1, C)  # (B·G, N_m/G, C): the queries of each group
        ko, vo = (t[:, index.flatten()].reshape(B * G, K, C) for t in (k[o], v[o]))  # (B·G, K, C)
        mask = None if valid is None else valid.repeat(B, 1)  # (B·G, K)
        out[m] = attend(qm, ko, vo, heads, mask).reshape(B, -1, C)  # (B, N_m, C)
    return out


class RSMMA(nn.Module):
    """Random-shift multi-modal attention block (Fig. 3c): pure cross-attention between the paths, each with
    its own GroupNorm, q/k/v projection and zero-initialised output projection, plus residual."""

    def __init__(self, channels: int, window: int | None, cfg: MMDiffusionConfig):
        super().__init__()
        self.window = window  # None: the middle block's full cross-attention, never shifted
        # the official middle window is the configured clip length (video_size[0]), not the input's F
        self.full_window = cfg.frames if cfg.official_windows else None
        self.official = cfg.official_windows
        self.heads = channels // cfg.head_channels
        self.norm = nn.ModuleDict({m: nn.GroupNorm(cfg.norm_groups, channels) for m in MODALITIES})
        self.qkv = nn.ModuleDict({m: nn.Linear(channels, 3 * channels) for m in MODALITIES})
        self.proj = nn.ModuleDict({m: zero_(nn.Linear(channels, channels)) for m in MODALITIES})

    def forward(self, h: dict, shift: int) -> dict:
        v, a = h["video"], h["audio"]
        B, C, F_, H, W = v.shape
        L = a.shape[2]
        slot, n_max, _ = audio_grid(F_, L, a.device)
        window = self.window if self.window is not None else (self.full_window or F_)
        keys = rs_mma_keys(F_, H * W, L, window, shift, self.official, a.device)

        x = {m: self.norm[m](h[m]) for m in MODALITIES}
        x["video"] = x["video"].permute(0, 2, 3, 4, 1).reshape(B, F_ * H * W, C)  # (B, F·H·W, C)
        grid = x["audio"].new_zeros(B, F_ * n_max, C)
        x["audio"] = grid.index_copy_(1, slot, x["audio"].transpose(1, 2))  # (B, F·n_max, C)
        q, k, vv = {}, {}, {}
        for m in MODALITIES:
            q[m], k[m], vv[m] = self.qkv[m](x[m]).chunk(3, dim=-1)  # 3 × (B, N_m, C)
        y = rs_mma_attention(q, k, vv, keys, self.heads)
        y = {m: self.proj[m](y[m]) for m in MODALITIES}
        y_v = y["video"].view(B, F_, H, W, C).permute(0, 4, 1, 2, 3)  # (B, C, F, H, W)
        y_a = y["audio"].index_select(1, slot).transpose(1, 2)  # (B, C, L): the grid's padding dropped
        return {"video": v + y_v, "audio": a + y_a}


# ---- residual blocks and self-attention (improved-diffusion; MM-Block, Fig. 3b) ---------------------------

def conv3(modality: str, c_in: int, c_out: int, dilation: int = 1) -> nn.Module:
    """3-tap convolution: video 2-D 3×3 per frame then 1-D over frames (on (B, C, F, H, W)), audio dilated
    1-D (on (B, C, L))."""
    if modality == "video":
        return nn.Sequential(nn.Conv3d(c_in, c_out, (1, 3, 3), padding=(0, 1, 1)),
                             nn.Conv3d(c_out, c_out, (3, 1, 1), padding=(1, 0, 0)))
    return nn.Conv1d(c_in, c_out, 3, padding=dilation, dilation=dilation)


def conv1(modality: str, c_in: int, c_out: int) -> nn.Module:
    return nn.Conv3d(c_in, c_out, 1) if modality == "video" else nn.Conv1d(c_in, c_out, 1)


class Resample(nn.Module):
    """Video H, W by 2 (frames never), audio by `audio_rate`: average pooling down, nearest up."""

    def __init__(self, modality: str, down: bool, audio_rate: int):
        super().__init__()
        self.scale = (1, 2, 2) if modality == "video" else (audio_rate,)
        self.down = down

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.down:
            return F.avg_pool3d(x, self.scale) if x.ndim == 5 else F.avg_pool1d(x, self.scale)
        return F.interpolate(x, scale_factor=self.scale, mode="nearest")


class ResBlock(nn.Module):
    """One path's residual block, conditioned on the MM-Block's projection of the timestep embedding."""

    def __init__(self, modality: str, c_in: int, c_out: int, cfg: MMDiffusionConfig, dilation: int,
                 resample: str | None):
        super().__init__()
        self.scale_shift = cfg.scale_shift_norm
        self.in_layers = nn.Sequential(nn.GroupNorm(cfg.norm_groups, c_in), nn.SiLU(),
                                       conv3(modality, c_in, c_out, dilation))
        self.resample = nn.Identity() if resample is None else Resample(modality, resample == "down", cfg.audio_rate)
        self.out_norm = nn.GroupNorm(cfg.norm_groups, c_out)
        self.out_layers = nn.Sequential(nn.SiLU(), nn.Dropout(cfg.dropout), zero_(conv1(modality, c_out, c_out)))
        self.skip = nn.Identity() if c_in == c_out else conv1(modality, c_in, c_out)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """x (B, C_in, *S), emb (B, 2·C_out) with scale-shift norm, else (B, C_out)."""
        h = self.resample(self.in_layers(x))  # (B, C_out, *S) at the block's output resolution
        x = self.resample(x)
        emb = emb.view(*emb.shape, *[1] * (h.ndim - 2))  # (B, 2·C_out or C_out, 1, …)
        if self.scale_shift:
            scale, shift = emb.chunk(2, dim=1)  # 2 × (B, C_out, 1, …)
            h = self.out_norm(h) * (1 + scale) + shift  # scale-shift norm (FiLM, improved-diffusion)
        else:
            h = self.out_norm(h + emb)
        return self.skip(x) + self.out_layers(h)


class MMResBlock(nn.Module):
    """The residual part of an MM-Block: one ResBlock per path sharing one timestep projection."""

    def __init__(self, c_in: int, c_out: int, cfg: MMDiffusionConfig, dilation: int, resample: str | None = None):
        super().__init__()
        self.emb = nn.Sequential(nn.SiLU(), nn.Linear(cfg.base_channels, (2 if cfg.scale_shift_norm else 1) * c_out))
        self.res = nn.ModuleDict({m: ResBlock(m, c_in, c_out, cfg, dilation if m == "audio" else 1, resample)
                                  for m in MODALITIES})

    def forward(self, h: dict, emb: torch.Tensor) -> dict:
        e = self.emb(emb)  # (B, 2·C_out) or (B, C_out)
        return {m: self.res[m](h[m], e) for m in MODALITIES}


class SelfAttention(nn.Module):
    """Multi-head self-attention with a residual over sequences (N, C, L); zero-initialised output."""

    def __init__(self, channels: int, cfg: MMDiffusionConfig):
        super().__init__()
        self.heads = cfg.self_attention_heads
        self.norm = nn.GroupNorm(cfg.norm_groups, channels)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.proj = zero_(nn.Linear(channels, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(self.norm(x).transpose(1, 2)).chunk(3, dim=-1)  # 3 × (rows, S, C)
        return x + self.proj(attend(q, k, v, self.heads)).transpose(1, 2)  # (rows, C, S)


class PathAttention(nn.Module):
    """Self-attention of the given paths: video spatial (H·W per frame) then temporal (F per pixel);
    audio over L."""

    def __init__(self, channels: int, cfg: MMDiffusionConfig, modalities: tuple[str, ...]):
        super().__init__()
        axes = {"video": ("space", "frames"), "audio": ("time",)}
        self.attn = nn.ModuleDict({m: nn.ModuleDict({ax: SelfAttention(channels, cfg) for ax in axes[m]})
                                   for m in modalities})

    def forward(self, h: dict) -> dict:
        h = dict(h)
        if "video" in self.attn:
            B, C, F_, H, W = h["video"].shape
            s = h["video"].transpose(1, 2).reshape(B * F_, C, H * W)  # (B·F, C, H·W)
            s = self.attn["video"]["space"](s).view(B, F_, C, H, W)  # (B, F, C, H, W)
            t = s.permute(0, 3, 4, 2, 1).reshape(B * H * W, C, F_)  # (B·H·W, C, F)
            t = self.attn["video"]["frames"](t).view(B, H, W, C, F_)  # (B, H, W, C, F)
            h["video"] = t.permute(0, 3, 4, 1, 2)  # (B, C, F, H, W)
        if "audio" in self.attn:
            h["audio"] = self.attn["audio"]["time"](h["audio"])  # (B, C, L)
        return h


# ---- the coupled U-Net (Fig. 3a) --------------------------------------------------------------------------

class MMDiffusion(nn.Module):
    """Coupled U-Net: model({"video": (B, F, 3, H, W), "audio": (B, 1, L)}, n) -> ε̂ of the same shapes."""


    def __init__(self, cfg: MMDiffusionConfig):
        super().__init__()
        self.cfg = cfg
        self.shift_generator: torch.Generator | None = None  # None: torch's global CPU RNG
        base = cfg.base_channels
        in_channels = {"video": cfg.video_channels, "audio": cfg.audio_channels}
        self.time_embed = nn.Sequential(nn.Linear(base, base), nn.SiLU(), nn.Linear(base, base))
        ch = base * cfg.channel_mult[0]  # the official input width (model_channels · channel_mult[0])
        self.inp = nn.ModuleDict({m: conv3(m, in_channels[m], ch) for m in MODALITIES})

        def extras(ch: int, rate: int) -> list:
            """The attention layers after a residual block at this downsample rate."""
            paths = tuple(m for m, rates in (("video", cfg.attention_rates), ("audio", cfg.audio_attention_rates))
                          if rate in rates)
            layers = [PathAttention(ch, cfg, paths)] if paths else []
            if rate in cfg.cross_rates:
                layers.append(RSMMA(ch, cfg.cross_windows[cfg.cross_rates.index(rate)], cfg))
            return layers

        def dilation(k: int) -> int:
            return 2 ** (k % cfg.dilation_cycle)  # dilation doubling (§3.3), cycling as the official max_dila

        k, skips = 1, [ch]  # k: audio residual block counter (official `dilation`)
        self.encoder = nn.ModuleList()
        for level, mult in enumerate(cfg.channel_mult):
            for _ in range(cfg.num_res_blocks):
                self.encoder.append(nn.ModuleList([MMResBlock(ch, base * mult, cfg, dilation(k)),
                                                   *extras(base * mult, 2 ** level)]))
                k, ch = k + 1, base * mult
                skips.append(ch)
            if level < cfg.levels - 1:
                self.encoder.append(nn.ModuleList([MMResBlock(ch, ch, cfg, dilation(k), "down")]))
                k += 1
                skips.append(ch)

        self.middle = nn.ModuleList([MMResBlock(ch, ch, cfg, dilation(k)), PathAttention(ch, cfg, MODALITIES),
                                     *([RSMMA(ch, None, cfg)] if cfg.middle_rs_mma else []),
                                     MMResBlock(ch, ch, cfg, dilation(k)), PathAttention(ch, cfg, MODALITIES)])

        self.decoder = nn.ModuleList()
        k -= 1
        for level, mult in reversed(list(enumerate(cfg.channel_mult))):
            for i in range(cfg.num_res_blocks + 1):
                layers = [MMResBlock(ch + skips.pop(), base * mult, cfg, dilation(k)), *extras(base * mult, 2 ** level)]
                k, ch = k - 1, base * mult
                if level > 0 and i == cfg.num_res_blocks:
                    layers.append(MMResBlock(ch, ch, cfg, dilation(k), "up"))
                self.decoder.append(nn.ModuleList(layers))

        self.out = nn.ModuleDict({m: nn.Sequential(nn.GroupNorm(cfg.norm_groups, ch), nn.SiLU(),
                                                   zero_(nn.Conv3d(ch, in_channels[m], 3, padding=1) if m == "video"
                                                         else nn.Conv1d(ch, in_channels[m], 3, padding=1)))
                                  for m in MODALITIES})

    @property
    def diffusion_config(self) -> DiffusionConfig:
        return diffusion_config()

    def shapes(self, batch: int) -> dict[str, tuple]:
        """The configured clip shapes: {"video": (B, F, C, H, W), "audio": (B, 1, L)}."""
        c = self.cfg
        return {"video": (batch, c.frames, c.video_channels, c.image_size, c.image_size),
                "audio": (batch, c.audio_channels, c.audio_samples)}

    def draw_shift(self, window: int | None, frames: int) -> int:
        """R for one RS-MMA call; 0 for full cross-attention and in eval mode."""
        # [choice] R ∈ {0, …, F−S} per layer and call in training, from torch's RNG so torch.manual_seed repeats it
        # (official: Python's `random`, redrawn in sampling too, as shift_in_eval=True); docs/networks.md.
        cfg = self.cfg
        if window is None or window >= frames or not cfg.random_shift or not (self.training or cfg.shift_in_eval):
            return 0
        return int(torch.randint(0, frames - window + 1, (1,), generator=self.shift_generator))

    def _run(self, layers: nn.ModuleList, h: dict, emb: torch.Tensor) -> dict:
        for layer in layers:
            if isinstance(layer, MMResBlock):
                h = layer(h, emb)
            elif isinstance(layer, RSMMA):
                h = layer(h, self.draw_shift(layer.window, h["video"].shape[2]))
            else:
                h = layer(h)
        return h

    def forward(self, x: dict[str, torch.Tensor], n: torch.Tensor) -> dict[str, torch.Tensor]:
        cfg = self.cfg
        B, F_, H, W, L = check_inputs(x, n, cfg.video_channels, cfg.audio_channels)  # audio (B, 1, L): T = L
        v, a = x["video"], x["audio"]
        sv, sa = 2 ** (cfg.levels - 1), cfg.audio_rate ** (cfg.levels - 1)
        if H % sv or W % sv or L % sa or L // sa < F_:
            raise ValueError(f"mmunet.py: video {H}×{W} must be divisible by {sv} and audio length {L} by {sa}, "
                             f"with at least F={F_} samples left at the bottom ({L // sa})")

        emb = self.time_embed(timestep_embedding(n, cfg.base_channels))  # (B, base)
        h = {"video": v.transpose(1, 2), "audio": a}  # (B, C, F, H, W), (B, 1, L)
        h = {m: self.inp[m](h[m]) for m in MODALITIES}
        skips = [h]
        for layers in self.encoder:
            h = self._run(layers, h, emb)
            skips.append(h)
        h = self._run(self.middle, h, emb)
        for layers in self.decoder:
            s = skips.pop()
            h = self._run(layers, {m: torch.cat([h[m], s[m]], dim=1) for m in MODALITIES}, emb)
        out = {m: self.out[m](h[m]) for m in MODALITIES}
        return {"video": out["video"].transpose(1, 2).to(v.dtype),  # (B, F, C, H, W)
                "audio": out["audio"].to(a.dtype)}  # (B, 1, L)


def param_split(model: MMDiffusion) -> dict[str, int]:
    """Parameters of the video path, the audio path and the shared ones (timestep MLP and projections)."""
    split = {"video": 0, "audio": 0, "shared": 0}
    for name, p in model.named_parameters():
        parts = name.split(".")
        split[next((m for m in MODALITIES if m in parts), "shared")] += p.numel()
    return split

