"""Improved MelGAN vocoder: normalised log-mel (B, M, T) -> waveform (B, 256·T)
(CMMD App. B "Improved MelGAN Vocoder", App. F.1, Table 5).

The networks are the official MelGAN ones (Kumar et al. 2019, descriptinc/melgan-neurips
`mel2wav/modules.py`): a generator of transposed convolutions 8·8·2·2 (= hop 256) with residual stacks of
dilations 1, 3, 9, and a discriminator of three NLayerDiscriminators on the waveform average-pooled by
1, 2 and 4. Following CMMD, only the training changes, to HiFi-GAN's (Kong et al. 2020, §2.3):
least-squares GAN losses, feature matching ×2, mel-L1 ×10 (Table 5) and 65 536-sample (4 s) segments
with random biquad-filter augmentation (App. F.1, biquad.py):
    L_D = Σ_k E[(D_k(x) − 1)²] + E[D_k(G(s))²]
    L_G = Σ_k E[(D_k(G(s)) − 1)²] + 2·Σ_k Σ_i E|D_k^i(x) − D_k^i(G(s))| + 10·E|φ(G(s)) − s|
with x a real segment, s = φ(x) its normalised log-mel (melspec.wav_to_mel), D_k^i the i-th output of the
k-th scale of the discriminator, its last output D_k the score map.

Choices where the sources are silent or inconsistent, marked [choice]:
- [choice] The mel loss is the L1 of melspec.py's *normalised* log-mel, n = (log10 m + 5) / 3 − 1, the
  feature the diffusion model produces; ×10 is Table 5's figure, kept. On other scales the same term reads
  10·|Δn| = 3.33·|Δ log10 m| = 1.45·|Δ ln m|, so it weighs about 1/31 of HiFi-GAN's 45·|Δ ln m| (same
  1e-5 floor) and 1/3 of a ×10 on MelGAN's log10-mel, relative to the adversarial and feature terms;
  HiFi-GAN's balance would be mel_weight ≈ 311 here. The paper does not say which log scale its ×10
  multiplied; `mel_weight` is a config field.
- [choice] Feature matching is HiFi-GAN's: Σ over scales and over every discriminator output, the final
  score map included, of mean |D_k^i(x) − D_k^i(G(s))|; MelGAN's official 4/(n_layers+1)/num_D weights
  and its exclusion of the score map are not used. Real features come from the discriminator after its
  update of the same step, as in HiFi-GAN.
- [choice] Initialisation is PyTorch's default. The official `weights_init` draws N(0, 0.02) into
  `m.weight`, which under weight norm is recomputed from g and v before every forward, so it never
  took effect there either.
- [choice] Discriminator, last two layers: the official code sizes the 5-tap convolution from `nf_prev`,
  which equals the channels it receives only for ndf 16, n_layers 4; here it uses the channels it
  receives (identical for the official configuration, and tiny test configurations build).
- [choice] Biquad augmentation (App. F.1 gives no parameters): with probability `aug_p` per segment, one
  RBJ-cookbook low-shelf, high-shelf or peaking filter, f0 log-uniform in `aug_freq` Hz, gain uniform
  in ±`aug_gain_db` dB, Q log-uniform in `aug_q` (biquad.py).
- [choice] Batch 16, lr 1e-4, Adam (0.5, 0.9): official MelGAN; the paper does not state them.

`python melgan.py train --data synthetic --out runs/melgan` trains; `Vocoder(path)` / `load_vocoder(path)`
vocode; `Vocoder(None)` falls back to Griffin-Lim (`melspec.mel_to_wav`) with a warning. A checkpoint is a
safetensors file of both networks with the config and the mel front end in its metadata, plus a .pt of the
optimisers, step and RNG states (checkpoint.py writes and reads them; errors are checkpoint.CheckpointError).
"""
import argparse
import json
import logging
import math
import sys
import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import weight_norm
from tqdm.auto import tqdm

import biquad
import checkpoint
import cli
import data
import figures
import media
import melspec

