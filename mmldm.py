"""MM-LDM's hierarchical multi-modal autoencoder (Sun et al. 2024, §3.2, Fig. 3) on this project's codecs.

Per modality, a content encoder compresses the clip into one small perceptual latent z (a KL-regularised
Gaussian); a projector maps z into a semantic space shared by the two modalities, trained with a
classification loss L_cl over the dataset's classes and an audio-video contrastive loss L_co (Fig. 3a). One
decoder, shared by the modalities, is itself a diffusion model (Fig. 3b): it denoises a video frame or the mel
image given its own modality's latent (added to the step embedding and injected into every level, for video
with the index of the frame to decode), the class, and, through cross-attention, the other modality's semantic
tokens. The decoder's losses and sampling are diffusion.py's and sampling.py's, on the modality dict
{"video": the frames to decode (B, F, C, H, W), "audio": the mel (B, M, T)}.

Read from MM-LDM's public code (iva-mzsun/MM-LDM: src/fm_ae/autoencoder_vid_aud_v13.py, modules/video_enc.py,
modules/heads.py, configs/asit/aist_ae_v2.yaml); written here. Where it differs or the code leaves a choice,
[choice] says so. Left out: the adversarial term (the yaml's allow_gan), the all-gather of the contrastive
loss's negatives across GPUs, and classifier-free guidance of the decoder (its conditions are dropped in
training, so the unconditional decoder exists for it).

Shapes besides the README's: K key frames, Z latent channels, h × w a latent's or a level's side, D the
semantic width, S tokens, N = B·(frames decoded) images through the shared decoder.
"""
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

import dit
import melspec
import sampling
from diffusion import randn
from modalities import MODALITIES, OTHER, check
from unet import timestep_embedding, zero_

LOGVAR_RANGE = (-30.0, 20.0)  # clamp of the posterior's log-variance (LDM's DiagonalGaussianDistribution)
TEMPERATURE = 0.07  # initial temperature of the contrastive logits (MM-LDM heads.py; CLIP)
TOKEN_STD = 0.1  # init of the modality context tokens (MM-LDM: torch.randn(77, 768) * 0.1)
# [choice] A frame's index enters as its position in the clip, f / F (MM-LDM decodes frame t of n at t / n),
# scaled to the diffusion steps' range so that the sinusoidal embedding's fast frequencies resolve it.
INDEX_SCALE = 1000.0


@dataclass
class MMAEConfig:
    """The autoencoder's sizes and loss weights; the defaults are MM-LDM's AIST++ ones (aist_ae_v2.yaml)."""
    video_channels: int = 4  # C of the video codec: 4 SD-VAE latent channels, 3·p² for the patch-p pixel codec
    audio_patch: int = 4  # [choice] p × p patches of the mel image as channels (MM-LDM: a 256² mel image, SD-VAE)
    key_frames: int = 4  # K frames the video encoder sees (MM-LDM: content_frame_idx 0, 5, 10, 15 of 16)
    latent_channels: int = 16  # Z (videoenc/audioenc out_channels)
    enc_width: int = 320  # the encoders' model_channels
    video_enc_mult: tuple = (1, 2)  # per level; the latent is 2^(levels−1) smaller than the codec's frame
    audio_enc_mult: tuple = (1, 2, 4)
    enc_blocks: int = 2  # residual blocks per encoder level (num_res_blocks)
    semantic_dim: int = 768  # D (projector out_channels, the decoder's context_dim)
    projector_width: int = 128
    projector_blocks: int = 3
    contrastive_dim: int = 256  # ContrastiveHeadandLoss model_channels
    dec_width: int = 320  # the shared decoder's model_channels
    dec_mult: tuple = (1, 2, 4, 4)
    dec_blocks: int = 2
    dec_attention: tuple = (0, 1, 2)  # decoder levels with a transformer block (attention_resolutions 4, 2, 1)
    head_dim: int = 64  # attention head width (num_head_channels)
    norm_groups: int = 32
    context_tokens: int = 77  # each modality's learned context tokens (MM-LDM: 77 × 768, a CLIP prompt's shape)
    num_classes: int = 60  # aist_ae_v2.yaml num_class; the synthetic benchmark's kinds: 2
    target_frames: int = 4  # [choice] frames of each clip the decoder learns to decode per training step
    cond_drop: float = 0.1  # each modality's conditions dropped per example (MM-LDM get_input_*: 10 %)
    kl_weight: float = 1e-9  # aist_ae_v2.yaml kl_loss_weight
    classify_weight: float = 0.1  # classify_loss_weight
    contrastive_weight: float = 0.03  # contrastive_loss_weight

    def __post_init__(self):
        for name in ("video_channels", "audio_patch", "key_frames", "latent_channels", "enc_width", "enc_blocks",
                     "semantic_dim", "projector_width", "projector_blocks", "contrastive_dim", "dec_width",
                     "dec_blocks", "head_dim", "norm_groups", "context_tokens", "num_classes", "target_frames"):
            if getattr(self, name) < 1:
                raise ValueError(f"mmldm.py: {name} must be positive, got {getattr(self, name)}")
        self.video_enc_mult, self.audio_enc_mult = tuple(self.video_enc_mult), tuple(self.audio_enc_mult)
        self.dec_mult, self.dec_attention = tuple(self.dec_mult), tuple(self.dec_attention)
        widths = [self.enc_width * m for m in self.video_enc_mult + self.audio_enc_mult]
        widths += [self.dec_width * m for m in self.dec_mult] + [self.projector_width, self.semantic_dim]
        for c in widths:
            if c % self.norm_groups or c % self.head_dim:
                raise ValueError(f"mmldm.py: width {c} must be divisible by norm_groups {self.norm_groups} "
                                 f"and head_dim {self.head_dim}")
        if not 0 <= self.cond_drop < 1:
            raise ValueError(f"mmldm.py: cond_drop must be in [0, 1), got {self.cond_drop}")
        if any(not 0 <= i < len(self.dec_mult) for i in self.dec_attention):
            raise ValueError(f"mmldm.py: dec_attention {self.dec_attention} names a level outside "
                             f"0..{len(self.dec_mult) - 1}")

    def channels(self, modality: str) -> int:
        """The channels of a modality's images: the video codec's C, or the mel image's p² patch values."""
        return self.video_channels if modality == "video" else self.audio_patch ** 2

    def enc_mult(self, modality: str) -> tuple:
        return self.video_enc_mult if modality == "video" else self.audio_enc_mult


