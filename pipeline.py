"""A trained model as the scripts use it: a checkpoint's config becomes the network, its diffusion, its
codecs, its clip geometry and its sampler settings (CMMD §3, App. B), so that a checkpoint alone is a model.

The config (`run_config`, stored whole in every checkpoint by train.py and mmdiffusion.py's converter):
  {"format": "cmmd-1", "model": a models.MODELS key, "net": network config, "diffusion": DiffusionConfig,
   "clip": ClipConfig, "codec": {"video": "sd" | "pixel", "audio": "mel" | "wave", "patch": the pixel codec's
   space-to-depth patch (absent: 1), "center": {modality: μ} (absent: none)}, "mel": the mel scale,
   "sampler": SamplerConfig fields the model needs (MM-Diffusion: its guidance form, clip_x0), "train": the run,
   MM-LDM's generator only: "autoencoder": {"net", "diffusion", "train"} of its frozen autoencoder, whose
   weights the checkpoint carries under AE_PREFIX}
The codecs share one interface: `encode`, `decode`, `channels`, and for video `factor` (vae.py), for
audio `steps(samples)` and `samples_per_step` (here). train.py, sample.py, demo.py and bench.py build
models only through this module.
"""
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

import checkpoint
import data
import diffusion
import melspec
import mmldm
import models
import sampling
import vae
from modalities import to_unit

FORMAT = "cmmd-1"
AE_PREFIX = "ae."  # an MM-LDM generator checkpoint's tensors of its frozen autoencoder


class MelCodec(torch.nn.Module):
    """Audio as normalised log-mel (CMMD §3): encode with melspec.py's front end, decode with a vocoder."""
    channels, samples_per_step = melspec.N_MELS, melspec.HOP

    def __init__(self, vocoder=None):
        super().__init__()
        self.vocoder = vocoder

    def encode(self, wav: torch.Tensor) -> torch.Tensor:  # (B, L) -> (B, M, L // 256)
        return melspec.wav_to_mel(wav)

    def steps(self, samples: int) -> int:  # T for L samples
        return samples // melspec.HOP

    def known_steps(self, known: torch.Tensor) -> torch.Tensor:
        """(B, L) bool of known samples -> (B, T) bool of mel steps whose whole STFT window is known: step j
        reads samples 256·j − 128 … 256·j + 383 (melspec.mel_magnitude's reflect padding and 512 window)."""
        pad = (melspec.N_FFT - melspec.HOP) // 2
        unknown = F.max_pool1d(F.pad((~known).float()[:, None], (pad, pad)), melspec.N_FFT, melspec.HOP)[:, 0]  # (B, T)
        return unknown[:, :self.steps(known.shape[1])] == 0

    def decode(self, mel: torch.Tensor) -> torch.Tensor:  # (B, M, T) -> (B, 256·T)
        if self.vocoder is None:
            import melgan
            self.vocoder = melgan.Vocoder(None)
        return self.vocoder(mel)


class WaveCodec(torch.nn.Module):
    """Audio as the raw waveform (MM-Diffusion): (B, L) <-> (B, 1, L)."""
    channels, samples_per_step = 1, 1

    def encode(self, wav: torch.Tensor) -> torch.Tensor:
        return wav[:, None]  # (B, 1, L)

    def steps(self, samples: int) -> int:
        return samples

    def known_steps(self, known: torch.Tensor) -> torch.Tensor:  # (B, L) -> (B, L): one step per sample
        return known

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, 0].clamp(-1, 1)  # (B, L)


