"""Easy-fusion video-audio U-Net (CMMD App. B, Fig. 1, Fig. 6, Table 4, Eq. 7).

One network predicts both velocities, 𝐯_θ(vₙ, aₙ, n) (CMMD Eq. 2), with two U-Nets side by side:
- video path on latents (B, F, C, H, W): "2D+1D" residual blocks (a per-frame 3×3 conv, then a 3-tap conv
  over frames) with spatial and temporal self-attention; down/upsampling halves/doubles H and W, never F;
- audio path on log-mel (B, M, T), mel bins as channels: 1-D residual blocks over T with temporal
  self-attention; down/upsampling halves/doubles T.
Easy fusion (Fig. 6) joins them: audio → video by nearest-neighbour interpolation T → F repeated over H×W,
video → audio by an average pool over H×W and interpolation F → T, each concatenated on channels; the
self-attention after a fused block works on fused features, standing in for cross-attention (Eq. 7).
Blocks follow improved-diffusion (Nichol & Dhariwal 2021). The same weights take any F, T and H, W divisible
by 2^(levels − 1).

Design notes (building blocks, fusion points, lengths, size, widths per path, presets): docs/networks.md.
"""
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from modalities import MODALITIES, OTHER

TIME_EMBED_MULT = 4  # timestep MLP width = 4 · base channels (improved-diffusion)
MAX_PERIOD = 10_000  # sinusoidal embedding's longest period (Vaswani et al. 2017, improved-diffusion)
SDPA_MAX_BATCH = 2 ** 15  # CUDA flash/mem-efficient kernels fail for a batch ≥ 2**16 (pytorch#146704);
# temporal attention at 64×64 latents has B·4096 sequences
ATTENTION_AXES = {"video": ("space", "frames"), "audio": ("time",)}  # Fig. 1: spatial + temporal / temporal


@dataclass
class UNetConfig:
    """Easy-fusion U-Net hyper-parameters; the defaults are the paper's model (CMMD Table 4)."""
    video_channels: int = 4  # SD-VAE latent channels; 3 for a pixel-space model
    audio_channels: int = 80  # mel bins (CMMD §3); 1 for a raw waveform
    base_channels: int = 128  # Table 4
    audio_base_channels: int | None = None  # [choice] None: base_channels; the audio path's own width, which
    # must not be narrower than its 80 mel-bin input, or it samples noise (docs/networks.md, widths per path)
    channel_mult: tuple[int, ...] = (1, 2, 3, 4)  # Table 4; one resolution level each
    num_res_blocks: int = 1  # [choice] per encoder level (decoder: one more), near the paper's 106 M with 2D+1D
    # convs; docs/networks.md, size
    head_dim: int = 64  # Table 4: heads = channels // head_dim
    attention_levels: tuple[int, ...] = (0, 1, 2)  # [choice] levels (0 = full resolution) with attention,
    # besides the middle block, which always has it
    dropout: float = 0.0  # [choice] not given in the paper
    fusion: bool = True  # easy fusion (Fig. 6); False: independent paths, the same parameters
    conv_resample: bool = False  # [choice] True: a 3-tap conv as the strided downsampler and after nearest
    # upsampling; False: parameter-free average pooling and nearest upsampling (improved-diffusion's flag)
    time_embed_dim: int | None = None  # None: TIME_EMBED_MULT · base_channels
    norm_groups: int = 32  # GroupNorm groups (improved-diffusion)
    grad_checkpoint: bool = False  # recompute blocks in the backward pass to save memory

    def __post_init__(self):
        # JSON round trips give lists; keep tuples so configs compare equal.
        self.channel_mult = tuple(self.channel_mult)
        self.attention_levels = tuple(self.attention_levels)
        if self.time_embed_dim is None:
            self.time_embed_dim = TIME_EMBED_MULT * self.base_channels
        if self.audio_base_channels is None:
            self.audio_base_channels = self.base_channels
        levels = len(self.channel_mult)
        if not all(0 <= lv < levels for lv in self.attention_levels):
            raise ValueError(f"unet.py: attention_levels {self.attention_levels} outside 0..{levels - 1}")
        for level, mult in enumerate(self.channel_mult):
            for ch in (base * mult for base in self.width.values()):
                if ch % self.norm_groups:
                    raise ValueError(f"unet.py: {ch} channels not divisible by norm_groups {self.norm_groups}")
                if (level in self.attention_levels or level == levels - 1) and ch % self.head_dim:
                    raise ValueError(f"unet.py: {ch} attention channels not divisible by head_dim {self.head_dim}")

    @property
    def levels(self) -> int:
        return len(self.channel_mult)

    @property
    def width(self) -> dict[str, int]:
        """Each path's base width: {"video": base_channels, "audio": audio_base_channels}."""
        return {"video": self.base_channels, "audio": self.audio_base_channels}


