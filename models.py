"""The model registry: each model family with its network's config class and network class, its presets,
its diffusion, its audio codec, its codec rules and the sampler settings it needs. pipeline.py, train.py and
bench.py read it; adding a family is one entry here plus its file.
"""
import dataclasses
from dataclasses import asdict, dataclass, field
from typing import Callable

import checkpoint
import diffusion
import dit
import melspec
import mmldm
import mmunet  # also supplies the "mmdiffusion" guidance form to sampling.py
import unet


@dataclass(frozen=True)
class Family:
    """One model family. net_config(train config, clip) -> the network's config as a dict, after checking the
    run's codec choices (raises ValueError naming the flag)."""
    summary: str
    config: type
    network: type
    presets: tuple
    preset: Callable  # (name, **fields) -> the network's config
    net_config: Callable
    diffusion: Callable = diffusion.DiffusionConfig
    audio_codec: str = "mel"  # "mel" (CMMD §3) or "wave" (a raw waveform, MM-Diffusion)
    sampler: dict = field(default_factory=dict)  # SamplerConfig fields the model needs

    def build(self, preset: str, **fields):
        """The untrained network of a named preset, its config's fields overridden by keyword."""
        return self.network(self.preset(preset, **fields))

    def recipe(self, as_cmmd: bool) -> "Family":
        """The family whose diffusion, audio codec and sampler a run uses: its own, or with --as-cmmd CMMD's,
        so that only the network differs from a CMMD run (the study's architecture comparison)."""
        return MODELS["cmmd"] if as_cmmd else self


def video_channels(cfg) -> int:
    """The video codec's channels: 4 SD-VAE latent channels, or 3·p² for the patch-p pixel codec."""
    if cfg.vae == "sd" and cfg.patch != 1:
        raise ValueError("--patch is the pixel codec's; the SD-VAE has its own factor 8 (use --patch 1)")
    return 4 if cfg.vae == "sd" else 3 * cfg.patch ** 2


def video_side(vae: str, patch: int, size: int) -> int:
    """The video codec's latent side: H/8 for the SD-VAE, H/p for the patch-p pixel codec (vae.py's `factor`)."""
    return size // (8 if vae == "sd" else patch)


def no_trained_conditions(cfg, model: str) -> None:
    """Trained conditional modes (--cond-tasks) need a network that takes a clean condition, and captions
    (--text-encoder) one that reads them: the DiT's."""
    if cfg.cond_tasks > 0:
        raise ValueError(f"--cond-tasks {cfg.cond_tasks:g}: {model} conditions by replacement and guidance at "
                         "sampling; trained conditional modes are the DiT's (--model dit)")
    if cfg.text_encoder:
        raise ValueError(f"--text-encoder {cfg.text_encoder}: {model} takes no caption; text conditions the DiT "
                         "(--model dit)")


def cmmd_net(cfg, clip) -> dict:
    """The easy-fusion U-Net on SD-VAE latents (4 channels) or the patch-p pixel codec (3·p² channels)."""
    no_trained_conditions(cfg, "CMMD's U-Net")
    return asdict(unet.preset(cfg.preset, video_channels=video_channels(cfg), fusion=cfg.fusion))


def dit_net(cfg, clip) -> dict:
    """The joint DiT on the same codecs, with trained conditional modes when --cond-tasks > 0."""
    if not cfg.fusion:
        raise ValueError("--no-fusion is the U-Net's ablation; the DiT's streams meet in joint attention")
    return asdict(dit.preset(cfg.preset, video_channels=video_channels(cfg), fps=clip.fps,
                             cond_modes=cfg.cond_tasks > 0,
                             text={"encoder": cfg.text_encoder} if cfg.text_encoder else None))


def mmdiffusion_net(cfg, clip) -> dict:
    """MM-Diffusion's coupled U-Net on pixels and the waveform in [-1, 1]; its full size is its official one.
    With --as-cmmd, on CMMD's representations instead: the video codec the flags choose (3·p² channels on
    H/p × W/p, or SD-VAE latents) and the mel's M bins as the audio path's channels over its T steps."""
    no_trained_conditions(cfg, "MM-Diffusion")
    if cfg.as_cmmd:
        side = video_side(cfg.vae, cfg.patch, clip.size)
        return asdict(mmdiffusion_preset(cfg.preset, frames=clip.frames, image_size=side,
                                         video_channels=video_channels(cfg), audio_channels=melspec.N_MELS,
                                         audio_samples=clip.mel_steps))
    if cfg.vae != "pixel" or cfg.patch != 1 or cfg.center:
        raise ValueError("--model mmdiffusion works on pixels and waveforms in [-1, 1]: use --vae pixel --patch 1 "
                         "--no-center, or --as-cmmd for CMMD's representations")
    return asdict(mmdiffusion_preset(cfg.preset, frames=clip.frames, image_size=clip.size, audio_samples=clip.samples))