# ----------------------------------------------------------------------------------------------------
# Constants with their source
PAPER_PARAMS = 4.27e6  # trainable generator parameters, CMMD Table 5
SEGMENT_LENGTH = 65536  # training samples per segment (4 s at 16 kHz), CMMD Table 5 and App. F.1
FEATURE_LOSS_WEIGHT = 2.0  # CMMD Table 5 (= HiFi-GAN's λ_fm, Kong et al. 2020 §2.3)
MEL_LOSS_WEIGHT = 10.0  # CMMD Table 5, applied to the L1 of melspec.py's normalised log-mel (see docstring)
LRELU_SLOPE = 0.2  # MelGAN's LeakyReLU slope
MAX_CHANNELS = 1024  # MelGAN NLayerDiscriminator's channel cap
GROUP_WIDTH = 4  # MelGAN NLayerDiscriminator: groups = in_channels // 4
CHECKPOINT_FORMAT = "cmmd-melgan"  # safetensors metadata "format": tells our checkpoints from others
# melspec.py's front end, stored with each checkpoint: a vocoder only inverts the front end it learnt.
FRONT_END = {"sample_rate": melspec.SAMPLE_RATE, "n_fft": melspec.N_FFT, "hop": melspec.HOP, "n_mels": melspec.N_MELS,
             "fmin": melspec.MEL_FMIN, "fmax": melspec.MEL_FMAX, "log_mel_min": melspec.LOG_MEL_MIN,
             "log_mel_max": melspec.LOG_MEL_MAX}
MIN_MEL_STEPS = 4  # the generator's first 7-tap reflection padding needs T > 3 (as in the official code)
VIDEO_SIZE = 16  # px: the vocoder reads only audio, so datasets decode the smallest video that is cheap


@dataclass
class MelGANConfig:
    """Architecture (official MelGAN defaults, scripts/train.py) and training (CMMD Table 5, App. F.1)."""
    n_mels: int = melspec.N_MELS
    ngf: int = 32  # generator width: the last stage has ngf channels, the first 2^len(ratios)·ngf
    ratios: tuple = (8, 8, 2, 2)  # transposed-conv upsampling, product = hop 256
    n_residual_layers: int = 3  # per stage, dilations 3^j = 1, 3, 9
    ndf: int = 16  # discriminator width of the first layer
    n_layers_D: int = 4  # strided grouped layers per scale
    num_D: int = 3  # scales: the waveform average-pooled 0, 1 and 2 times
    downsamp_factor: int = 4  # stride of each strided discriminator layer
    segment_length: int = SEGMENT_LENGTH
    batch_size: int = 16
    lr: float = 1e-4
    betas: tuple = (0.5, 0.9)
    feature_weight: float = FEATURE_LOSS_WEIGHT
    mel_weight: float = MEL_LOSS_WEIGHT
    aug_p: float = 0.5  # probability of a random biquad per segment
    aug_gain_db: float = 12.0  # gain drawn uniformly from ±aug_gain_db
    aug_freq: tuple = (60.0, 6000.0)  # Hz, f0 log-uniform
    aug_q: tuple = (0.5, 2.0)  # Q log-uniform

    def __post_init__(self):
        self.ratios, self.betas = tuple(self.ratios), tuple(self.betas)
        self.aug_freq, self.aug_q = tuple(self.aug_freq), tuple(self.aug_q)
        if math.prod(self.ratios) != melspec.HOP:
            raise ValueError(f"MelGANConfig.ratios {self.ratios} must multiply to melspec.HOP = {melspec.HOP}")
        if self.segment_length % melspec.HOP:
            raise ValueError(f"segment_length {self.segment_length} must be a multiple of {melspec.HOP}")
        if self.ndf % GROUP_WIDTH:
            raise ValueError(f"ndf {self.ndf} must be a multiple of {GROUP_WIDTH} (grouped convolutions)")

    @classmethod
    def from_dict(cls, d: dict, source: str = "config") -> "MelGANConfig":
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise checkpoint.CheckpointError(f"{source}: unknown MelGAN config fields {sorted(unknown)}")
        return cls(**d)