PRESETS = {
    "paper": {},  # the paper's model, Table 4 (CMMD Table 3: 106 M parameters); sizes: docs/networks.md
    # The paper's topology, the video path at a quarter of the width, for CPU training on 8×8 latents.
    "small": dict(base_channels=32, audio_base_channels=96, head_dim=32, norm_groups=16),
    # The demo and unit tests: two levels, attention in the middle block only (attention at level 0 is costly
    # on a CPU), a video path of width 8, so most parameters are the cheap 1-D audio path.
    "tiny": dict(base_channels=8, audio_base_channels=96, channel_mult=(1, 2), head_dim=8, attention_levels=(),
                 norm_groups=8),
    # The demo's: the tiny topology for 16 px frames through the patch-2 pixel codec (vae.PixelCodec), whose
    # video path works on 8×8 positions of 12 values at width 16: twice tiny's video width, for a cheaper CPU step.
    "cpu": dict(base_channels=16, audio_base_channels=96, channel_mult=(1, 2), head_dim=16, attention_levels=(),
                norm_groups=8),
}


def preset(name: str, **overrides) -> UNetConfig:
    """The named configuration ("paper", "small", "tiny"), with fields overridden by keyword."""
    if name not in PRESETS:
        raise ValueError(f"unet.py: unknown preset {name!r}, choose one of {sorted(PRESETS)}")
    return UNetConfig(**{**PRESETS[name], **overrides})


def timestep_embedding(n: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding (B,) -> (B, dim) of the diffusion step n (improved-diffusion, cos then sin)."""
    half = dim // 2
    freqs = torch.exp(-math.log(MAX_PERIOD) * torch.arange(half, device=n.device, dtype=torch.float32) / half)
    args = n.float()[:, None] * freqs[None]  # (B, dim/2)
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)  # (B, 2·(dim/2))
    return F.pad(emb, (0, dim % 2))  # (B, dim)


def zero_(module: nn.Module) -> nn.Module:
    """Zero a module's parameters in place (improved-diffusion's zero_module) and return it."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


def conv(modality: str, c_in: int, c_out: int) -> nn.Module:
    """The path's 3-tap convolution: video 2D+1D (per-frame 3×3, then 3 over frames), audio 3 over T."""
    if modality == "video":  # on (B, C, F, H, W)
        # [choice] No nonlinearity between the two parts: a factorised 3×3×3 conv (docs/networks.md).
        return nn.Sequential(nn.Conv3d(c_in, c_out, (1, 3, 3), padding=(0, 1, 1)),
                             nn.Conv3d(c_out, c_out, (3, 1, 1), padding=(1, 0, 0)))
    return nn.Conv1d(c_in, c_out, 3, padding=1)  # on (B, C, T)


def pointwise(modality: str, c_in: int, c_out: int) -> nn.Module:
    """1×1 convolution (channel mixing only) for the path's layout."""
    return nn.Conv3d(c_in, c_out, 1) if modality == "video" else nn.Conv1d(c_in, c_out, 1)


def last_conv(module: nn.Module) -> nn.Module:
    """The final convolution of `conv(...)`'s output: the one to zero-initialise."""
    return module[-1] if isinstance(module, nn.Sequential) else module