def mmldm_ae_net(cfg, clip) -> dict:
    """MM-LDM's first stage, its multi-modal autoencoder, on the video codec the flags choose and the mel."""
    no_trained_conditions(cfg, "MM-LDM's autoencoder")
    if not cfg.fusion:
        raise ValueError("--no-fusion is the U-Net's ablation; MM-LDM's decoder reads the other modality's tokens")
    return asdict(mmldm.preset(cfg.preset, video_channels=video_channels(cfg)))


def mmldm_net(cfg, clip) -> dict:
    """MM-LDM's second stage: the DiT over the latents of the autoencoder checkpoint --ae (mmldm.generator_config),
    with trained conditional modes when --cond-tasks > 0. `clip` is the autoencoder's."""
    no_trained_conditions(dataclasses.replace(cfg, cond_tasks=0.0), "MM-LDM's generator")  # no captions here
    if cfg.ae is None:
        raise ValueError("--model mmldm's generator needs its autoencoder: --ae CKPT (train.py trains one first)")
    ae_meta = checkpoint.config(cfg.ae)
    if ae_meta.get("model") != "mmldm-ae":
        raise ValueError(f"--ae {cfg.ae}: not an MM-LDM autoencoder checkpoint (its model is {ae_meta.get('model')!r})")
    ae = mmldm.MMAEConfig(**ae_meta["net"])
    differ = [f"--{k.replace('_', '-')}" for k in ("frames", "size", "vae", "patch", "center")
              if getattr(cfg, k) != ae_meta["train"][k]]
    if differ:
        raise ValueError(f"--ae {cfg.ae}: trained with other {', '.join(differ)}; the generator takes its "
                         "autoencoder's clips and codecs")
    codec = ae_meta["codec"]
    side = video_side(codec["video"], codec.get("patch", 1), clip.size)
    shapes = {"video": (1, clip.frames, ae.video_channels, side, side), "audio": (1, melspec.N_MELS, clip.mel_steps)}
    return asdict(mmldm.generator_config(ae, mmldm.latent_shapes(ae, shapes), clip.duration, cfg.preset,
                                         cond_modes=cfg.cond_tasks > 0))


def mmdiffusion_preset(name: str, **fields):
    """mmunet's presets, with "paper" its official size."""
    return mmunet.preset({"paper": "official"}.get(name, name), **fields)


MODELS = {
    "cmmd": Family("CMMD's easy-fusion U-Net (CMMD App. B, Fig. 1)", unet.UNetConfig, unet.UNet,
                   tuple(unet.PRESETS), unet.preset, cmmd_net),
    "mmdiffusion": Family("MM-Diffusion's coupled U-Net with RS-MMA (the baseline)", mmunet.MMDiffusionConfig,
                          mmunet.MMDiffusion, ("paper", *mmunet.PRESETS), mmdiffusion_preset, mmdiffusion_net,
                          diffusion=mmunet.diffusion_config, audio_codec="wave",
                          sampler={"guidance_form": "mmdiffusion", "clip_x0": True}),
    "dit": Family("a joint audio-video diffusion transformer (MM-LDM's DiT; Peebles & Xie 2023)", dit.DiTConfig,
                  dit.DiT, tuple(dit.PRESETS), dit.preset, dit_net),
    "mmldm-ae": Family("MM-LDM's multi-modal autoencoder alone (its first stage; Sun et al. 2024, Fig. 3)",
                       mmldm.MMAEConfig, mmldm.MMAutoencoder, tuple(mmldm.PRESETS), mmldm.preset, mmldm_ae_net),
    "mmldm": Family("MM-LDM: its autoencoder (trained first, or --ae), then a DiT over the two content latents",
                    dit.DiTConfig, dit.DiT, tuple(p for p in dit.PRESETS if p in mmldm.PRESETS), dit.preset,
                    mmldm_net),
}
PRESETS = tuple(dict.fromkeys(p for f in MODELS.values() for p in f.presets))  # every family's, for --preset


def family(name: str) -> Family:
    """The registry entry of `name`; a ValueError naming the choices otherwise."""
    if name not in MODELS:
        raise ValueError(f"--model {name!r}: choose one of {', '.join(MODELS)}")
    return MODELS[name]