PRESETS = {
    "paper": {},  # MM-LDM's AIST++ autoencoder
    # For 16 px frames through the patch-2 pixel codec (12 channels on 8 × 8) and the 80 × 112 mel (16 × 20 × 28):
    # latents 8 × 4 × 4 and 8 × 5 × 7.
    "cpu": dict(latent_channels=8, enc_width=32, audio_enc_mult=(1, 2, 2), enc_blocks=1, semantic_dim=64,
                projector_width=32, projector_blocks=2, contrastive_dim=32, dec_width=32, dec_mult=(1, 2, 2),
                dec_blocks=1, dec_attention=(2,), head_dim=16, norm_groups=8, context_tokens=4, num_classes=2,
                target_frames=2),
    "tiny": dict(latent_channels=4, enc_width=16, video_enc_mult=(1, 1), audio_enc_mult=(1, 1), enc_blocks=1,
                 semantic_dim=16, projector_width=16, projector_blocks=1, contrastive_dim=8, dec_width=16,
                 dec_mult=(1, 1), dec_blocks=1, dec_attention=(1,), head_dim=8, norm_groups=4, context_tokens=2,
                 num_classes=2, target_frames=2),  # unit tests
}


def preset(name: str, **overrides) -> MMAEConfig:
    """The named configuration ("paper", "cpu", "tiny"), with fields overridden by keyword."""
    if name not in PRESETS:
        raise ValueError(f"mmldm.py: unknown preset {name!r}, choose one of {sorted(PRESETS)}")
    return MMAEConfig(**{**PRESETS[name], **overrides})


def classes_of(batch: dict) -> torch.Tensor:
    """The class of each clip of a batch (B,): the synthetic benchmark's kind, 0 bounce, 1 dance (a clip with a
    tempo); [choice] class 0 for data without classes (a folder of videos), which leaves L_cl nothing to learn."""
    if "tempo" not in batch:
        return torch.zeros(len(batch["audio"]), dtype=torch.long)
    return (batch["tempo"] > 0).long()


# ---- building blocks ---------------------------------------------------------------------------------------


def norm(cfg: MMAEConfig, c: int) -> nn.GroupNorm:
    return nn.GroupNorm(cfg.norm_groups, c)


