"""Joint video-audio diffusion transformer, MM-LDM's DiT (Sun et al. 2024, Fig. 2) on CMMD's inputs.

One transformer predicts both velocities, 𝐯_θ(vₙ, aₙ, n) (CMMD Eq. 2): video (B, F, C, H, W) is cut into
patches of pf frames × p × p, the mel (B, M, T) into patches of a steps spanning all M bins; each token gets
its modality's learned embedding, and all tokens attend to each other jointly. DiT blocks with adaLN-Zero
(Peebles & Xie 2023, §3.2) take the step n; nothing is sized to a length: positions enter as rotary
embeddings (RoPE, Su et al. 2021) of each token's centre time in seconds, shared by both streams so a frame
and the mel around it sit at one time, and of its patch row and column. MM-LDM's conditional modes
(Fig. 2, "modification of inputs"): a clean known modality, patchified by its own embedder, is added to that
modality's tokens. With a text encoder (cfg.text; text.py), a caption's tokens join the sequence, as MM-LDM
puts its text tokens there, at the centre of the window's times and patch grid (none favoured) and with their own
type embedding; [choice] their
masked mean is also added to the step embedding that adaLN reads, a second, global path (as SD3 and PixArt
pool their text).

Shapes besides the README's: S tokens, D hidden width, P values per patch (pf·C·p² or M·a), F' and T' padded
up to whole patches, Fp, Hp, Wp and Tp the patch grid (F'/pf, H/p, W/p, T'/a); heads h of width d = D/h.
"""
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

import media
import melspec
import text
from modalities import MODALITIES
from unet import check_inputs, path_modules, timestep_embedding, zero_

TIME_FREQ_DIM = 256  # sinusoidal width of the step before its MLP (DiT's frequency_embedding_size)
LN_EPS = 1e-6  # DiT's LayerNorm epsilon
INIT_STD = 0.02  # DiT's normal init of the step MLP
MODALITY_EMBED_STD = 0.01  # MM-LDM's init of its modality embeddings
ROPE_BASE = 10_000  # Su et al. 2021: frequencies base^(-2i/d)
# [choice] RoPE positions per second of time: one per video frame at the data's 10 fps, so the fastest time
# frequency turns 1 rad per frame and the slowest, ROPE_BASE times slower, spans far beyond any clip.
ROPE_TIME_SCALE = 10.0


@dataclass
class DiTConfig:
    """DiT hyper-parameters; the defaults are MM-LDM's (configs/asit/aist_gen_v2.yaml: DiT-XL's width, depth,
    heads and MLP ratio); its patch sizes are for its own latents, ours are marked [choice]."""
    video_channels: int = 4  # SD-VAE latent channels; 3·p² for the patch-p pixel codec
    audio_channels: int = melspec.N_MELS  # mel bins M (CMMD §3)
    patch_frames: int = 1  # [choice] frames per video patch: one token per frame keeps 10 fps timing
    patch_size: int = 2  # [choice] video patch side p, DiT-XL/2's (the yaml's 1 is on MM-LDM's own latents)
    audio_patch: int = 4  # [choice] mel steps per audio token (64 ms), each spanning all M bins
    hidden: int = 1152  # D, aist_gen_v2.yaml hidden_size
    depth: int = 28  # aist_gen_v2.yaml
    heads: int = 16  # aist_gen_v2.yaml num_heads
    mlp_ratio: float = 4.0  # aist_gen_v2.yaml
    fps: float = media.FPS  # video frames per second: a frame's time (data.ClipConfig.fps)
    mel_rate: float = melspec.SAMPLE_RATE / melspec.HOP  # mel steps per second (62.5): a mel step's time
    cond_modes: bool = False  # MM-LDM's trained conditional modes: embedders for a clean known modality
    text: dict | None = None  # a text.TextConfig's fields: the caption encoder; None: no text
    grad_checkpoint: bool = False  # recompute blocks in the backward pass to save memory

    def __post_init__(self):
        for name in ("video_channels", "audio_channels", "patch_frames", "patch_size", "audio_patch", "hidden",
                     "depth", "heads", "mlp_ratio", "fps", "mel_rate"):
            if getattr(self, name) <= 0:
                raise ValueError(f"dit.py: {name} must be positive, got {getattr(self, name)}")
        if self.hidden % self.heads:
            raise ValueError(f"dit.py: hidden {self.hidden} not divisible by heads {self.heads}")
        if self.head_dim % 8:  # RoPE rotates pairs in three groups: time d/2, row d/4, column d/4
            raise ValueError(f"dit.py: head width hidden/heads = {self.head_dim} must be a multiple of 8 (RoPE)")
        if self.text is not None:
            self.text = asdict(text.TextConfig(**self.text))  # checked, and every field stored

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    @property
    def patch_values(self) -> dict[str, int]:
        """P, the values in one token's patch: {"video": pf·C·p², "audio": M·a}."""
        return {"video": self.patch_frames * self.video_channels * self.patch_size ** 2,
                "audio": self.audio_channels * self.audio_patch}