class ResBlock(nn.Module):
    """improved-diffusion residual block with the path's convolution and an additive timestep embedding."""

    def __init__(self, modality: str, c_in: int, c_out: int, cfg: UNetConfig):
        super().__init__()
        self.in_layers = nn.Sequential(nn.GroupNorm(cfg.norm_groups, c_in), nn.SiLU(), conv(modality, c_in, c_out))
        self.emb = nn.Sequential(nn.SiLU(), nn.Linear(cfg.time_embed_dim, c_out))
        out_conv = conv(modality, c_out, c_out)
        zero_(last_conv(out_conv))  # the block starts as the identity (skip) map
        self.out_layers = nn.Sequential(nn.GroupNorm(cfg.norm_groups, c_out), nn.SiLU(), nn.Dropout(cfg.dropout),
                                        out_conv)
        self.skip = nn.Identity() if c_in == c_out else pointwise(modality, c_in, c_out)

    def forward(self, x: torch.Tensor, emb: torch.Tensor, broadcast: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, C, *S); `broadcast` (B, C_b, F), video only: more input channels after x's, constant over H×W
        (the audio that easy fusion repeats over the frame), used without materialising the repeat."""
        if broadcast is None:
            h = self.in_layers(x)  # (B, C_out, *S) with S = (F, H, W) or (T,)
            skip = self.skip(x)
        else:
            norm, act, (spatial, temporal) = self.in_layers
            x_n, b_n = broadcast_group_norm(norm, x, broadcast)
            h = temporal(broadcast_conv(spatial, act(x_n), act(b_n)))  # (B, C_out, F, H, W)
            if isinstance(self.skip, nn.Conv3d):
                skip = broadcast_conv(self.skip, x, broadcast)
            else:  # c_in = c_out: the identity on the concatenation, (B, C_in, F, H, W)
                skip = torch.cat([x, broadcast[..., None, None].expand(-1, -1, -1, *x.shape[3:])], 1)
        h = h + self.emb(emb).view(emb.shape[0], -1, *[1] * (h.ndim - 2))  # + (B, C_out, 1, ...)
        return skip + self.out_layers(h)


def broadcast_group_norm(norm: nn.GroupNorm, x: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """norm(cat(x, b repeated over H×W)) for x (B, C_x, F, H, W) and b (B, C_b, F), returned as its two parts
    (B, C_x, F, H, W) and (B, C_b, F): the repeated part stays constant over H×W, and each b value counts H·W
    times in its group's mean and variance. Equal to the materialised form up to float rounding."""
    B, Cx, F_, H, W = x.shape
    G, hw = norm.num_groups, H * W
    per_group = (Cx + b.shape[1]) // G
    count = per_group * F_ * hw  # elements per (sample, group)

    def group_sum(sx: torch.Tensor, sb: torch.Tensor) -> torch.Tensor:  # per-channel sums (B, C_x), (B, C_b)
        return torch.cat([sx, sb * hw], 1).view(B, G, per_group).sum(2).repeat_interleave(per_group, 1)  # (B, C)

    mean = group_sum(x.sum((2, 3, 4)), b.sum(2)) / count  # (B, C): each channel's group mean
    dx, db = x - mean[:, :Cx, None, None, None], b - mean[:, Cx:, None]
    var = group_sum(dx.square().sum((2, 3, 4)), db.square().sum(2)) / count  # (B, C), biased as GroupNorm's
    scale = torch.rsqrt(var + norm.eps) * norm.weight  # (B, C)
    return (dx * scale[:, :Cx, None, None, None] + norm.bias[:Cx, None, None, None],
            db * scale[:, Cx:, None] + norm.bias[Cx:, None])


