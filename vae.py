"""Video codecs: the Stable Diffusion VAE (Rombach et al. 2022, "High-Resolution Image Synthesis with
Latent Diffusion Models", the KL-regularised autoencoder with f = 8 and 4 latent channels) and the
identity pixel codec.

CMMD (§3 "Feature Extraction", App. B) diffuses video in the latent space of the pre-trained, frozen
`stabilityai/sd-vae-ft-mse`: every frame encoded on its own, 128 px -> 4×16×16, and scaled by 0.18215 to
roughly unit variance. The MM-Diffusion baseline and tiny CPU runs diffuse pixels through `PixelCodec`.
Both codecs share one interface (`encode`, `decode`, `channels`, `factor`); the network, samplers, train.py
and sample.py use only that.
The autoencoder is written here from scratch with diffusers' parameter names, so the published weights load
with strict=True (`convert_legacy_attention` renames older checkpoints' four attention keys).

Where the codec is chosen, and the parameter names: docs/codecs.md.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import huggingface_hub
import torch
import torch.nn.functional as F
from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError
from safetensors.torch import load_file
from torch import nn

import checkpoint
from checkpoint import CheckpointError

HUB_ID = "stabilityai/sd-vae-ft-mse"  # the VAE CMMD uses (App. B)
CONFIG_NAME = "config.json"  # diffusers file names
WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
HUB_SUBFOLDER = "vae"  # where a full Stable Diffusion pipeline repo keeps its VAE
NORM_EPS = 1e-6  # GroupNorm epsilon of the LDM autoencoder (hard-coded in diffusers' AutoencoderKL)
LOGVAR_RANGE = (-30.0, 20.0)  # posterior log-variance clamp (LDM DiagonalGaussianDistribution)
DEFAULT_CHUNK = 8  # frames per VAE call: 36 frames × 512 px decode in bounded memory, see SDVAECodec
LEGACY_ATTENTION_NAMES = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}

# diffusers config.json fields whose value must be the SD default, because only that variant is written
# here. Fields not listed here nor in VAEConfig (sample_size, force_upcast, _class_name, ...) are ignored.
REQUIRED_VALUES = {
    "act_fn": "silu",
    "use_quant_conv": True,
    "use_post_quant_conv": True,
    "mid_block_add_attention": True,
    "shift_factor": None,
    "latents_mean": None,
    "latents_std": None,
}
REQUIRED_BLOCK_TYPES = {"down_block_types": "DownEncoderBlock2D", "up_block_types": "UpDecoderBlock2D"}


@dataclass
class VAEConfig:
    """The fields of a diffusers AutoencoderKL config.json that shape the network (SD defaults)."""
    in_channels: int = 3
    out_channels: int = 3
    block_out_channels: tuple[int, ...] = (128, 256, 512, 512)
    layers_per_block: int = 2
    latent_channels: int = 4
    norm_num_groups: int = 32
    scaling_factor: float = 0.18215  # SD v1 `scale_factor`: latents × 1/σ (Rombach et al. 2022, §4.3.2)

    @classmethod
    def from_diffusers(cls, config: dict, source: str = "config.json") -> "VAEConfig":
        """Read a diffusers config.json dict; unsupported variants stop with one line naming `source`."""
        for key, want in REQUIRED_VALUES.items():
            if config.get(key, want) != want:
                raise CheckpointError(f"{source}: {key}={config[key]!r} is not supported (only {want!r})")
        for key, want in REQUIRED_BLOCK_TYPES.items():
            if any(t != want for t in config.get(key, [want])):
                raise CheckpointError(f"{source}: {key}={config[key]!r} is not supported (only {want})")
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in config.items() if k in names and v is not None}
        if "block_out_channels" in kwargs:
            kwargs["block_out_channels"] = tuple(kwargs["block_out_channels"])
        return cls(**kwargs)


class ResnetBlock(nn.Module):
    """GroupNorm-SiLU-conv twice plus a skip (a 1×1 conv when the width changes); no time embedding."""

    def __init__(self, c_in: int, c_out: int, groups: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, c_in, eps=NORM_EPS)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.norm2 = nn.GroupNorm(groups, c_out, eps=NORM_EPS)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.conv_shortcut = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        skip = x if self.conv_shortcut is None else self.conv_shortcut(x)
        return skip + h


class SelfAttention(nn.Module):
    """Single-head self-attention over all H×W positions with a residual (the VAE mid-block)."""

    def __init__(self, c: int, groups: int):
        super().__init__()
        self.group_norm = nn.GroupNorm(groups, c, eps=NORM_EPS)
        self.to_q, self.to_k, self.to_v = nn.Linear(c, c), nn.Linear(c, c), nn.Linear(c, c)
        self.to_out = nn.ModuleList([nn.Linear(c, c)])  # `to_out.0`, the diffusers name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        N, C, H, W = x.shape
        h = self.group_norm(x).flatten(2).transpose(1, 2)  # (N, H*W, C)
        q, k, v = self.to_q(h), self.to_k(h), self.to_v(h)  # (N, H*W, C) each; one head of width C
        h = F.scaled_dot_product_attention(q, k, v)  # (N, H*W, C), softmax(q kᵀ / √C) v
        h = self.to_out[0](h).transpose(1, 2).reshape(N, C, H, W)  # (N, C, H, W)
        return x + h


class MidBlock(nn.Module):
    """ResNet block, self-attention, ResNet block at the lowest resolution."""

    def __init__(self, c: int, groups: int):
        super().__init__()
        self.resnets = nn.ModuleList([ResnetBlock(c, c, groups), ResnetBlock(c, c, groups)])
        self.attentions = nn.ModuleList([SelfAttention(c, groups)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.resnets[1](self.attentions[0](self.resnets[0](x)))


class Downsample(nn.Module):
    """Stride-2 3×3 conv after padding only right and bottom (the LDM convention; halves H and W)."""

    def __init__(self, c: int):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    """Nearest-neighbour ×2 then a 3×3 conv (doubles H and W)."""

    def __init__(self, c: int):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Stage(nn.Module):
    """One resolution level: `n` ResNet blocks, then an optional resampler (diffusers' Down/UpBlock)."""

    def __init__(self, c_in: int, c_out: int, n: int, groups: int, resample: str | None):
        super().__init__()
        self.resnets = nn.ModuleList([ResnetBlock(c_in if i == 0 else c_out, c_out, groups) for i in range(n)])
        if resample == "down":
            self.downsamplers = nn.ModuleList([Downsample(c_out)])
        elif resample == "up":
            self.upsamplers = nn.ModuleList([Upsample(c_out)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for resnet in self.resnets:
            x = resnet(x)
        for resampler in getattr(self, "downsamplers", getattr(self, "upsamplers", [])):
            x = resampler(x)
        return x


class Encoder(nn.Module):
    """Image (N, 3, H, W) -> posterior moments (N, 2·latent, H/f, W/f), f = 2^(levels-1)."""

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        chs, G = cfg.block_out_channels, cfg.norm_num_groups
        self.conv_in = nn.Conv2d(cfg.in_channels, chs[0], 3, padding=1)
        self.down_blocks = nn.ModuleList([
            Stage(chs[max(i - 1, 0)], c, cfg.layers_per_block, G, "down" if i < len(chs) - 1 else None)
            for i, c in enumerate(chs)])
        self.mid_block = MidBlock(chs[-1], G)
        self.conv_norm_out = nn.GroupNorm(G, chs[-1], eps=NORM_EPS)
        self.conv_out = nn.Conv2d(chs[-1], 2 * cfg.latent_channels, 3, padding=1)  # mean and log-variance

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for block in self.down_blocks:
            h = block(h)
        return self.conv_out(F.silu(self.conv_norm_out(self.mid_block(h))))


class Decoder(nn.Module):
    """Latent (N, latent, h, w) -> image (N, 3, f·h, f·w); one more ResNet block per level than the encoder."""

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        chs, G = tuple(reversed(cfg.block_out_channels)), cfg.norm_num_groups
        self.conv_in = nn.Conv2d(cfg.latent_channels, chs[0], 3, padding=1)
        self.mid_block = MidBlock(chs[0], G)
        self.up_blocks = nn.ModuleList([
            Stage(chs[max(i - 1, 0)], c, cfg.layers_per_block + 1, G, "up" if i < len(chs) - 1 else None)
            for i, c in enumerate(chs)])
        self.conv_norm_out = nn.GroupNorm(G, chs[-1], eps=NORM_EPS)
        self.conv_out = nn.Conv2d(chs[-1], cfg.out_channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid_block(self.conv_in(z))
        for block in self.up_blocks:
            h = block(h)
        return self.conv_out(F.silu(self.conv_norm_out(h)))


class AutoencoderKL(nn.Module):
    """The KL autoencoder of Rombach et al. 2022 (LDM §3.1), on single images; latents are unscaled."""

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        self.quant_conv = nn.Conv2d(2 * cfg.latent_channels, 2 * cfg.latent_channels, 1)
        self.post_quant_conv = nn.Conv2d(cfg.latent_channels, cfg.latent_channels, 1)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Image (N, 3, H, W) -> posterior mean and log-variance, (N, latent, H/f, W/f) each."""
        mean, logvar = self.quant_conv(self.encoder(x)).chunk(2, dim=1)
        return mean, logvar.clamp(*LOGVAR_RANGE)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Latent (N, latent, h, w) -> image (N, 3, f·h, f·w)."""
        return self.decoder(self.post_quant_conv(z))


def convert_legacy_attention(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename the older diffusers mid-block attention weights (query/key/value/proj_attn) to to_q/...;
    original-LDM 1×1-conv shapes (C, C, 1, 1) become Linear (C, C). Every other key is left alone."""
    out = {}
    for key, value in state.items():
        *path, leaf, kind = key.split(".")
        if ".mid_block.attentions." in key and leaf in LEGACY_ATTENTION_NAMES and kind in ("weight", "bias"):
            key = ".".join([*path, LEGACY_ATTENTION_NAMES[leaf], kind])
            value = value.flatten(1) if value.ndim == 4 else value  # (C, C, 1, 1) -> (C, C)
        out[key] = value
    return out


def _load_dir(config_path: Path, weights_path: Path) -> AutoencoderKL:
    """Build the VAE from a diffusers config.json and load its safetensors strictly."""
    try:
        config = json.loads(config_path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{config_path}: cannot read the VAE config ({type(e).__name__})") from None
    vae = AutoencoderKL(VAEConfig.from_diffusers(config, str(config_path)))
    with checkpoint.reading(weights_path, "VAE weights file") as path:
        state = convert_legacy_attention(load_file(str(path)))
    return checkpoint.load_strict(vae, state, "", weights_path, f"the VAE of {config_path.name}").eval()


def _download(repo_id: str) -> tuple[Path, Path]:
    """Fetch config.json and the safetensors from the Hub (repo root, else its vae/ subfolder)."""
    hint = (f"cannot download the VAE '{repo_id}' from the Hugging Face Hub ({{err}}); on a machine with "
            f"internet run `hf download {repo_id} {CONFIG_NAME} {WEIGHTS_NAME} --local-dir DIR` (older "
            f"huggingface_hub: `huggingface-cli download`), copy DIR here and pass `--vae-path DIR`")
    for subfolder in (None, HUB_SUBFOLDER):
        try:
            return tuple(Path(huggingface_hub.hf_hub_download(repo_id, name, subfolder=subfolder))
                         for name in (CONFIG_NAME, WEIGHTS_NAME))
        except EntryNotFoundError as e:
            # The repo answered but lacks the file: try the pipeline layout. A LocalEntryNotFoundError is
            # also an EntryNotFoundError, but means "offline and not cached": stop there.
            if isinstance(e, LocalEntryNotFoundError) or subfolder == HUB_SUBFOLDER:
                raise CheckpointError(hint.format(err=type(e).__name__)) from None
        except Exception as e:  # offline, unknown repo, gated, HTTP error: all end the same way
            raise CheckpointError(hint.format(err=type(e).__name__)) from None
    raise AssertionError("unreachable")


def load_vae(source: str | Path = HUB_ID) -> AutoencoderKL:
    """Load the VAE from a local diffusers directory (config.json + diffusion_pytorch_model.safetensors,
    or a pipeline directory with a vae/ subfolder) or from a Hub repo id; returns it in eval mode."""
    path = Path(source).expanduser()
    if path.is_dir():
        for folder in (path, path / HUB_SUBFOLDER):
            if (folder / CONFIG_NAME).is_file() and (folder / WEIGHTS_NAME).is_file():
                return _load_dir(folder / CONFIG_NAME, folder / WEIGHTS_NAME)
        raise CheckpointError(f"{path}: no {CONFIG_NAME} + {WEIGHTS_NAME} here or in {HUB_SUBFOLDER}/ "
                              f"(a .bin checkpoint must be converted to safetensors)")
    if path.exists() or str(source).count("/") != 1 or str(source).startswith((".", "/", "~")):
        raise CheckpointError(f"{source}: not a VAE directory nor a Hub repo id like '{HUB_ID}'")
    return _load_dir(*_download(str(source)))


def _flat_frames(x: torch.Tensor, c: int, what: str) -> torch.Tensor:
    assert x.ndim == 5 and x.shape[2] == c, f"{what} must be (B, F, {c}, H, W), got {tuple(x.shape)}"
    assert x.is_floating_point(), f"{what} must be a float tensor, got {x.dtype}"
    return x.flatten(0, 1)  # (B*F, c, H, W)


class SDVAECodec(nn.Module):
    """Frames (B, F, 3, H, W) in [-1, 1] <-> SD latents (B, F, 4, H/8, W/8) × scaling_factor (CMMD §3).

    The VAE is frozen (CMMD never trains it). Frames go through it `chunk` at a time, so memory is set by
    the chunk, not by B·F: at 512 px one decoder activation is 128×512×512 floats (134 MB in fp32) per
    frame, which 36 test frames in one call would multiply into tens of GB. Computation runs where
    the VAE's weights are, under bf16 autocast on CUDA (bf16 keeps fp32's range; fp16 overflows in this
    VAE, which is why diffusers marks it force_upcast) and in fp32 elsewhere; results are float32 on the
    input's device.
    """

    def __init__(self, vae: AutoencoderKL, chunk: int = DEFAULT_CHUNK,
                 autocast_dtype: torch.dtype | None = torch.bfloat16):
        super().__init__()
        assert chunk >= 1, f"chunk must be >= 1, got {chunk}"
        self.vae = vae.eval().requires_grad_(False)
        self.chunk, self.autocast_dtype = chunk, autocast_dtype
        self.channels = vae.cfg.latent_channels
        self.factor = 2 ** (len(vae.cfg.block_out_channels) - 1)
        self.scaling_factor = vae.cfg.scaling_factor

    def _run(self, fn, x: torch.Tensor) -> torch.Tensor:
        """Apply `fn` to x (N, ...) in chunks of frames on the VAE's device; float32 on x's device."""
        weight = self.vae.post_quant_conv.weight
        on_cuda = weight.device.type == "cuda" and self.autocast_dtype is not None
        amp = torch.autocast("cuda", dtype=self.autocast_dtype) if on_cuda else contextlib.nullcontext()
        outs = []
        with amp:
            for part in x.split(self.chunk):
                outs.append(fn(part.to(weight.device, weight.dtype)).float().to(x.device))
        return torch.cat(outs)

    def encode(self, frames: torch.Tensor, sample: bool = False,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """Frames (B, F, 3, H, W) in [-1, 1] -> scaled latents (B, F, 4, H/8, W/8): the posterior mean, or a
        posterior sample when `sample` (noise drawn once for all frames, so it does not depend on `chunk`)."""
        x = _flat_frames(frames, 3, "frames")  # (B*F, 3, H, W)
        B, nF, _, H, W = frames.shape
        assert H % self.factor == 0 and W % self.factor == 0, \
            f"frame size must be a multiple of {self.factor}, got {H}×{W}"
        moments = self._run(lambda part: torch.cat(self.vae.encode(part), dim=1), x)  # (B*F, 8, h, w)
        mean, logvar = moments.chunk(2, dim=1)  # (B*F, 4, h, w) each
        z = mean
        if sample:
            dev = generator.device if generator is not None else mean.device
            eps = torch.randn(mean.shape, generator=generator, device=dev).to(mean.device)
            z = mean + (0.5 * logvar).exp() * eps  # z ~ N(μ, σ²), the reparameterised posterior sample
        z = z * self.scaling_factor  # about unit-variance latents (Rombach et al. 2022, §4.3.2)
        return z.reshape(B, nF, *z.shape[1:])  # (B, F, 4, h, w)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents (B, F, 4, h, w) -> frames (B, F, 3, 8h, 8w), about [-1, 1] (not clamped)."""
        z = _flat_frames(latents, self.channels, "latents") / self.scaling_factor  # (B*F, 4, h, w)
        B, nF = latents.shape[:2]
        x = self._run(self.vae.decode, z)  # (B*F, 3, H, W)
        return x.reshape(B, nF, *x.shape[1:])  # (B, F, 3, H, W)


class PixelCodec(nn.Module):
    """Diffusion on pixels (MM-Diffusion; CPU runs), optionally through a space-to-depth rearrangement:
    each p×p patch of a frame becomes 3·p² channels at one position (pixel_unshuffle; Shi et al. 2016),
    exactly reversible. patch 1 is the identity. [choice] The demo's 16 px frames go in with p = 2, so its
    video path works on 8×8 positions of 12 values, a quarter of the positions, which pays for a wider
    network (p = 4 was tried: its audio→video learnt less). channels = 3·p², factor = p."""

    def __init__(self, patch: int = 1):
        super().__init__()
        if patch < 1:
            raise ValueError(f"vae.py: the pixel codec's patch must be at least 1, got {patch}")
        self.patch, self.channels, self.factor = patch, 3 * patch * patch, patch

    def encode(self, frames: torch.Tensor, sample: bool = False,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """Frames (B, F, 3, H, W) -> (B, F, 3·p², H/p, W/p); `sample` and `generator` exist for the shared signature."""
        x = _flat_frames(frames, 3, "frames")  # (B*F, 3, H, W)
        if self.patch == 1:
            return frames
        B, nF, _, H, W = frames.shape
        assert H % self.patch == 0 and W % self.patch == 0, \
            f"frame size must be a multiple of {self.patch}, got {H}×{W}"
        return F.pixel_unshuffle(x, self.patch).view(B, nF, self.channels, H // self.patch, W // self.patch)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, F, 3·p², h, w) -> frames (B, F, 3, p·h, p·w)."""
        z = _flat_frames(latents, self.channels, "latents")  # (B*F, 3·p², h, w)
        if self.patch == 1:
            return latents
        B, nF, _, h, w = latents.shape
        return F.pixel_shuffle(z, self.patch).view(B, nF, 3, h * self.patch, w * self.patch)


def make_codec(name: str, path: str | Path | None = None, chunk: int = DEFAULT_CHUNK, patch: int = 1) -> nn.Module:
    """"sd": SDVAECodec of the VAE at `path` (a local directory or Hub id; default HUB_ID); "pixel":
    PixelCodec with space-to-depth patches of `patch` pixels."""
    if name == "sd":
        return SDVAECodec(load_vae(path if path is not None else HUB_ID), chunk=chunk)
    if name == "pixel":
        return PixelCodec(patch)
    raise ValueError(f"unknown codec '{name}' (choose 'sd' or 'pixel')")