PRESETS = {
    "paper": {},  # MM-LDM's DiT: 677 M parameters with 4 latent channels and 80 mel bins
    # The demo's size for 16 px frames through the patch-2 pixel codec (12 values on 8×8 positions, so 16 tokens
    # a frame): about the cpu U-Net's 2.47 M parameters (2.52 M). [choice] One mel step per audio token (80
    # values into a 128-wide token): chosen over 2 and 4 on validation clips by the audio denoising loss
    # (experiments/dit_audio_patch.py, docs/backbones.md).
    "cpu": dict(hidden=128, depth=8, heads=4, audio_patch=1),
    "tiny": dict(hidden=16, depth=2, heads=2),  # unit tests
}


def preset(name: str, **overrides) -> DiTConfig:
    """The named configuration ("paper", "cpu", "tiny"), with fields overridden by keyword."""
    if name not in PRESETS:
        raise ValueError(f"dit.py: unknown preset {name!r}, choose one of {sorted(PRESETS)}")
    return DiTConfig(**{**PRESETS[name], **overrides})


def patchify(modality: str, x: torch.Tensor, cfg: DiTConfig) -> tuple[torch.Tensor, tuple[int, ...]]:
    """Video (B, F, C, H, W) or mel (B, M, T) -> tokens (B, S, P) and the patch grid, (Fp, Hp, Wp) or (Tp,).
    [choice] F and T are zero-padded at the end up to whole patches (unpatchify crops them back); padded
    tokens are attended to like any other, as the U-Net's padded mel steps are."""
    if modality == "video":
        B, F_, C, H, W = x.shape
        pf, p = cfg.patch_frames, cfg.patch_size
        x = F.pad(x, (0, 0, 0, 0, 0, 0, 0, -F_ % pf))  # (B, F', C, H, W)
        grid = (x.shape[1] // pf, H // p, W // p)
        x = x.view(B, grid[0], pf, C, grid[1], p, grid[2], p)  # (B, Fp, pf, C, Hp, p, Wp, p)
        return x.permute(0, 1, 4, 6, 2, 3, 5, 7).reshape(B, -1, pf * C * p * p), grid  # (B, Fp·Hp·Wp, P)
    B, M, T = x.shape
    a = cfg.audio_patch
    x = F.pad(x, (0, -T % a))  # (B, M, T')
    grid = (x.shape[2] // a,)
    return x.view(B, M, grid[0], a).transpose(1, 2).reshape(B, grid[0], M * a), grid  # (B, Tp, P)


def unpatchify(modality: str, tokens: torch.Tensor, grid: tuple[int, ...], shape: torch.Size,
               cfg: DiTConfig) -> torch.Tensor:
    """patchify's inverse: tokens (B, S, P) -> `shape`, (B, F, C, H, W) or (B, M, T), padding cropped."""
    B = tokens.shape[0]
    if modality == "video":
        C, pf, p = shape[2], cfg.patch_frames, cfg.patch_size
        Fp, Hp, Wp = grid
        x = tokens.view(B, Fp, Hp, Wp, pf, C, p, p)  # (B, Fp, Hp, Wp, pf, C, p, p)
        x = x.permute(0, 1, 4, 5, 2, 6, 3, 7).reshape(B, Fp * pf, C, Hp * p, Wp * p)  # (B, F', C, H, W)
        return x[:, :shape[1]]  # (B, F, C, H, W)
    M, a = shape[1], cfg.audio_patch
    x = tokens.view(B, grid[0], M, a).transpose(1, 2).reshape(B, M, grid[0] * a)  # (B, M, T')
    return x[..., :shape[2]]  # (B, M, T)


def token_positions(cfg: DiTConfig, grids: dict[str, tuple[int, ...]],
                    device: torch.device | None = None) -> dict[str, torch.Tensor]:
    """Each token's (time in seconds, patch row, patch column), {modality: (S, 3)}, in patchify's order.
    A token's time is its span's centre: video frame f spans [f, f + 1)/fps, so its centre is (f + ½)/fps as
    in the U-Net's fusion (docs/networks.md), and mel step t spans [t, t + 1)/mel_rate, its window's centre
    (melspec.py). [choice] Audio tokens sit at the centre of the patch grid: no row or column favoured."""
    Fp, Hp, Wp = grids["video"]
    (Tp,) = grids["audio"]
    pf, a = cfg.patch_frames, cfg.audio_patch
    f, r, c = (torch.arange(k, device=device, dtype=torch.float64) for k in (Fp, Hp, Wp))
    f, r, c = torch.meshgrid((f + 0.5) * pf / cfg.fps, r, c, indexing="ij")  # 3 × (Fp, Hp, Wp)
    video = torch.stack([f, r, c], -1).reshape(-1, 3)  # (Fp·Hp·Wp, 3)
    t = (torch.arange(Tp, device=device, dtype=torch.float64) + 0.5) * a / cfg.mel_rate  # (Tp,)
    centre = t.new_tensor([(Hp - 1) / 2, (Wp - 1) / 2]).expand(Tp, 2)  # (Tp, 2)
    audio = torch.cat([t[:, None], centre], 1)  # (Tp, 3)
    return {"video": video.float(), "audio": audio.float()}


def rope_angles(pos: torch.Tensor, head_dim: int) -> torch.Tensor:
    """Rotary angles (S, d/2) of positions (S, 3): time (seconds · ROPE_TIME_SCALE) turns the first d/4
    pairs, row and column d/8 each; each group's frequencies are ROPE_BASE^(-i/k), i < k (Su et al. 2021)."""
    pairs = {"time": head_dim // 4, "row": head_dim // 8, "col": head_dim // 8}
    scale = pos.new_tensor([ROPE_TIME_SCALE, 1.0, 1.0])  # (3,)
    angles = []
    for axis, k in enumerate(pairs.values()):
        freqs = ROPE_BASE ** (-torch.arange(k, device=pos.device, dtype=pos.dtype) / k)  # (k,)
        angles.append(pos[:, axis:axis + 1] * scale[axis] * freqs)  # (S, k)
    return torch.cat(angles, 1)  # (S, d/2)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate each pair (x_i, x_{i+d/2}) of x (..., S, d) by its angle; cos and sin (S, d/2) (Su et al. 2021)."""
    x1, x2 = x.chunk(2, -1)  # 2 × (..., S, d/2)
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], -1)  # (..., S, d)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN: x (B, S, D) · (1 + scale) + shift, both (B, 1, D) (DiT §3.2)."""
    return x * (1 + scale) + shift


class Attention(nn.Module):
    """Multi-head self-attention over the joint token sequence, RoPE on queries and keys."""

    def __init__(self, cfg: DiTConfig):
        super().__init__()
        self.heads = cfg.heads
        self.qkv = nn.Linear(cfg.hidden, 3 * cfg.hidden)
        self.proj = nn.Linear(cfg.hidden, cfg.hidden)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        """mask (B, 1, 1, S) bool: the keys each query may attend to (a caption's padding is not); None: all."""
        B, S, D = x.shape
        q, k, v = self.qkv(x).view(B, S, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)  # 3 × (B, h, S, d)
        y = F.scaled_dot_product_attention(apply_rope(q, cos, sin), apply_rope(k, cos, sin), v,
                                           attn_mask=mask)  # (B, h, S, d)
        return self.proj(y.transpose(1, 2).reshape(B, S, D))  # (B, S, D)


class DiTBlock(nn.Module):
    """DiT block with adaLN-Zero (Peebles & Xie 2023, Fig. 3): shift, scale and a zero-initialised gate per
    branch from the step embedding, so every block starts as the identity."""

    def __init__(self, cfg: DiTConfig):
        super().__init__()
        D = cfg.hidden
        self.norm1 = nn.LayerNorm(D, elementwise_affine=False, eps=LN_EPS)
        self.attn = Attention(cfg)
        self.norm2 = nn.LayerNorm(D, elementwise_affine=False, eps=LN_EPS)
        width = int(D * cfg.mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(D, width), nn.GELU(approximate="tanh"), nn.Linear(width, D))
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(D, 6 * D))  # zeroed by DiT.init_weights

    def forward(self, x: torch.Tensor, c: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        shift1, scale1, gate1, shift2, scale2, gate2 = self.ada(c)[:, None].chunk(6, -1)  # 6 × (B, 1, D)
        x = x + gate1 * self.attn(modulate(self.norm1(x), shift1, scale1), cos, sin, mask)
        return x + gate2 * self.mlp(modulate(self.norm2(x), shift2, scale2))  # (B, S, D)


class FinalLayer(nn.Module):
    """DiT's last layer: adaLN (shift, scale), then a zero-initialised linear map to the patch values."""

    def __init__(self, hidden: int, patch_values: int):
        super().__init__()
        self.norm = nn.LayerNorm(hidden, elementwise_affine=False, eps=LN_EPS)
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 2 * hidden))
        self.linear = nn.Linear(hidden, patch_values)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.ada(c)[:, None].chunk(2, -1)  # 2 × (B, 1, D)
        return self.linear(modulate(self.norm(x), shift, scale))  # (B, S, P)