class Centered(torch.nn.Module):
    """A codec whose output has its mean over the training clips subtracted: encode z − μ, decode z + μ,
    exactly reversible; everything else is the wrapped codec's.
    [choice] Raw pixels are far from zero mean (the synthetic clips: mean −0.80 in [-1, 1], std 0.27), so
    at every noise level most of xₙ's signal is one constant, and a small network learns the scene and the
    low-noise denoising slowly (measured: the video x̂₀ error of a 1 500-step demo model stayed at the noise's
    own size for n ≤ 300 without centring, and fell to a quarter of it with). Scaling to unit variance as
    latent diffusion does (Rombach et al. 2022) was measured too: it helps at mid noise but makes the low-noise
    steps slower to learn, so only the mean is removed. μ is measured once per run (train.py --center) and
    stored in its checkpoint config."""

    def __init__(self, codec: torch.nn.Module, mean: float):
        super().__init__()
        if not math.isfinite(mean):
            raise ValueError(f"pipeline.py: a codec's mean must be finite, got {mean}")
        self.codec, self.mean = codec, float(mean)

    def __getattr__(self, name):  # channels, factor, steps, known_steps, vocoder, ...: the codec's
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.codec, name)

    def encode(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        return self.codec.encode(x, *args, **kwargs) - self.mean

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.codec.decode(z + self.mean)


def encode_batch(batch: dict, codecs: dict, device) -> dict:
    """Dataset windows -> model-space windows {"video": (B, Fw, c, h, w), "audio": (B, M, Tw)}."""
    with torch.no_grad():
        if "latents" in batch and isinstance(getattr(codecs["video"], "codec", codecs["video"]), vae.SDVAECodec):
            video = batch["latents"].to(device).float()  # the shards' SD-VAE latents, encoded once
            if isinstance(codecs["video"], Centered):
                video = video - codecs["video"].mean
        else:
            video = codecs["video"].encode(to_unit(batch["video"].to(device)))
        return {"video": video, "audio": codecs["audio"].encode(batch["audio"].to(device))}


STATS_CLIPS = 256  # training clips whose codec outputs give a run's μ (Centered)


def codec_means(codecs: dict, dataset, device) -> dict:
    """{modality: mean} of the codecs' outputs over the first STATS_CLIPS clips of `dataset`."""
    items = [dataset[i] for i in range(min(len(dataset), STATS_CLIPS))]
    sums = {}
    for lo in range(0, len(items), 32):
        z = encode_batch(torch.utils.data.default_collate(items[lo:lo + 32]), codecs, device)
        for k, x in z.items():
            s = sums.setdefault(k, [0.0, 0])
            s[0], s[1] = s[0] + x.double().sum().item(), s[1] + x.numel()
    return {k: total / count for k, (total, count) in sums.items()}


def run_config(cfg, init_meta: dict | None = None) -> dict:
    """The self-describing config of a train.py run (`cfg` a train.TrainConfig); a fine-tune (`init_meta`,
    its parent's config) keeps the parent's network, codecs and clip geometry."""
    if init_meta is not None:
        return {**init_meta, "train": asdict(cfg)}
    clip = data.ClipConfig(frames=cfg.frames, size=cfg.size)
    fam = models.family(cfg.model)
    recipe = fam.recipe(cfg.as_cmmd)  # the diffusion, audio codec and sampler: the family's or CMMD's
    codec = {"video": cfg.vae, "audio": recipe.audio_codec, **({"patch": cfg.patch} if cfg.patch != 1 else {})}
    meta = {"format": FORMAT, "model": cfg.model, "diffusion": asdict(recipe.diffusion()), "clip": asdict(clip),
            "codec": codec, "mel": {"log_min": melspec.LOG_MEL_MIN, "log_max": melspec.LOG_MEL_MAX},
            "sampler": dict(recipe.sampler), "train": asdict(cfg)}
    if cfg.model == "mmldm":  # MM-LDM's generator: its autoencoder's codecs, clip and the autoencoder itself
        ae = checkpoint.config(cfg.ae)
        meta.update(clip=ae["clip"], codec=ae["codec"], mel=ae["mel"],
                    autoencoder={"net": ae["net"], "diffusion": ae["diffusion"], "train": ae["train"]})
        clip = data.ClipConfig(**ae["clip"])
    return {**meta, "net": fam.net_config(cfg, clip)}


# sample.py's default: the cheapest setting that matched the paper's sampler (sampling.PAPER_SAMPLER) on held-out
# clips, with and without guidance (experiments/samplers.py, cheapest_match)
DEFAULT_SAMPLER = {"sampler": "dpmsolver++", "steps": 25}
# Beside a run's checkpoints: the sampler settings chosen for them on validation clips, per mode (demo.py writes
# its own there)
RUN_SETTINGS = "sampling.json"


def run_settings(ckpt, mode: str) -> dict:
    """The sampler settings (SamplerConfig fields) chosen for `mode` in the RUN_SETTINGS file beside `ckpt`:
    {"v2a": {"sampler": "ddim", "steps": 25, "guidance": 3.0}, ...}; {} without one."""
    f = Path(ckpt).parent / RUN_SETTINGS
    if not f.is_file():
        return {}
    try:
        chosen = json.loads(f.read_text()).get(mode, {})
        sampling.SamplerConfig(**chosen)  # names and values checked before any work
    except (OSError, ValueError, TypeError, AttributeError) as e:
        raise checkpoint.CheckpointError(f"{f}: not sampler settings per mode ({type(e).__name__}: "
                                         f"{str(e).splitlines()[0] if str(e) else ''})") from None
    return chosen


@dataclass
class Pipeline:
    """Everything sampling needs from one checkpoint."""
    net: torch.nn.Module
    diffusion: diffusion.Diffusion
    codecs: dict  # {"video": vae codec, "audio": MelCodec | WaveCodec}
    clip: data.ClipConfig
    config: dict  # the checkpoint's whole config
    path: Path | None = None
    autoencoder: torch.nn.Module | None = None  # MM-LDM's (mmldm.MMAutoencoder): the net then denoises its latents
    ae_diffusion: diffusion.Diffusion | None = None  # the autoencoder's decoder's diffusion

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device

    def sampler(self, mode: str | None = None, **flags) -> sampling.SamplerConfig:
        """The sampler settings, decided here only, in this precedence: the flags given (None: unset), then
        the run's RUN_SETTINGS for `mode`, then the checkpoint's config, then DEFAULT_SAMPLER."""
        chosen = run_settings(self.path, mode) if mode and self.path else {}
        given = {k: v for k, v in flags.items() if v is not None}
        return sampling.SamplerConfig(**{**DEFAULT_SAMPLER, **self.config.get("sampler", {}), **chosen, **given})

    def shapes(self, batch: int, frames: int) -> dict:
        """Model-space shapes of `frames` frames: {"video": (B, F, C, h, w), "audio": (B, M, T)}."""
        side = self.clip.size // self.codecs["video"].factor
        T = self.codecs["audio"].steps(frames * self.clip.samples_per_frame)
        return {"video": (batch, frames, self.codecs["video"].channels, side, side),
                "audio": (batch, self.codecs["audio"].channels, T)}

    def net_shapes(self, batch: int, frames: int) -> dict:
        """The shapes the network denoises: the codecs' (shapes), or MM-LDM's latents of them as modalities."""
        shapes = self.shapes(batch, frames)
        if self.autoencoder is None:
            return shapes
        return mmldm.modality_shapes(mmldm.latent_shapes(self.autoencoder.cfg, shapes))

    def latents(self, x: dict) -> dict:
        """Codec-space clips of the training length -> MM-LDM's latents as modalities (the generator's x₀)."""
        with torch.no_grad():
            return mmldm.as_modalities(self.autoencoder.encode(x))


def build(meta: dict, vae_path: str | None = None, vocoder=None, path=None) -> Pipeline:
    """The untrained Pipeline a config describes; a config that lacks a field or has a wrong one is a
    CheckpointError naming `path`."""
    if meta.get("model") == "mmdiffusion" and "sampler" not in meta:  # written before configs had "sampler"
        meta = {**meta, "sampler": dict(models.MODELS["mmdiffusion"].sampler)}
    try:
        if meta.get("format") != FORMAT:
            raise KeyError("format")
        if meta["model"] not in models.MODELS:
            raise KeyError("model")
        fam = models.MODELS[meta["model"]]
        net = fam.network(fam.config(**meta["net"]))
        codecs = {"video": vae.make_codec(meta["codec"]["video"], vae_path or meta["train"]["vae_path"],
                                          patch=meta["codec"].get("patch", 1)),
                  "audio": {"mel": MelCodec, "wave": WaveCodec}[meta["codec"]["audio"]]()}
        if vocoder is not None and isinstance(codecs["audio"], MelCodec):
            codecs["audio"].vocoder = vocoder
        for k, mean in meta["codec"].get("center", {}).items():
            codecs[k] = Centered(codecs[k], mean)
        diff = diffusion.Diffusion(diffusion.DiffusionConfig(**meta["diffusion"]))
        clip = data.ClipConfig(**meta["clip"])
        sampling.SamplerConfig(**meta.get("sampler", {}))
        ae = ae_diff = None
        if meta["model"] == "mmldm":
            ae = mmldm.MMAutoencoder(mmldm.MMAEConfig(**meta["autoencoder"]["net"])).eval().requires_grad_(False)
            ae_diff = diffusion.Diffusion(diffusion.DiffusionConfig(**meta["autoencoder"]["diffusion"]))
    except KeyError as e:
        raise checkpoint.CheckpointError(
            f"{path}: its config lacks or has a wrong field {e} (not a {FORMAT} config)") from None
    except TypeError as e:  # a dataclass given a field it does not have
        raise checkpoint.CheckpointError(f"{path}: its config does not fit this code ({e})") from None
    return Pipeline(net, diff, codecs, clip, meta, Path(path) if path else None, ae, ae_diff)


def compile_net(net: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """The network under torch.compile for sampling: on CUDA with mode "reduce-overhead", which captures
    the forward (and guidance's backward) in CUDA graphs with static input buffers, so a batch-1 step of a
    small latent is not bound by kernel launches; elsewhere the default mode (fused kernels, no graphs).
    The first calls compile (tens of seconds); outputs equal the eager network's to rounding."""
    return torch.compile(net, mode="reduce-overhead" if device.type == "cuda" else "default", dynamic=False)


def load(path, device="cpu", weights: str = "ema", vae_path: str | None = None, vocoder=None) -> Pipeline:
    """A trained Pipeline from a checkpoint, in eval mode on `device`: "ema" or "model" (raw) weights."""
    meta, tensors = checkpoint.read(path)
    pipe = build(meta, vae_path, vocoder, path)
    checkpoint.load_strict(pipe.net, tensors, f"{weights}.", path)
    pipe.net.to(device).eval()
    if pipe.autoencoder is not None:  # MM-LDM: its autoencoder's (EMA) weights travel in the generator's file
        checkpoint.load_strict(pipe.autoencoder, tensors, AE_PREFIX, path, "the autoencoder").to(device)
    pipe.codecs = {k: c.to(device) for k, c in pipe.codecs.items()}
    return pipe