def broadcast_conv(conv3d: nn.Conv3d, x: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """conv3d(cat(x, b repeated over H×W)) for a per-frame (1, k, k) convolution with stride 1 and zero
    padding, x (B, C_x, F, H, W), b (B, C_b, F) -> (B, C_out, F, H, W). A tap sees the constant b wherever it
    falls inside the frame, so b's part is one matrix product per tap (B, C_out, F, k·k) spread by a 0/1
    mask of where each tap is inside (k·k, H·W): about C_b·H·W/k² fewer operations than the full convolution."""
    assert conv3d.kernel_size[0] == 1 and conv3d.stride == (1, 1, 1), "a per-frame, stride-1 convolution"
    B, Cx, F_, H, W = x.shape
    w = conv3d.weight  # (C_out, C_x + C_b, 1, k, k)
    out = F.conv3d(x, w[:, :Cx], conv3d.bias, padding=conv3d.padding)  # (B, C_out, F, H, W)
    k, pad = conv3d.kernel_size[1:], conv3d.padding[1:]
    inside = F.unfold(x.new_ones(1, 1, H, W), k, padding=pad)[0]  # (k·k, H·W)
    per_tap = torch.einsum("ocj,bcf->bofj", w[:, Cx:, 0].flatten(2), b)  # (B, C_out, F, k·k)
    return out + (per_tap @ inside).view(B, -1, F_, H, W)  # (B, C_out, F, H, W)


class SelfAttention(nn.Module):
    """Multi-head self-attention with a residual over sequences (N, C, L): one module for spatial,
    temporal and audio attention, which differ only in how the caller folds axes into N and L."""

    def __init__(self, channels: int, cfg: UNetConfig):
        super().__init__()
        self.heads = channels // cfg.head_dim  # Table 4: heads = channels // attention dim
        self.norm = nn.GroupNorm(cfg.norm_groups, channels)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.proj = zero_(nn.Linear(channels, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows, C, S = x.shape  # rows: sequences attended separately; S: positions in each
        qkv = self.qkv(self.norm(x).transpose(1, 2))  # (rows, S, 3C)
        q, k, v = qkv.view(rows, S, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)  # 3 × (rows, heads, S, d)
        y = torch.cat([F.scaled_dot_product_attention(*qkv_chunk)  # (rows, heads, S, C/heads)
                       for qkv_chunk in zip(*(t.split(SDPA_MAX_BATCH) for t in (q, k, v)))])
        y = y.transpose(1, 2).reshape(rows, S, C)  # (rows, S, C)
        return x + self.proj(y).transpose(1, 2)  # (rows, C, S)


class AxisAttention(nn.Module):
    """SelfAttention along one axis: "space" (H·W per frame), "frames" (F per pixel) or "time" (T).
    As in MM-Diffusion, the GroupNorm statistics are those of each folded sequence (a frame, a pixel)."""

    def __init__(self, axis: str, channels: int, cfg: UNetConfig):
        super().__init__()
        self.axis = axis
        self.attn = SelfAttention(channels, cfg)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        if self.axis == "time":
            return self.attn(h)  # (B, C, T)
        B, C, F_, H, W = h.shape
        if self.axis == "space":
            s = h.transpose(1, 2).reshape(B * F_, C, H * W)  # (B·F, C, H·W)
            return self.attn(s).view(B, F_, C, H, W).transpose(1, 2)  # (B, C, F, H, W)
        s = h.permute(0, 3, 4, 1, 2).reshape(B * H * W, C, F_)  # (B·H·W, C, F)
        return self.attn(s).view(B, H, W, C, F_).permute(0, 3, 4, 1, 2)  # (B, C, F, H, W)


class Block(nn.Module):
    """One U-Net block of a path (Fig. 1): a residual block, then the path's self-attentions."""

    def __init__(self, modality: str, c_in: int, c_out: int, cfg: UNetConfig, attention: bool):
        super().__init__()
        self.res = ResBlock(modality, c_in, c_out, cfg)
        axes = ATTENTION_AXES[modality] if attention else ()
        self.attn = nn.ModuleList(AxisAttention(axis, c_out, cfg) for axis in axes)
        self.grad_checkpoint = cfg.grad_checkpoint

    def _forward(self, x: torch.Tensor, emb: torch.Tensor, broadcast: torch.Tensor | None = None) -> torch.Tensor:
        h = self.res(x, emb, broadcast)
        for attn in self.attn:
            h = attn(h)
        return h

    def forward(self, x: torch.Tensor, emb: torch.Tensor, broadcast: torch.Tensor | None = None) -> torch.Tensor:
        if self.grad_checkpoint and self.training and torch.is_grad_enabled():
            return checkpoint(self._forward, x, emb, broadcast, use_reentrant=False)
        return self._forward(x, emb, broadcast)


class Resample(nn.Module):
    """Halve (down) or double (up) H, W of video or T of audio; frames are never resampled (Table 4)."""

    def __init__(self, modality: str, channels: int, down: bool, use_conv: bool):
        super().__init__()
        self.down = down
        self.scale = (1, 2, 2) if modality == "video" else (2,)
        if not use_conv:
            pool = nn.AvgPool3d(self.scale) if modality == "video" else nn.AvgPool1d(2)
            self.op = pool if down else nn.Identity()
        elif modality == "video":
            self.op = nn.Conv3d(channels, channels, (1, 3, 3), stride=self.scale if down else 1, padding=(0, 1, 1))
        else:
            self.op = nn.Conv1d(channels, channels, 3, stride=2 if down else 1, padding=1)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        if not self.down:
            h = F.interpolate(h, scale_factor=self.scale, mode="nearest")  # (B, C, F, 2H, 2W) or (B, C, 2T)
        return self.op(h)


# [choice] Centre-aligned ("nearest-exact"): frame f reads the mel step nearest its centre, not the first one as
# torch's left-aligned legacy "nearest" would (docs/networks.md).
def nearest_index(n_out: int, scale: float, n_in: int, device: torch.device) -> torch.Tensor:
    """Centre-aligned nearest-neighbour source indices: ⌊(i + ½)·scale⌋ for i < n_out, clamped to n_in − 1."""
    i = torch.arange(n_out, dtype=torch.float64)
    return ((i + 0.5) * scale).floor().long().clamp_(0, n_in - 1).to(device)


def easy_fusion(h: dict[str, torch.Tensor], t_valid: float) -> dict[str, torch.Tensor]:
    """Each path's view of the other (Fig. 6): for video the audio interpolated T → F, (B, C, F), which the
    video block repeats over H×W (ResBlock's `broadcast`: the same result as concatenating the repeat, for a
    fraction of the cost); for audio (B, C, T) the video pooled over H×W and interpolated F → T. `t_valid` is
    the unpadded audio length at this level, so zero padding at the end does not stretch the time axis."""
    v, a = h["video"], h["audio"]
    F_, T_ = v.shape[2], a.shape[2]
    a2v = a.index_select(2, nearest_index(F_, t_valid / F_, T_, a.device))  # (B, C, F)
    v2a = v.mean(dim=(3, 4))  # (B, C, F)
    v2a = v2a.index_select(2, nearest_index(T_, F_ / t_valid, F_, v.device))  # (B, C, T)
    return {"video": a2v, "audio": v2a}


def check_inputs(x: dict[str, torch.Tensor], n: torch.Tensor, video_channels: int, audio_channels: int) -> tuple:
    """Assert the model call convention, {"video": (B, F, C, H, W), "audio": (B, M, T)} and n (B,); return
    (B, F, H, W, T)."""
    v, a = x["video"], x["audio"]
    assert v.ndim == 5 and v.shape[2] == video_channels, \
        f"video must be (B, F, {video_channels}, H, W), got {tuple(v.shape)}"
    assert a.ndim == 3 and a.shape[1] == audio_channels, f"audio must be (B, {audio_channels}, T), got {tuple(a.shape)}"
    B, F_, _, H, W = v.shape
    assert a.shape[0] == B and n.shape == (B,), f"batch sizes differ: video {B}, audio {a.shape[0]}, n {tuple(n.shape)}"
    return B, F_, H, W, a.shape[2]


def path_modules(make) -> nn.ModuleDict:
    """{"video": make("video"), "audio": make("audio")}: one module per path."""
    return nn.ModuleDict({m: make(m) for m in MODALITIES})


class UNet(nn.Module):
    """Two-path easy-fusion U-Net: model({"video": (B, F, C, H, W), "audio": (B, M, T)}, n) -> same shapes."""

    def __init__(self, cfg: UNetConfig):
        super().__init__()
        self.cfg = cfg
        base, levels = cfg.base_channels, cfg.levels
        in_channels = {"video": cfg.video_channels, "audio": cfg.audio_channels}
        self.time_embed = nn.Sequential(nn.Linear(base, cfg.time_embed_dim), nn.SiLU(),
                                        nn.Linear(cfg.time_embed_dim, cfg.time_embed_dim))
        self.inp = path_modules(lambda m: conv(m, in_channels[m], cfg.width[m]))

        # [choice] Fusion once per level and direction: into the first block of each encoder level, of the middle
        # block and of each decoder level (2·levels + 1 points); fusion=False feeds zeros (docs/networks.md).
        # ch: each path's current width; a fused block's input adds the other path's width.
        width = cfg.width
        ch = dict(width)
        skip_channels = [ch]
        self.down_blocks, self.downsample = nn.ModuleList(), nn.ModuleList()
        for level, mult in enumerate(cfg.channel_mult):
            blocks = nn.ModuleList()
            attention = level in cfg.attention_levels
            for i in range(cfg.num_res_blocks):
                # + the fused channels at a level's first block
                c_in = {m: ch[m] + (ch[OTHER[m]] if i == 0 else 0) for m in MODALITIES}
                blocks.append(path_modules(lambda m: Block(m, c_in[m], width[m] * mult, cfg, attention)))
                ch = {m: width[m] * mult for m in MODALITIES}
                skip_channels.append(ch)
            self.down_blocks.append(blocks)
            if level < levels - 1:
                self.downsample.append(path_modules(lambda m: Resample(m, ch[m], True, cfg.conv_resample)))
                skip_channels.append(ch)

        c_mid = {m: ch[m] + ch[OTHER[m]] for m in MODALITIES}
        self.mid = nn.ModuleList([path_modules(lambda m: Block(m, c_mid[m], ch[m], cfg, attention=True)),
                                  path_modules(lambda m: Block(m, ch[m], ch[m], cfg, attention=False))])

        self.up_blocks, self.upsample = nn.ModuleList(), nn.ModuleList()
        for level, mult in reversed(list(enumerate(cfg.channel_mult))):
            blocks = nn.ModuleList()
            attention = level in cfg.attention_levels
            for i in range(cfg.num_res_blocks + 1):
                skip = skip_channels.pop()
                c_in = {m: ch[m] + skip[m] + (ch[OTHER[m]] if i == 0 else 0) for m in MODALITIES}  # h, skip, fused
                blocks.append(path_modules(lambda m: Block(m, c_in[m], width[m] * mult, cfg, attention)))
                ch = {m: width[m] * mult for m in MODALITIES}
            self.up_blocks.append(blocks)
            if level > 0:
                self.upsample.append(path_modules(lambda m: Resample(m, ch[m], False, cfg.conv_resample)))

        self.out = path_modules(lambda m: nn.Sequential(nn.GroupNorm(cfg.norm_groups, ch[m]), nn.SiLU(),
                                                        conv(m, ch[m], in_channels[m])))
        for m in MODALITIES:
            # Only the last part of a 2D+1D conv: zeroing both would leave both with zero gradients forever.
            zero_(last_conv(self.out[m][-1]))

    def _step(self, blocks: nn.ModuleDict, h: dict, emb: torch.Tensor, t_valid: float, *,
              skip: dict | None = None, fuse: bool = False) -> dict:
        """Run one block per path on concat(h, skip, fused other path) along channels; the video's fused input,
        constant over H×W, goes to its block as `broadcast`."""
        inputs = {m: [h[m]] + ([skip[m]] if skip is not None else []) for m in MODALITIES}
        broadcast = dict.fromkeys(MODALITIES)
        if fuse:
            other = easy_fusion(h, t_valid) if self.cfg.fusion else {  # zeros shaped as the fused features
                m: h[m].new_zeros(h[m].shape[0], h[OTHER[m]].shape[1], h[m].shape[2]) for m in MODALITIES}
            broadcast["video"] = other["video"]  # (B, C_audio, F)
            inputs["audio"].append(other["audio"])  # (B, C_video, T)
        return {m: blocks[m](torch.cat(inputs[m], dim=1), emb, broadcast[m]) for m in MODALITIES}

    def forward(self, x: dict[str, torch.Tensor], n: torch.Tensor) -> dict[str, torch.Tensor]:
        cfg = self.cfg
        B, F_, H, W, T = check_inputs(x, n, cfg.video_channels, cfg.audio_channels)
        v, a = x["video"], x["audio"]
        stride = 2 ** (cfg.levels - 1)
        if H % stride or W % stride:
            raise ValueError(f"unet.py: video H×W {H}×{W} must be divisible by {stride} for {cfg.levels} levels")

        emb = self.time_embed(timestep_embedding(n, cfg.base_channels))  # (B, time_embed_dim)
        # [choice] T is zero-padded at the end and cropped back; fusion maps time through the unpadded T, and padded
        # steps are not masked in attention. F, H, W are never padded (docs/networks.md, lengths).
        h = {"video": v.transpose(1, 2),  # (B, C, F, H, W)
             "audio": F.pad(a, (0, -T % stride))}  # (B, M, T') with T' a multiple of stride
        h = {m: self.inp[m](h[m]) for m in MODALITIES}
        skips = [h]
        for level, blocks in enumerate(self.down_blocks):
            for i, block in enumerate(blocks):
                h = self._step(block, h, emb, T / 2 ** level, fuse=i == 0)
                skips.append(h)
            if level < cfg.levels - 1:
                h = {m: self.downsample[level][m](h[m]) for m in MODALITIES}  # H, W (video) or T halved
                skips.append(h)
        h = self._step(self.mid[0], h, emb, T / stride, fuse=True)
        h = self._step(self.mid[1], h, emb, T / stride)
        for k, blocks in enumerate(self.up_blocks):
            level = cfg.levels - 1 - k
            for i, block in enumerate(blocks):
                h = self._step(block, h, emb, T / 2 ** level, skip=skips.pop(), fuse=i == 0)
            if level > 0:
                h = {m: self.upsample[k][m](h[m]) for m in MODALITIES}  # H, W (video) or T doubled
        out = {m: self.out[m](h[m]) for m in MODALITIES}
        return {"video": out["video"].transpose(1, 2).to(v.dtype),  # (B, F, C, H, W)
                "audio": out["audio"][..., :T].to(a.dtype)}  # (B, M, T)