class DiT(nn.Module):
    """Joint DiT: model({"video": (B, F, C, H, W), "audio": (B, M, T)}, n) -> same shapes (the prediction).
    With cfg.cond_modes, model(x, n, cond, cond_on) also takes clean known modalities (MM-LDM Fig. 2)."""

    def __init__(self, cfg: DiTConfig):
        super().__init__()
        self.cfg = cfg
        D, P = cfg.hidden, cfg.patch_values
        self.embed = path_modules(lambda m: nn.Linear(P[m], D))
        self.modality_embed = nn.ParameterDict({m: nn.Parameter(MODALITY_EMBED_STD * torch.randn(D))
                                                for m in MODALITIES})
        # MM-LDM's cond_embedder_*: the clean modality's own patch embedder, added to the noisy tokens
        self.cond_embed = path_modules(lambda m: nn.Linear(P[m], D)) if cfg.cond_modes else None
        self.time_embed = nn.Sequential(nn.Linear(TIME_FREQ_DIM, D), nn.SiLU(), nn.Linear(D, D))
        if cfg.text is not None:  # the caption encoder, its tokens' map into the sequence and its pooled path
            self.text_encoder = text.TextEncoder(text.TextConfig(**cfg.text))
            self.text_embed = nn.Linear(self.text_encoder.width, D)
            self.text_type = nn.Parameter(MODALITY_EMBED_STD * torch.randn(D))
            self.text_pool = nn.Sequential(nn.Linear(self.text_encoder.width, D), nn.SiLU(), nn.Linear(D, D))
        self.blocks = nn.ModuleList(DiTBlock(cfg) for _ in range(cfg.depth))
        self.final = path_modules(lambda m: FinalLayer(D, P[m]))
        self.init_weights()

    def init_weights(self):
        """DiT's initialisation: Xavier-uniform linear maps with zero biases, N(0, 0.02²) for the step MLP,
        and zeros for every adaLN map, the output maps and the conditional embedders, so an untrained DiT
        outputs zeros and a cond_modes one starts as the joint model."""
        for name, module in self.named_modules():
            if isinstance(module, nn.Linear) and not name.startswith("text_encoder"):  # T5 keeps its own init
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        for layer in self.time_embed[::2]:
            nn.init.normal_(layer.weight, std=INIT_STD)
        for block in self.blocks:
            zero_(block.ada)
        for m in MODALITIES:
            zero_(self.final[m].ada)
            zero_(self.final[m].linear)
        if self.cond_embed is not None:
            zero_(self.cond_embed)
        if self.cfg.text is not None:  # the pooled caption starts silent, as the conditional embedders
            zero_(self.text_pool[-1])

    def check(self, x: dict, n: torch.Tensor, cond: dict, cond_on: dict, captions=None) -> None:
        """One-line ValueErrors for inputs that break the call convention or the conditional modes."""
        cfg = self.cfg
        try:
            B, F_, H, W, T = check_inputs(x, n, cfg.video_channels, cfg.audio_channels)
        except AssertionError as e:
            raise ValueError(f"dit.py: {e}") from None
        if H % cfg.patch_size or W % cfg.patch_size:
            raise ValueError(f"dit.py: video {tuple(x['video'].shape)}: H×W {H}×{W} must be divisible by "
                             f"patch_size {cfg.patch_size}")
        if cond and not cfg.cond_modes:
            raise ValueError("dit.py: cond given to a DiT built without cond_modes")
        if captions is not None and (cfg.text is None or len(captions) != B):
            raise ValueError(f"dit.py: {len(captions)} captions for a batch of {B}" if cfg.text is not None else
                             "dit.py: captions given to a DiT built without a text encoder")
        for m in cond:
            if m not in MODALITIES or cond[m].shape != x[m].shape:
                raise ValueError(f"dit.py: cond[{m!r}] must have x's shape "
                                 f"{tuple(x[m].shape) if m in x else MODALITIES}, got {tuple(cond[m].shape)}")
        for m in cond_on:
            if m not in cond or cond_on[m].shape != (B,):
                raise ValueError(f"dit.py: cond_on[{m!r}] must be (B,) = ({B},) beside cond[{m!r}], got "
                                 f"{tuple(cond_on[m].shape)}{'' if m in cond else ' without cond'}")

    def forward(self, x: dict[str, torch.Tensor], n: torch.Tensor, cond: dict[str, torch.Tensor] | None = None,
                cond_on: dict[str, torch.Tensor] | None = None,
                text: list[str] | None = None) -> dict[str, torch.Tensor]:
        """x {"video": (B, F, C, H, W), "audio": (B, M, T)} and step n (B,) -> the prediction, x's shapes.
        cond {modality: clean x₀ of x[modality]'s shape}: the known modality of MM-LDM's conditional modes,
        its embedding added to that modality's tokens; cond_on {modality: (B,) bool}, default all True, picks
        the examples that use cond[modality] (the others' cond values are ignored). None or {}: joint.
        text: B captions for a DiT with a text encoder ("" or None: none, the unconditioned model)."""
        cfg = self.cfg
        cond, cond_on = cond or {}, cond_on or {}
        self.check(x, n, cond, cond_on, text)
        tokens, grids = {}, {}
        for m in MODALITIES:
            tokens[m], grids[m] = patchify(m, x[m], cfg)  # (B, S_m, P_m)
        h = {m: self.embed[m](tokens[m]) + self.modality_embed[m] for m in MODALITIES}  # (B, S_m, D)
        for m, x0 in cond.items():
            on = cond_on[m].bool() if m in cond_on else torch.ones_like(n, dtype=torch.bool)  # (B,)
            e = self.cond_embed[m](patchify(m, x0, cfg)[0])  # (B, S_m, D)
            h[m] = h[m] + torch.where(on[:, None, None], e, torch.zeros_like(e))

        pos = torch.cat(list(token_positions(cfg, grids, n.device).values()))  # (S, 3), MODALITIES' order
        angles = rope_angles(pos, cfg.head_dim)  # (S, d/2)
        c = self.time_embed(timestep_embedding(n, TIME_FREQ_DIM))  # (B, D)
        s = torch.cat([h[m] for m in MODALITIES], 1)  # (B, S, D): one joint sequence
        mask = None
        if cfg.text is not None:
            s, c, angles, mask = self.with_text(s, c, angles, pos, text or [""] * n.shape[0])
        cos, sin = angles.cos(), angles.sin()
        for block in self.blocks:
            if cfg.grad_checkpoint and self.training and torch.is_grad_enabled():
                s = checkpoint(block, s, c, cos, sin, mask, use_reentrant=False)
            else:
                s = block(s, c, cos, sin, mask)
        parts = s.split([h[m].shape[1] for m in MODALITIES] + [s.shape[1] - sum(h[m].shape[1] for m in h)], 1)
        # (B, S_video, D), (B, S_audio, D) and the caption's (B, S_t, D), whose outputs are not read
        return {m: unpatchify(m, self.final[m](part, c), grids[m], x[m].shape, cfg).to(x[m].dtype)
                for m, part in zip(MODALITIES, parts)}

    def with_text(self, s: torch.Tensor, c: torch.Tensor, angles: torch.Tensor, pos: torch.Tensor,
                  captions: list[str]):
        """The caption's tokens appended to the sequence s (B, S, D) -> (B, S + S_t, D), every one at the centre of
        the window's positions pos (S, 3) (its middle time, the patch grid's centre: no time, row or column
        favoured, as the audio tokens' row and column); its masked mean added to c (B, D); and the key mask
        (B, 1, 1, S + S_t) that hides its padding."""
        tokens, keep = self.text_encoder(list(captions))  # (B, S_t, E), (B, S_t)
        t = self.text_embed(tokens.to(s.dtype)) + self.text_type  # (B, S_t, D)
        c = c + self.text_pool(text.masked_mean(tokens, keep).to(c.dtype))  # pooled (B, E) -> (B, D)
        centre = torch.cat([pos[:, :1].mean(0), pos[:, 1:].amax(0) / 2])  # (3,): mid time, grid centre
        angles = torch.cat([angles, rope_angles(centre.expand(t.shape[1], 3), self.cfg.head_dim)])  # (S + S_t, d/2)
        mask = torch.cat([keep.new_ones(s.shape[:2]), keep], 1)[:, None, None]  # (B, 1, 1, S + S_t)
        return torch.cat([s, t], 1), c, angles, mask