# ----------------------------------------------------------------------------------------------------
# Networks (descriptinc/melgan-neurips mel2wav/modules.py)
def wn_conv(*args, transpose: bool = False, **kwargs) -> nn.Module:
    return weight_norm((nn.ConvTranspose1d if transpose else nn.Conv1d)(*args, **kwargs))


class ResidualUnit(nn.Module):
    """MelGAN ResnetBlock: x + (LReLU, dilated 3-tap conv, LReLU, 1×1 conv), with a 1×1 conv shortcut."""

    def __init__(self, channels: int, dilation: int):
        super().__init__()
        self.block = nn.Sequential(
            nn.LeakyReLU(LRELU_SLOPE), nn.ReflectionPad1d(dilation),
            wn_conv(channels, channels, kernel_size=3, dilation=dilation),
            nn.LeakyReLU(LRELU_SLOPE), wn_conv(channels, channels, kernel_size=1))
        self.shortcut = wn_conv(channels, channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shortcut(x) + self.block(x)


class Generator(nn.Module):
    """MelGAN generator (Kumar et al. 2019, Fig. 1): mel (B, M, T) -> waveform (B, 256·T) in (-1, 1)."""

    def __init__(self, cfg: MelGANConfig):
        super().__init__()
        self.cfg = cfg
        mult = 2 ** len(cfg.ratios)
        layers = [nn.ReflectionPad1d(3), wn_conv(cfg.n_mels, mult * cfg.ngf, kernel_size=7)]
        for r in cfg.ratios:
            c = mult * cfg.ngf // 2
            # Kernel 2r, stride r, padding r/2: the output is exactly r times longer (r even).
            layers += [nn.LeakyReLU(LRELU_SLOPE),
                       wn_conv(2 * c, c, kernel_size=2 * r, stride=r, padding=r // 2 + r % 2,
                               output_padding=r % 2, transpose=True)]
            layers += [ResidualUnit(c, dilation=3 ** j) for j in range(cfg.n_residual_layers)]
            mult //= 2
        layers += [nn.LeakyReLU(LRELU_SLOPE), nn.ReflectionPad1d(3), wn_conv(cfg.ngf, 1, kernel_size=7), nn.Tanh()]
        self.model = nn.Sequential(*layers)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        assert mel.ndim == 3 and mel.shape[1] == self.cfg.n_mels, \
            f"mel must be (B, {self.cfg.n_mels}, T), got {tuple(mel.shape)}"
        assert mel.shape[2] >= MIN_MEL_STEPS, f"mel needs T >= {MIN_MEL_STEPS} steps, got {mel.shape[2]}"
        return self.model(mel).squeeze(1)  # (B, L) with L = 256·T

    def vocode(self, mel: torch.Tensor) -> torch.Tensor:
        """Inference: mel (B, M, T) on this generator's device -> waveform (B, 256·T)."""
        with torch.inference_mode():
            return self(mel.float())

    def remove_weight_norm(self) -> "Generator":
        """Fold g·v/‖v‖ into plain weights (inference only: no recomputation per forward)."""
        for m in self.modules():
            if parametrize.is_parametrized(m, "weight"):
                parametrize.remove_parametrizations(m, "weight", leave_parametrized=True)
        return self


class ScaleDiscriminator(nn.Module):
    """MelGAN NLayerDiscriminator: a 15-tap conv, `n_layers_D` strided grouped convs, a 5-tap and a
    3-tap conv; returns every layer's output, the last being the (B, 1, L') score map."""

    def __init__(self, cfg: MelGANConfig):
        super().__init__()
        s = cfg.downsamp_factor
        layers = [nn.Sequential(nn.ReflectionPad1d(7), wn_conv(1, cfg.ndf, kernel_size=15), nn.LeakyReLU(LRELU_SLOPE))]
        nf = cfg.ndf
        for _ in range(cfg.n_layers_D):
            nf_prev, nf = nf, min(nf * s, MAX_CHANNELS)
            layers.append(nn.Sequential(
                wn_conv(nf_prev, nf, kernel_size=s * 10 + 1, stride=s, padding=s * 5, groups=nf_prev // GROUP_WIDTH),
                nn.LeakyReLU(LRELU_SLOPE)))
        nf_out = min(nf * 2, MAX_CHANNELS)
        layers.append(nn.Sequential(wn_conv(nf, nf_out, kernel_size=5, padding=2), nn.LeakyReLU(LRELU_SLOPE)))
        layers.append(wn_conv(nf_out, 1, kernel_size=3, padding=1))
        self.layers = nn.ModuleList(layers)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = []
        for layer in self.layers:
            x = layer(x)
            features.append(x)
        return features


class MultiScaleDiscriminator(nn.Module):
    """MelGAN's discriminator: `num_D` ScaleDiscriminators on the waveform average-pooled by 2^k
    (Kumar et al. 2019, §2.2). waveform (B, L) -> [scale][layer] feature maps (B, C, L')."""

    def __init__(self, cfg: MelGANConfig):
        super().__init__()
        self.cfg = cfg
        self.scales = nn.ModuleList([ScaleDiscriminator(cfg) for _ in range(cfg.num_D)])
        self.downsample = nn.AvgPool1d(4, stride=2, padding=1, count_include_pad=False)

    def forward(self, wav: torch.Tensor) -> list[list[torch.Tensor]]:
        assert wav.ndim == 2, f"waveform must be (B, L), got {tuple(wav.shape)}"
        x = wav.unsqueeze(1)  # (B, 1, L)
        out = []
        for k, disc in enumerate(self.scales):
            if k:
                x = self.downsample(x)  # (B, 1, L / 2^k)
            out.append(disc(x))
        return out


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


# ----------------------------------------------------------------------------------------------------
# Losses (HiFi-GAN, Kong et al. 2020 §2.3; CMMD Table 5)
def discriminator_loss(real: list[list[torch.Tensor]], fake: list[list[torch.Tensor]]) -> torch.Tensor:
    """Least-squares D loss (Mao et al. 2017; HiFi-GAN §2.3 "GAN Loss"):
    Σ_k mean((D_k(x) − 1)²) + mean(D_k(G(s))²), D_k's score map being its last output."""
    return sum(((r[-1] - 1) ** 2).mean() + (f[-1] ** 2).mean() for r, f in zip(real, fake))


def generator_adversarial_loss(fake: list[list[torch.Tensor]]) -> torch.Tensor:
    """Least-squares G loss (HiFi-GAN §2.3 "GAN Loss"): Σ_k mean((D_k(G(s)) − 1)²)."""
    return sum(((f[-1] - 1) ** 2).mean() for f in fake)


def feature_matching_loss(real: list[list[torch.Tensor]], fake: list[list[torch.Tensor]]) -> torch.Tensor:
    """HiFi-GAN §2.3 "Feature Matching Loss", unweighted: Σ_k Σ_i mean|D_k^i(x) − D_k^i(G(s))| over every
    output i of every scale k, the real branch detached."""
    return sum(F.l1_loss(fi, ri.detach()) for r, f in zip(real, fake) for ri, fi in zip(r, f))


def mel_loss(wav_hat: torch.Tensor, mel: torch.Tensor) -> torch.Tensor:
    """HiFi-GAN §2.3 "Mel-Spectrogram Loss" on melspec.py's front end: mean |wav_to_mel(G(s)) − s|, s being
    the normalised log-mel."""
    return F.l1_loss(melspec.wav_to_mel(wav_hat), mel)


# ----------------------------------------------------------------------------------------------------
# Checkpoints: OUT/melgan-STEP.safetensors (G and D weights, config in the metadata) + melgan-STEP.pt
# (optimizers, step, RNG). The safetensors file is written last, so its presence marks a complete pair.
def _stem(step: int) -> str:
    return f"melgan-{step:08d}"


def list_checkpoints(out) -> list[Path]:
    """Complete checkpoints in OUT, oldest first."""
    out = Path(out)
    return sorted(p for p in out.glob("melgan-*.safetensors") if p.with_suffix(".pt").exists())


def save_checkpoint(out, step: int, G: Generator, D: MultiScaleDiscriminator, opt_G, opt_D,
                    generator: torch.Generator, keep: int = 3) -> Path:
    from safetensors.torch import save_file
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{_stem(step)}.safetensors"
    state = {"opt_G": opt_G.state_dict(), "opt_D": opt_D.state_dict(), "step": step,
             "data_rng": generator.get_state(), "torch_rng": torch.get_rng_state()}
    checkpoint.torch_save(state, path.with_suffix(".pt"))
    tensors = {f"{prefix}.{k}": v.detach().cpu().contiguous()
               for prefix, net in (("generator", G), ("discriminator", D)) for k, v in net.state_dict().items()}
    meta = {"format": CHECKPOINT_FORMAT, "config": json.dumps(asdict(G.cfg)), "step": str(step),
            "front_end": json.dumps(FRONT_END)}
    with checkpoint.atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)
    for old in list_checkpoints(out)[:-keep]:
        old.unlink()
        old.with_suffix(".pt").unlink(missing_ok=True)
    return path


def read_checkpoint(path, nets=("generator", "discriminator")) -> tuple[MelGANConfig, dict, dict]:
    """A MelGAN checkpoint file, or the newest one in a directory -> (config, metadata, {net: state} for
    `nets`). Raises checkpoint.CheckpointError with one line for anything else."""
    from safetensors import safe_open
    path = Path(path)
    if path.is_dir():
        found = list_checkpoints(path)
        if not found:
            raise checkpoint.CheckpointError(f"{path}: no MelGAN checkpoint (melgan-*.safetensors) in this directory")
        path = found[-1]
    with checkpoint.reading(path, "MelGAN checkpoint") as path, safe_open(str(path), "pt") as h:
        meta = h.metadata() or {}
        if meta.get("format") != CHECKPOINT_FORMAT:
            raise checkpoint.CheckpointError(f"{path}: not a MelGAN checkpoint (no '{CHECKPOINT_FORMAT}' format in "
                                             f"its metadata)")
        front_end = json.loads(meta["front_end"])
        if front_end != FRONT_END:
            diff = sorted(k for k in FRONT_END if front_end.get(k) != FRONT_END[k])
            raise checkpoint.CheckpointError(f"{path}: trained on another mel front end (differs in "
                                             f"{', '.join(diff)})")
        state = {net: {} for net in nets}
        for k in h.keys():
            net, _, name = k.partition(".")
            if net in state:
                state[net][name] = h.get_tensor(k)
    return MelGANConfig.from_dict(json.loads(meta["config"]), str(path)), meta, state


def load_vocoder(path, device=None) -> Generator:
    """A trained generator from a MelGAN checkpoint (file, or the newest in a directory), in eval mode
    with weight norm folded. Missing files and other checkpoints stop with a one-line CheckpointError."""
    cfg, _, state = read_checkpoint(path, nets=("generator",))
    G = checkpoint.load_strict(Generator(cfg), state["generator"], "", path, "the generator of its config")
    return G.remove_weight_norm().eval().requires_grad_(False).to(device)


class Vocoder:
    """mel (B, M, T) -> waveform (B, 256·T): a trained MelGAN, or, with no checkpoint, Griffin-Lim on
    melspec.py's front end, so the pipeline runs before a vocoder has been trained."""

    def __init__(self, path=None, device=None, griffin_lim_iters: int = 32):
        self.griffin_lim_iters = griffin_lim_iters
        self.generator = None if path is None else load_vocoder(path, device)
        if path is None:
            logging.warning("melgan: no vocoder checkpoint, using Griffin-Lim (melspec.mel_to_wav): expect phasey,"
                            " metallic audio; train one with `python melgan.py train`")

    def __call__(self, mel: torch.Tensor) -> torch.Tensor:
        assert mel.ndim == 3 and mel.shape[1] == melspec.N_MELS, \
            f"mel must be (B, {melspec.N_MELS}, T), got {tuple(mel.shape)}"
        if self.generator is None:
            with torch.inference_mode():
                return melspec.mel_to_wav(mel, n_iter=self.griffin_lim_iters)  # (B, 256·T)
        self.generator.to(mel.device)
        return self.generator.vocode(mel)  # (B, 256·T)

    vocode = __call__


# ----------------------------------------------------------------------------------------------------
# Training
@dataclass
class TrainRun:
    """How long to run and how often to look; the model and optimisation live in MelGANConfig."""
    steps: int = 500_000  # [choice] the paper gives no count; stop early and resume at will
    val_every: int = 2000  # validation mel-L1 and audible samples
    ckpt_every: int = 5000
    n_val: int = 4  # fixed validation clips
    keep: int = 3  # checkpoints kept in OUT
    seed: int = 0
    device: str = "auto"


def clip_for(segment: int) -> data.ClipConfig:
    """Dataset windows for `segment`-sample segments: whole video frames holding one segment, at least
    ClipConfig's 1.8 s (short windows give random offsets room, and a synthetic "dance" window shorter
    than one beat period has no beat); no margin (no negatives here), VIDEO_SIZE px video (unused)."""
    per_frame = melspec.SAMPLE_RATE // media.FPS
    frames = max(-(-segment // per_frame), data.ClipConfig.frames)
    return data.ClipConfig(frames=frames, size=VIDEO_SIZE, margin=0)


def sample_segments(ds, n: int, segment: int, generator: torch.Generator) -> torch.Tensor:
    """n random segments of `segment` samples, each from a random item at a random offset: (n, L)."""
    out = []
    for i in torch.randint(len(ds), (n,), generator=generator).tolist():
        wav = ds[i]["audio"]
        if len(wav) < segment:
            raise media.BadInput(f"dataset item {i}: {len(wav)} samples, shorter than --segment {segment}")
        off = int(torch.randint(len(wav) - segment + 1, (1,), generator=generator))
        out.append(wav[off:off + segment])
    return torch.stack(out).float()  # (n, L)


def train_step(G, D, opt_G, opt_D, x: torch.Tensor, cfg: MelGANConfig) -> dict[str, float]:
    """One HiFi-GAN step: D on (x, G(s).detach()), then G on adversarial + feature + mel losses."""
    s = melspec.wav_to_mel(x)  # (B, M, T)
    x_hat = G(s)  # (B, L)
    loss_D = discriminator_loss(D(x), D(x_hat.detach()))
    opt_D.zero_grad(set_to_none=True)
    loss_D.backward()
    opt_D.step()
    with torch.no_grad():
        real = D(x)
    fake = D(x_hat)
    terms = {"adv": generator_adversarial_loss(fake), "fm": feature_matching_loss(real, fake),
             "mel": mel_loss(x_hat, s)}
    # HiFi-GAN §2.3 "Final Loss", with CMMD Table 5's weights
    loss_G = terms["adv"] + cfg.feature_weight * terms["fm"] + cfg.mel_weight * terms["mel"]
    opt_G.zero_grad(set_to_none=True)
    loss_G.backward()
    opt_G.step()
    return {"D": loss_D.item(), **{k: v.item() for k, v in terms.items()}}


def validate(G: Generator, wav: torch.Tensor) -> tuple[float, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mel-L1 of G on fixed clips (V, L) -> (mean L1, mel (V, M, T), vocoded mel, vocoded wav (V, L))."""
    # no_grad, not inference_mode: the first wav_to_mel of a run caches the mel filterbank, and an inference
    # tensor there would break the mel loss's backward in every later training step
    with torch.no_grad():
        mel = melspec.wav_to_mel(wav)  # (V, M, T)
        wav_hat = G(mel)  # (V, L)
        mel_hat = melspec.wav_to_mel(wav_hat)  # (V, M, T)
    return (mel_hat - mel).abs().mean().item(), mel, mel_hat, wav_hat


def _val_clips(name, clip, root, n: int, segment: int) -> torch.Tensor:
    """The loudest `segment` samples (on a hop grid) of the first n validation items (train items if there is
    no val split): a silent stretch would make the validation mel-L1 trivially small."""
    try:
        ds = data.build_dataset(name, "val", clip, root=root)
        if len(ds) == 0:
            raise media.BadInput(f"--data {name}: empty validation split")
    except media.BadInput as e:
        logging.warning(f"melgan: {e}; validating on the first training clips instead")
        ds = data.build_dataset(name, "train", clip, root=root)
    clips = []
    for i in range(min(n, len(ds))):
        wav = ds[i]["audio"].float()
        starts = range(0, len(wav) - segment + 1, melspec.HOP)
        start = max(starts, key=lambda s: float(wav[s:s + segment].pow(2).sum()))
        clips.append(wav[start:start + segment])
    return torch.stack(clips)  # (V, L)


def _resume(out: Path, G, D, opt_G, opt_D, generator: torch.Generator) -> int:
    """Load the newest complete checkpoint in OUT, if any, into the nets, optimizers and both RNGs, so resumed
    training continues the uninterrupted run; returns its step (0 when there is none)."""
    found = list_checkpoints(out)
    if not found:
        return 0
    _, _, state = read_checkpoint(found[-1])
    checkpoint.load_strict(G, state["generator"], "", found[-1], "the generator of its config")
    checkpoint.load_strict(D, state["discriminator"], "", found[-1], "the discriminator of its config")
    extra = checkpoint.torch_load(found[-1].with_suffix(".pt"), "MelGAN training state")
    opt_G.load_state_dict(extra["opt_G"])
    opt_D.load_state_dict(extra["opt_D"])
    generator.set_state(extra["data_rng"])
    torch.set_rng_state(extra["torch_rng"])
    tqdm.write(f"resuming from {found[-1]} at step {extra['step']}", file=sys.stderr)
    return extra["step"]


def _log(out: Path, record: dict):
    """Append one record to OUT/log.jsonl, so a resumed run's log continues the earlier one."""
    with open(out / "log.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")


def _look(out: Path, G: Generator, val_wav: torch.Tensor, step: int) -> float:
    """Validate G at `step`: log its mel-L1 and write each clip's vocoded wav and mel figure (and the ground
    truth, once) under OUT/samples/ to listen to; returns the mel-L1."""
    l1, mel, mel_hat, wav_hat = validate(G, val_wav)
    folder = out / "samples" / f"step-{step:08d}"
    folder.mkdir(exist_ok=True)
    for i in range(len(val_wav)):
        media.write_wav(folder / f"{i}-vocoded.wav", wav_hat[i])
        if not (out / "samples" / f"{i}-ground-truth.wav").exists():
            media.write_wav(out / "samples" / f"{i}-ground-truth.wav", val_wav[i])
        figures.mel_figure(folder / f"{i}-mel.png", {"ground truth": mel[i], "vocoded": mel_hat[i]},
                           title=f"validation clip {i}, step {step}")
    _log(out, {"step": step, "val_mel_l1": l1})
    return l1


def train(name: str, out, cfg: MelGANConfig, run: TrainRun, root=None, progress: bool = True) -> dict:
    """Train (or resume from the newest checkpoint in OUT) to run.steps. Returns {"step", "val": [(step,
    val mel-L1), ...] of this call}. Writes OUT/log.jsonl, OUT/samples/ and checkpoints."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device(run.device if run.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    torch.manual_seed(run.seed)
    G, D = Generator(cfg).to(device), MultiScaleDiscriminator(cfg).to(device)
    opt_G = torch.optim.Adam(G.parameters(), lr=cfg.lr, betas=cfg.betas)
    opt_D = torch.optim.Adam(D.parameters(), lr=cfg.lr, betas=cfg.betas)
    gen = torch.Generator().manual_seed(run.seed)  # the data stream: items, offsets, augmentation
    step = _resume(out, G, D, opt_G, opt_D, gen)
    clip = clip_for(cfg.segment_length)
    train_set = data.build_dataset(name, "train", clip, root=root)
    val_wav = _val_clips(name, clip, root, run.n_val, cfg.segment_length).to(device)  # (V, L)
    (out / "samples").mkdir(exist_ok=True)
    history = []
    if step == 0:
        history.append((0, _look(out, G, val_wav, 0)))
        tqdm.write(f"val mel-L1 at initialisation: {history[-1][1]:.4f}", file=sys.stderr)
    bar = tqdm(total=run.steps, initial=step, desc="melgan", disable=not progress, dynamic_ncols=True)
    val, t0, step0, sums = float("nan"), time.time(), step, {}
    while step < run.steps:
        x = sample_segments(train_set, cfg.batch_size, cfg.segment_length, gen)  # (B, L)
        x = biquad.random_biquad(x, cfg, gen)
        losses = train_step(G, D, opt_G, opt_D, x.to(device), cfg)
        sums = {k: sums.get(k, 0.0) + v for k, v in losses.items()}
        step += 1
        looked = step % run.val_every == 0 or step == run.steps
        if looked:  # the mean training losses since the last look, then the validation
            n = step - step0
            _log(out, {"step": step, **{k: v / n for k, v in sums.items()}, "s_per_step": (time.time() - t0) / n})
            val = _look(out, G, val_wav, step)
            history.append((step, val))
        if step % run.ckpt_every == 0 or step == run.steps:
            save_checkpoint(out, step, G, D, opt_G, opt_D, gen, run.keep)
        if looked:
            t0, step0, sums = time.time(), step, {}
        bar.set_postfix({**{k: f"{v:.3f}" for k, v in losses.items()}, "val": f"{val:.4f}"}, refresh=False)
        bar.update()
    bar.close()
    return {"step": step, "val": history}


def main(argv=None):
    p = argparse.ArgumentParser(description="Train the improved MelGAN vocoder (CMMD App. F.1, Table 5).")
    sub = p.add_subparsers(dest="cmd", required=True)
    q = sub.add_parser("train", help="train, or resume from the newest checkpoint in --out")
    q.add_argument("--data", required=True, help="synthetic, folder, aist, or a prepared shard directory (data.py)")
    q.add_argument("--data-root", help="folder of videos (folder) or the AIST++ root (aist)")
    q.add_argument("--out", required=True, help="run directory: checkpoints, log.jsonl, samples/")
    run_defaults, cfg_defaults = TrainRun(), MelGANConfig()
    q.add_argument("--steps", type=int, default=run_defaults.steps,
                   help=f"total training steps (default {run_defaults.steps})")
    # Config flags default to None: on resume, only the ones given override the checkpoint's config.
    q.add_argument("--segment", type=int, help=f"samples per training segment (default {cfg_defaults.segment_length})")
    q.add_argument("--batch", type=int, help=f"segments per batch (default {cfg_defaults.batch_size})")
    q.add_argument("--lr", type=float, help=f"Adam learning rate of G and D (default {cfg_defaults.lr})")
    q.add_argument("--aug-p", type=float,
                   help=f"probability of a random biquad per segment (default {cfg_defaults.aug_p})")
    q.add_argument("--val-every", type=int, default=run_defaults.val_every,
                   help=f"steps between validations (default {run_defaults.val_every})")
    q.add_argument("--ckpt-every", type=int, default=run_defaults.ckpt_every,
                   help=f"steps between checkpoints (default {run_defaults.ckpt_every})")
    q.add_argument("--n-val", type=int, default=run_defaults.n_val,
                   help=f"fixed validation clips (default {run_defaults.n_val})")
    q.add_argument("--seed", type=int, default=run_defaults.seed,
                   help=f"seed of the init and of the data stream (default {run_defaults.seed})")
    q.add_argument("--device", default=run_defaults.device, help="auto (cuda if available), cpu, cuda, cuda:1, ...")
    a = p.parse_args(argv)
    try:
        found = list_checkpoints(a.out) if Path(a.out).is_dir() else []
        cfg = read_checkpoint(found[-1])[0] if found else MelGANConfig()
        given = {"segment_length": a.segment, "batch_size": a.batch, "lr": a.lr, "aug_p": a.aug_p}
        cfg = replace(cfg, **{k: v for k, v in given.items() if v is not None})
        run = TrainRun(steps=a.steps, val_every=a.val_every, ckpt_every=a.ckpt_every, n_val=a.n_val,
                       seed=a.seed, device=a.device)
        result = train(a.data, a.out, cfg, run, root=a.data_root)
    except cli.errors() as e:
        sys.exit(f"error: {e}")
    if result["val"]:
        print("val mel-L1: " + ", ".join(f"step {s}: {v:.4f}" for s, v in result["val"]))


if __name__ == "__main__":
    main()