class ResBlock(nn.Module):
    """A 2D residual block (improved-diffusion's), with an additive embedding when emb_dim > 0."""

    def __init__(self, cfg: MMAEConfig, c_in: int, c_out: int, emb_dim: int = 0):
        super().__init__()
        self.in_layers = nn.Sequential(norm(cfg, c_in), nn.SiLU(), nn.Conv2d(c_in, c_out, 3, padding=1))
        self.emb = nn.Sequential(nn.SiLU(), nn.Linear(emb_dim, c_out)) if emb_dim else None
        self.out_layers = nn.Sequential(norm(cfg, c_out), nn.SiLU(), zero_(nn.Conv2d(c_out, c_out, 3, padding=1)))
        self.skip = nn.Identity() if c_in == c_out else nn.Conv2d(c_in, c_out, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        h = self.in_layers(x)  # (N, C_out, h, w)
        if self.emb is not None:
            h = h + self.emb(emb)[:, :, None, None]
        return self.skip(x) + self.out_layers(h)


class Attention(nn.Module):
    """Multi-head attention of token sequences (N, S, C) over themselves or a context (N, S_c, C_c)."""

    def __init__(self, cfg: MMAEConfig, c: int, context_dim: int | None = None):
        super().__init__()
        self.heads = c // cfg.head_dim
        self.norm = nn.LayerNorm(c)
        self.q = nn.Linear(c, c)
        self.kv = nn.Linear(context_dim or c, 2 * c)
        self.out = zero_(nn.Linear(c, c))  # the block starts as the identity

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        N, S, C = x.shape
        h = self.norm(x)
        k, v = self.kv(h if context is None else context).chunk(2, dim=-1)  # 2 × (N, S_c, C)
        q, k, v = (t.reshape(N, -1, self.heads, C // self.heads).transpose(1, 2)  # (N, heads, ·, C/heads)
                   for t in (self.q(h), k, v))
        y = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(N, S, C)  # (N, S, C)
        return x + self.out(y)


class Transformer(nn.Module):
    """LDM's SpatialTransformer at one decoder level: self-attention over the h·w positions, cross-attention
    to the context tokens, a feed-forward layer."""

    def __init__(self, cfg: MMAEConfig, c: int):
        super().__init__()
        self.self_attn, self.cross_attn = Attention(cfg, c), Attention(cfg, c, cfg.semantic_dim)
        self.ff = nn.Sequential(nn.LayerNorm(c), nn.Linear(c, 4 * c), nn.GELU(), zero_(nn.Linear(4 * c, c)))

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        N, C, H, W = x.shape
        h = x.flatten(2).transpose(1, 2)  # (N, h·w, C)
        h = self.cross_attn(self.self_attn(h), context)
        h = h + self.ff(h)
        return h.transpose(1, 2).reshape(N, C, H, W)  # (N, C, h, w)


def resize(x: torch.Tensor, size) -> torch.Tensor:
    """Nearest resampling of (N, C, h, w) to `size`: any side, odd ones included."""
    return x if tuple(x.shape[-2:]) == tuple(size) else F.interpolate(x, size=tuple(size), mode="nearest")


def as_images(modality: str, x: torch.Tensor, cfg: MMAEConfig) -> torch.Tensor:
    """Video (B, F, C, H, W) -> frames (B·F, C, H, W); the mel (B, M, T) -> its image's p × p patches as
    channels (B, p², M/p, T'/p), T zero-padded up to T' = a multiple of p (from_images crops it back)."""
    if modality == "video":
        return x.flatten(0, 1)  # (B·F, C, H, W)
    p = cfg.audio_patch
    if x.shape[1] % p:
        raise ValueError(f"mmldm.py: the mel's {x.shape[1]} bins are not a multiple of audio_patch {p}")
    x = F.pad(x, (0, -x.shape[2] % p))  # (B, M, T')
    return F.pixel_unshuffle(x[:, None], p)  # (B, p², M/p, T'/p)


def from_images(modality: str, y: torch.Tensor, like: torch.Tensor, cfg: MMAEConfig) -> torch.Tensor:
    """as_images inverted, to the shape of `like`."""
    if modality == "video":
        return y.reshape(like.shape)  # (B, F, C, H, W)
    return F.pixel_shuffle(y, cfg.audio_patch)[:, 0, :, :like.shape[2]]  # (B, M, T)


def across_frames(attn: Attention, h: torch.Tensor, frames: int) -> torch.Tensor:
    """Attention over the frames of each clip at every position: h (B·F, C, h, w) -> the same shape."""
    N, C, H, W = h.shape
    t = h.view(N // frames, frames, C, H, W).permute(0, 3, 4, 1, 2).reshape(-1, frames, C)  # (B·h·w, F, C)
    t = attn(t)
    return t.view(N // frames, H, W, frames, C).permute(0, 3, 4, 1, 2).reshape(N, C, H, W)  # (B·F, C, h, w)


def over_space(attn: Attention, h: torch.Tensor) -> torch.Tensor:
    """Attention over the positions of each image: h (N, C, h, w) -> the same shape."""
    N, C, H, W = h.shape
    return attn(h.flatten(2).transpose(1, 2)).transpose(1, 2).reshape(N, C, H, W)  # (N, C, h, w)


def level_sizes(size, levels: int) -> list:
    """The (h, w) of each level of a stack of stride-2 3×3 convolutions with padding 1: ⌈side / 2⌉ each."""
    sizes = [tuple(size)]
    for _ in range(levels - 1):
        sizes.append(tuple((s + 1) // 2 for s in sizes[-1]))
    return sizes


# ---- the encoders, projectors and heads (Fig. 3a) ----------------------------------------------------------


class ContentEncoder(nn.Module):
    """MM-LDM's VideoContentEnc (its AudioContentEnc is the same on one frame, the mel image): a learned content
    frame joins the K frames; per-frame residual blocks and stride-2 downsampling, with attention across the
    frames at every position after each level, gather what the frames hold into the content frame, whose
    features give the posterior q(z | x): mean and log-variance (B, Z, h, w)."""

    def __init__(self, cfg: MMAEConfig, modality: str):
        super().__init__()
        c_in, mult = cfg.channels(modality), cfg.enc_mult(modality)
        # [choice] one learned value per channel, broadcast over the frame, so that any frame size works (MM-LDM
        # learns a whole frame of its fixed size)
        self.content = nn.Parameter(torch.randn(c_in))
        self.stem = nn.Conv2d(c_in, cfg.enc_width, 3, padding=1)
        self.levels, ch = nn.ModuleList(), cfg.enc_width
        for i, m in enumerate(mult):
            blocks = []
            for _ in range(cfg.enc_blocks):
                blocks.append(ResBlock(cfg, ch, cfg.enc_width * m))
                ch = cfg.enc_width * m
            last = i == len(mult) - 1
            self.levels.append(nn.ModuleDict(dict(
                blocks=nn.ModuleList(blocks), frames=Attention(cfg, ch),
                down=nn.Identity() if last else nn.Conv2d(ch, ch, 3, stride=2, padding=1))))
        self.space = Attention(cfg, ch)  # [choice] spatial attention at the last level only
        self.mean = nn.Sequential(norm(cfg, ch), nn.SiLU(), nn.Conv2d(ch, cfg.latent_channels, 3, padding=1))
        # the log-variance starts at 0 (MM-LDM zero-initialises its variance head)
        self.logvar = nn.Sequential(norm(cfg, ch), nn.SiLU(), zero_(nn.Conv2d(ch, cfg.latent_channels, 3, padding=1)))

    def forward(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """frames (B, K, C, H, W) -> the posterior's mean and log-variance, each (B, Z, h, w)."""
        B, K, C, H, W = frames.shape
        content = self.content.view(1, 1, C, 1, 1).expand(B, 1, C, H, W)  # (B, 1, C, H, W)
        h = self.stem(torch.cat([content, frames], 1).flatten(0, 1))  # (B·(K+1), C_e, H, W)
        for level in self.levels:
            for block in level["blocks"]:
                h = block(h)
            h = level["down"](across_frames(level["frames"], h, K + 1))  # (B·(K+1), C_e, h, w)
        top = over_space(self.space, h.view(B, K + 1, *h.shape[1:])[:, 0])  # (B, C_e, h, w): the content frame
        return self.mean(top), self.logvar(top).clamp(*LOGVAR_RANGE)


class Projector(nn.Module):
    """A perceptual latent (B, Z, h, w) -> its tokens in the shared semantic space (B, D, h, w) (Fig. 3a)."""

    def __init__(self, cfg: MMAEConfig):
        super().__init__()
        w = cfg.projector_width
        self.stem = nn.Conv2d(cfg.latent_channels, w, 3, padding=1)
        self.blocks = nn.ModuleList(ResBlock(cfg, w, w) for _ in range(cfg.projector_blocks))
        self.attn = Attention(cfg, w)
        self.out = nn.Sequential(norm(cfg, w), nn.SiLU(), nn.Conv2d(w, cfg.semantic_dim, 1))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.stem(z)  # (B, w, h, w)
        for block in self.blocks:
            h = block(h)
        return self.out(over_space(self.attn, h))  # (B, D, h, w)


def head_map(cfg: MMAEConfig) -> nn.ModuleDict:
    """Per modality, two 3×3 convolutions on the semantic tokens (MM-LDM heads.py's map_video, map_audio)."""
    D = cfg.semantic_dim
    return nn.ModuleDict({k: nn.Sequential(nn.Conv2d(D, D, 3, padding=1), norm(cfg, D), nn.SiLU(),
                                           nn.Conv2d(D, D, 3, padding=1)) for k in MODALITIES})


class ClassifyHead(nn.Module):
    """Class logits (B, classes) from both modalities' semantic tokens together: the head of L_cl (Fig. 3a)."""

    def __init__(self, cfg: MMAEConfig):
        super().__init__()
        self.map = head_map(cfg)
        self.out = nn.Sequential(nn.Conv1d(cfg.semantic_dim, cfg.semantic_dim, 1), norm(cfg, cfg.semantic_dim),
                                 nn.SiLU())
        self.logits = nn.Linear(cfg.semantic_dim, cfg.num_classes)

    def forward(self, sem: dict) -> torch.Tensor:
        tokens = torch.cat([self.map[k](sem[k]).flatten(2) for k in MODALITIES], 2)  # (B, D, S_v + S_a)
        return self.logits(self.out(tokens).mean(2))  # (B, classes)


class ContrastiveHead(nn.Module):
    """L_co (Fig. 3a; MM-LDM heads.py): each modality's pooled semantic tokens, projected and normalised, score
    every clip of the batch of the other modality; the cross-entropy of the matched pair, both ways, averaged."""

    def __init__(self, cfg: MMAEConfig):
        super().__init__()
        self.map = head_map(cfg)
        self.proj = nn.ModuleDict({k: nn.Linear(cfg.semantic_dim, cfg.contrastive_dim) for k in MODALITIES})
        # [choice] log-temperatures, one per direction, so the learned temperature stays positive (MM-LDM learns
        # the temperature itself)
        self.log_tau = nn.Parameter(torch.full((2,), math.log(TEMPERATURE)))

    def embed(self, sem: dict) -> dict:
        """{modality: (B, E) unit vectors}."""
        return {k: F.normalize(self.proj[k](self.map[k](sem[k]).mean((2, 3))), dim=1) for k in MODALITIES}

    def forward(self, sem: dict) -> torch.Tensor:
        e = self.embed(sem)
        sim = e["video"] @ e["audio"].T  # (B, B): video i against audio j
        target = torch.arange(sim.shape[0], device=sim.device)
        v2a, a2v = sim / self.log_tau[0].exp(), sim.T / self.log_tau[1].exp()
        return (F.cross_entropy(v2a, target) + F.cross_entropy(a2v, target)) / 2


# ---- the shared decoder (Fig. 3b) --------------------------------------------------------------------------


class Injector(nn.Module):
    """MM-LDM's content encoder's decode(): a latent (N, Z, h, w) and the index of the frame to decode (N,) ->
    one feature per decoder level (N, C_l, h_l, w_l), added after that level's blocks; zero at the start."""

    def __init__(self, cfg: MMAEConfig):
        super().__init__()
        w, E = cfg.dec_width, 4 * cfg.dec_width
        self.index = nn.Sequential(nn.Linear(w, E), nn.SiLU(), nn.Linear(E, E))
        self.stem = nn.Conv2d(cfg.latent_channels, w, 3, padding=1)
        self.levels = nn.ModuleList(ResBlock(cfg, w, w * m, E) for m in cfg.dec_mult)
        self.zero = nn.ModuleList(zero_(nn.Conv2d(w * m, w * m, 1)) for m in cfg.dec_mult)
        self.width = w

    def forward(self, z: torch.Tensor, index: torch.Tensor, sizes: list) -> list:
        emb = self.index(timestep_embedding(index * INDEX_SCALE, self.width))  # (N, E)
        h = self.stem(z)  # (N, w, h, w)
        return [zero(block(resize(h, size), emb)) for block, zero, size in zip(self.levels, self.zero, sizes)]


class Decoder(nn.Module):
    """One U-Net denoiser for both modalities' images (MM-LDM's AEUnetModel): the step, the modality's pooled
    latent and the injected features condition the residual blocks; transformer blocks attend to the context
    (the modality's learned tokens, the class, the other modality's semantic tokens).
    [choice] The modalities' images differ in size and channels here (MM-LDM's are both 4 × 32 × 32 SD-VAE
    latents), so each has its own first and last convolution around the shared body."""

    def __init__(self, cfg: MMAEConfig):
        super().__init__()
        w, E, D = cfg.dec_width, 4 * cfg.dec_width, cfg.semantic_dim
        self.cfg = cfg
        self.time = nn.Sequential(nn.Linear(w, E), nn.SiLU(), nn.Linear(E, E))
        self.inputs = nn.ModuleDict({k: nn.Conv2d(cfg.channels(k), w, 3, padding=1) for k in MODALITIES})
        w0 = w * cfg.dec_mult[0]  # the last level's width
        self.outputs = nn.ModuleDict({k: nn.Sequential(norm(cfg, w0), nn.SiLU(),
                                                       zero_(nn.Conv2d(w0, cfg.channels(k), 3, padding=1)))
                                      for k in MODALITIES})
        # [choice] Only the last layer of the latent and context embeddings starts at zero: MM-LDM zeroes the
        # whole MLP, which leaves it at its bias for ever (no gradient reaches either layer).
        self.content = nn.ModuleDict({k: nn.Sequential(nn.Linear(cfg.latent_channels, E), nn.SiLU(),
                                                       zero_(nn.Linear(E, E))) for k in MODALITIES})
        self.context = nn.ModuleDict({k: nn.Sequential(nn.Linear(D, D), nn.SiLU(), zero_(nn.Linear(D, D)))
                                      for k in MODALITIES})  # keyed by the modality whose tokens it embeds
        self.tokens = nn.ParameterDict({k: nn.Parameter(torch.randn(cfg.context_tokens, D) * TOKEN_STD)
                                        for k in MODALITIES})
        self.classes = nn.Embedding(cfg.num_classes, D)
        self.injectors = nn.ModuleDict({k: Injector(cfg) for k in MODALITIES})
        self.down, self.up, ch, skips = nn.ModuleList(), nn.ModuleList(), w, []
        for i, m in enumerate(cfg.dec_mult):
            self.down.append(self.level(ch, w * m, i))
            ch = w * m
            skips.append(ch)
        self.mid = nn.ModuleList([ResBlock(cfg, ch, ch, E), Transformer(cfg, ch), ResBlock(cfg, ch, ch, E)])
        for i in reversed(range(len(cfg.dec_mult))):
            self.up.append(self.level(ch + skips[i], skips[i], i))
            ch = skips[i]
        self.resample = nn.ModuleList(nn.Conv2d(w * m, w * m, 3, stride=2, padding=1) for m in cfg.dec_mult[:-1])

    def level(self, c_in: int, c_out: int, i: int) -> nn.ModuleDict:
        """One level's residual blocks, and its transformer block when the level has attention."""
        E = 4 * self.cfg.dec_width
        blocks = [ResBlock(self.cfg, c_in if j == 0 else c_out, c_out, E) for j in range(self.cfg.dec_blocks)]
        attn = Transformer(self.cfg, c_out) if i in self.cfg.dec_attention else None
        return nn.ModuleDict(dict(blocks=nn.ModuleList(blocks), **({"attn": attn} if attn else {})))

    def context_of(self, modality: str, sem: dict, classes: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """(B, S, D): the modality's tokens (zero where its conditions are dropped), the class, and the other
        modality's semantic tokens (MM-LDM gives audio the video's and each frame the audio's)."""
        B, other = classes.shape[0], OTHER[modality]
        tokens = self.tokens[modality].expand(B, -1, -1) * keep.to(sem[other].dtype)[:, None, None]  # (B, S_m, D)
        semantic = self.context[other](sem[other].flatten(2).transpose(1, 2))  # (B, h·w, D)
        return torch.cat([tokens, self.classes(classes)[:, None], semantic], 1)  # (B, S, D)

    def forward(self, modality: str, x: torch.Tensor, n: torch.Tensor, z: torch.Tensor, index: torch.Tensor,
                context: torch.Tensor) -> torch.Tensor:
        """x (N, C_k, H, W) at steps n (N,), with its latent z (N, Z, h, w), index (N,) and context (N, S, D)
        -> the network's output, the same shape as x."""
        sizes = level_sizes(x.shape[-2:], len(self.cfg.dec_mult))
        emb = self.time(timestep_embedding(n, self.cfg.dec_width)) + self.content[modality](z.mean((2, 3)))  # (N, E)
        injected = self.injectors[modality](z, index, sizes)
        h, skips = self.inputs[modality](x), []  # (N, w, H, W)
        for i, level in enumerate(self.down):
            h = self.run_level(level, h, emb, context) + injected[i]  # (N, C_i, h_i, w_i)
            skips.append(h)
            if i < len(self.resample):
                h = self.resample[i](h)
        h = self.mid[2](self.mid[1](self.mid[0](h, emb), context), emb)
        for level in self.up:
            skip = skips.pop()
            h = self.run_level(level, torch.cat([resize(h, skip.shape[-2:]), skip], 1), emb, context)
        return self.outputs[modality](h)  # (N, C_k, H, W)

    @staticmethod
    def run_level(level: nn.ModuleDict, h: torch.Tensor, emb: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        for block in level["blocks"]:
            h = block(h, emb)
        return level["attn"](h, context) if "attn" in level else h


# ---- the autoencoder ---------------------------------------------------------------------------------------


def key_frames(frames: int, k: int) -> torch.Tensor:
    """The K frame indices the video encoder sees, evenly spaced from the first to the last (MM-LDM: 0, 5, 10,
    15 of 16)."""
    return torch.linspace(0, frames - 1, min(k, frames)).round().long()


class Decoding(nn.Module):
    """The shared decoder bound to its conditions, called as diffusion.py's and sampling.py's model:
    {"video": frames (B, F, C, H, W), "audio": mel (B, M, T)} at steps n (B,) -> the outputs, the same shapes.
    index (B, F): each video frame's position in its clip, f / F_clip."""

    def __init__(self, ae: "MMAutoencoder", z: dict, sem: dict, classes: torch.Tensor, keep: dict,
                 index: torch.Tensor):
        super().__init__()
        self.ae, self.z, self.index = ae, z, index
        self.context = {k: ae.decoder.context_of(k, sem, classes, keep[k]) for k in MODALITIES}

    def forward(self, x: dict, n: torch.Tensor) -> dict:
        out = {}
        for k in x:
            images = as_images(k, x[k], self.ae.cfg)  # (N, C_k, ·, ·)
            per = images.shape[0] // n.shape[0]  # images per clip: F for video, 1 for the mel
            if k == "video" and tuple(self.index.shape) != tuple(x[k].shape[:2]):
                raise ValueError(f"mmldm.py: {x[k].shape[1]} frames to decode but {self.index.shape[1]} frame indices")
            index = self.index.flatten() if k == "video" else n.new_zeros(n.shape, dtype=torch.float)  # (N,)
            y = self.ae.decoder(k, images, n.repeat_interleave(per), self.z[k].repeat_interleave(per, 0), index,
                                self.context[k].repeat_interleave(per, 0))
            out[k] = from_images(k, y, x[k], self.ae.cfg)
        return out


class MMAutoencoder(nn.Module):
    """MM-LDM's hierarchical multi-modal autoencoder (Fig. 3): encode -> (semantic, classify) -> decode."""

    def __init__(self, cfg: MMAEConfig):
        super().__init__()
        self.cfg = cfg
        self.encoders = nn.ModuleDict({k: ContentEncoder(cfg, k) for k in MODALITIES})
        self.projectors = nn.ModuleDict({k: Projector(cfg) for k in MODALITIES})
        self.classify = ClassifyHead(cfg)
        self.contrast = ContrastiveHead(cfg)
        self.decoder = Decoder(cfg)

    def check(self, x0: dict, both: bool = True) -> None:
        """One-line errors for inputs that do not fit: both modalities (or, with both=False, any of them),
        video's C, the mel's M."""
        if (set(x0) != set(MODALITIES)) if both else not set(x0) or not set(x0) <= set(MODALITIES):
            raise ValueError(f"mmldm.py: the autoencoder takes {'both modalities' if both else 'video, audio'}, "
                             f"got {sorted(x0)}")
        for k, ndim in (("video", 5), ("audio", 3)):
            if k in x0 and x0[k].ndim != ndim:
                raise ValueError(f"mmldm.py: {k} must have {ndim} dims, got {tuple(x0[k].shape)}")
        if "video" in x0 and x0["video"].shape[2] != self.cfg.video_channels:
            raise ValueError(f"mmldm.py: video has {x0['video'].shape[2]} channels, the autoencoder "
                             f"{self.cfg.video_channels}")
        check(x0, "mmldm.py")

    def posterior(self, x0: dict, keep: dict | None = None) -> dict:
        """{modality: (mean, log-variance) (B, Z, h, w)} of q(z | x) for each modality in x0 (the encoders are
        per modality); where keep[k] is False, the modality's encoder sees zeros (its conditions dropped, MM-LDM
        get_input_*)."""
        self.check(x0, both=False)
        frames = {}
        if "video" in x0:
            frames["video"] = x0["video"][:, key_frames(x0["video"].shape[1], self.cfg.key_frames)]  # (B, K, C, H, W)
        if "audio" in x0:
            frames["audio"] = as_images("audio", x0["audio"], self.cfg)[:, None]  # (B, 1, p², M/p, T'/p)
        if keep is not None:
            frames = {k: v * keep[k].to(v.dtype).view(-1, 1, 1, 1, 1) for k, v in frames.items()}
        return {k: self.encoders[k](frames[k]) for k in MODALITIES if k in frames}

    def encode(self, x0: dict) -> dict:
        """{modality: z (B, Z, h, w)}: the posterior's mean, the latents a generator denoises; x0 may hold one
        modality (the known one of v2a or a2v)."""
        return {k: mean for k, (mean, _) in self.posterior(x0).items()}

    def semantic(self, z: dict) -> dict:
        """{modality: (B, D, h, w)}: the projectors on the latents, detached as MM-LDM detaches them (so L_cl and
        L_co train the projectors and heads, not the encoders)."""
        return {k: self.projectors[k](z[k].detach()) for k in MODALITIES}

    def decoding(self, z: dict, sem: dict, classes: torch.Tensor, index: torch.Tensor, keep: dict | None = None):
        """The decoder as a model for diffusion.py and sampling.py (Decoding)."""
        keep = keep or {k: torch.ones_like(classes, dtype=torch.bool) for k in MODALITIES}
        return Decoding(self, z, sem, classes, keep, index)

    def forward(self, diffusion, x0: dict, classes: torch.Tensor, generator=None, snr_gamma: float = 0.0):
        """The training loss (loss), as the forward pass, so that DistributedDataParallel syncs its gradients."""
        return self.loss(diffusion, x0, classes, generator, snr_gamma)

    def loss(self, diffusion, x0: dict, classes: torch.Tensor, generator=None, snr_gamma: float = 0.0):
        """The autoencoder's loss: the decoder's diffusion loss on `target_frames` random frames per clip and the
        whole mel (diffusion.joint_loss), + kl_weight·KL + classify_weight·L_cl + contrastive_weight·L_co.
        x0: the codec's {"video": (B, F, C, H, W), "audio": (B, M, T)}; classes (B,). Every random draw comes
        from `generator`. Returns (loss, {term: detached value})."""
        self.check(x0)
        video = x0["video"]
        (B, F_), device, cfg = video.shape[:2], video.device, self.cfg
        gen_device = generator.device if generator is not None else device

        def uniform(*shape):
            return torch.rand(shape, generator=generator, device=gen_device).to(device)

        keep = {k: uniform(B) >= cfg.cond_drop for k in MODALITIES}  # (B,) each
        posterior = self.posterior(x0, keep)
        z, kl = {}, 0
        for k, (mean, logvar) in posterior.items():
            # z ~ q(z | x), reparameterised, in training; its mean in eval mode (MM-LDM's mode())
            z[k] = mean + (0.5 * logvar).exp() * randn(mean.shape, generator, mean.device, mean.dtype) \
                if self.training else mean
            kl = kl + 0.5 * (mean ** 2 + logvar.exp() - 1 - logvar).sum((1, 2, 3)).mean()  # KL(q ‖ N(0, I))
        sem = self.semantic(z)
        l_cl = F.cross_entropy(self.classify(sem), classes)
        l_co = self.contrast(sem)
        pick = uniform(B, F_).argsort(1)[:, :min(cfg.target_frames, F_)].sort(1).values  # (B, F_t) frames to decode
        frames = torch.gather(video, 1, pick.view(*pick.shape, 1, 1, 1).expand(-1, -1, *video.shape[2:]))
        # frames: (B, F_t, C, H, W)
        model = self.decoding(z, sem, classes, pick / F_, keep)
        l_diff, mse = diffusion.joint_loss(model, {"video": frames, "audio": x0["audio"]}, generator=generator,
                                           snr_gamma=snr_gamma)
        loss = l_diff + cfg.kl_weight * kl + cfg.classify_weight * l_cl + cfg.contrastive_weight * l_co
        return loss, {"decoder": l_diff.detach(), **mse, "kl": kl.detach(), "classify": l_cl.detach(),
                      "contrastive": l_co.detach()}

    def decode(self, diffusion, z: dict, shapes: dict, sampler_cfg=None, generator=None, progress: bool = False,
               cond: dict | None = None, mask: dict | None = None, **overrides) -> dict:
        """Latents {modality: (B, Z, h, w)} (both: each modality's decoding reads the other's semantic tokens)
        -> the modalities of `shapes`, {"video": (B, F, C, H, W), "audio": (B, M, T)}, by sampling the decoder
        (sampling.sample with `sampler_cfg`, a SamplerConfig, overridden by keyword), every frame with its index
        f / F and the class the classify head predicts (MM-LDM's decode). cond, mask: known parts of the
        output, kept by sampling.Known's replacement (the kept prefix of a continuation)."""
        sem = self.semantic(z)
        classes = self.classify(sem).argmax(1)  # (B,)
        B = classes.shape[0]
        F_ = shapes["video"][1] if "video" in shapes else 1
        index = (torch.arange(F_, device=classes.device) / F_).expand(B, F_)  # (B, F)
        return sampling.sample(diffusion, self.decoding(z, sem, classes, index), shapes, sampler_cfg, cond=cond,
                               mask=mask, generator=generator, progress=progress, **overrides)


# ---- the generator's view of the latents (MM-LDM's second stage, Fig. 2) -----------------------------------


def latent_shapes(cfg: MMAEConfig, shapes: dict) -> dict:
    """The latents' shapes {modality: (B, Z, h, w)} for the codec's {"video": (B, F, C, H, W), "audio": (B, M, T)}:
    the frame's and the mel image's sides through the encoder's stride-2 levels."""
    B, M, T = shapes["audio"]
    sides = {"video": tuple(shapes["video"][-2:]), "audio": (M // cfg.audio_patch, -(-T // cfg.audio_patch))}
    return {k: (B, cfg.latent_channels, *level_sizes(sides[k], len(cfg.enc_mult(k)))[-1]) for k in MODALITIES}


def as_modalities(z: dict) -> dict:
    """Latents {modality: (B, Z, h, w)} (either or both) -> the modality dict that dit.DiT, diffusion.py and
    sampling.py take: the video latent as one frame (B, 1, Z, h, w), the audio latent's channels × rows as bins
    (B, Z·h, w), its columns (the mel's time, compressed) as time."""
    view = {"video": lambda v: v[:, None], "audio": lambda a: a.flatten(1, 2)}
    return {k: view[k](v) for k, v in z.items()}


def from_modalities(x: dict, audio_rows: int) -> dict:
    """as_modalities inverted; audio_rows: the audio latent's h."""
    view = {"video": lambda v: v[:, 0], "audio": lambda a: a.unflatten(1, (-1, audio_rows))}
    return {k: view[k](v) for k, v in x.items()}


def modality_shapes(latents: dict) -> dict:
    """latent_shapes' {modality: (B, Z, h, w)} -> the shapes as_modalities gives them."""
    return {k: tuple(v.shape) for k, v in as_modalities({k: torch.empty(s, device="meta")
                                                         for k, s in latents.items()}).items()}


def generator_config(cfg: MMAEConfig, latents: dict, duration: float, name: str = "cpu",
                     cond_modes: bool = True) -> dit.DiTConfig:
    """MM-LDM's generator, its DiT over the two content latents, as dit.py's DiT unchanged, with its trained
    conditional modes. latents: latent_shapes' {modality: (B, Z, h, w)}; duration: the clip's seconds. Every
    latent position is a token (patch 1, as MM-LDM's aist_gen_v2.yaml on its latents); the video latent, which
    has no time axis, sits at the clip's middle (fps = 1 / duration), and each audio column at the time of
    the mel steps it spans, so RoPE's times stay in seconds."""
    Z, rows = cfg.latent_channels, latents["audio"][2]
    steps_per_column = cfg.audio_patch * 2 ** (len(cfg.audio_enc_mult) - 1)  # mel steps per latent column
    return dit.preset(name, video_channels=Z, patch_size=1, audio_channels=Z * rows, audio_patch=1,
                      fps=1 / duration, mel_rate=melspec.SAMPLE_RATE / melspec.HOP / steps_per_column,
                      cond_modes=cond_modes)
