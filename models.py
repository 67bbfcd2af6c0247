"""The model registry: each model family with its network's config class and network class, its presets,
its diffusion, its audio codec, its codec rules and the sampler settings it needs. pipeline.py, train.py and
bench.py read it; adding a family is one entry here plus its file.
"""
from dataclasses import asdict, dataclass, field
from typing import Callable

import diffusion
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


def cmmd_net(cfg, clip) -> dict:
    """The easy-fusion U-Net on SD-VAE latents (4 channels) or the patch-p pixel codec (3·p² channels)."""
    if cfg.vae == "sd" and cfg.patch != 1:
        raise ValueError("--patch is the pixel codec's; the SD-VAE has its own factor 8 (use --patch 1)")
    channels = 4 if cfg.vae == "sd" else 3 * cfg.patch ** 2
    return asdict(unet.preset(cfg.preset, video_channels=channels, fusion=cfg.fusion))


def mmdiffusion_net(cfg, clip) -> dict:
    """MM-Diffusion's coupled U-Net on pixels and the waveform in [-1, 1]; its full size is its official one."""
    if cfg.vae != "pixel" or cfg.patch != 1 or cfg.center:
        raise ValueError("--model mmdiffusion works on pixels and waveforms in [-1, 1]: use --vae pixel --patch 1 "
                         "--no-center")
    return asdict(mmdiffusion_preset(cfg.preset, frames=clip.frames, image_size=clip.size, audio_samples=clip.samples))


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
}
PRESETS = tuple(dict.fromkeys(p for f in MODELS.values() for p in f.presets))  # every family's, for --preset


def family(name: str) -> Family:
    """The registry entry of `name`; a ValueError naming the choices otherwise."""
    if name not in MODELS:
        raise ValueError(f"--model {name!r}: choose one of {', '.join(MODELS)}")
    return MODELS[name]
