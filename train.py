"""Training: nCMMD with the joint loss (CMMD Eq. 2) and the contrastive fine-tune CMMD (Eq. 6,
Algorithm 1), or the MM-Diffusion baseline, on one CPU/GPU or under torchrun DDP (CMMD App. B.2).

    python train.py --data synthetic --preset small --vae pixel --out runs/ncmmd
    python train.py --data synthetic --contrastive --init runs/ncmmd/ckpt-00010000.safetensors --out runs/cmmd
    torchrun --nproc_per_node 4 train.py --data aist --data-root AIST --preset paper --vae sd --size 128

A checkpoint is `ckpt-STEP.safetensors` (raw and EMA weights, the whole run config in its metadata, all
`sample.py` needs) plus `ckpt-STEP.pt` (optimizer, generator and RNG states, for resuming). Both are
written to temporary names and renamed, the state first: a checkpoint exists once its .safetensors does.
"""
import argparse
import copy
import dataclasses
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm import tqdm

import data
import diffusion
import negatives
import unet
import vae

# The paper's optimiser (CMMD App. B.2): Adam at 1e-4, ×0.8 every 80 k steps, down to 2e-5.
PAPER_LR, PAPER_LR_DECAY, PAPER_LR_EVERY, PAPER_LR_MIN = 1e-4, 0.8, 80_000, 2e-5
PAPER_ETA = 5e-5  # η of Eq. 6 (CMMD §2.2, following CDCD)
VAE_HUB_ID = vae.HUB_ID  # stabilityai/sd-vae-ft-mse (CMMD §3)


@dataclass
class TrainConfig:
    """Everything about a run that is not the network; saved whole in every checkpoint."""
    data: str = field(default="synthetic", metadata={"help": "synthetic, folder, aist, or a prepared shard dir"})
    data_root: str | None = field(default=None, metadata={"help": "video folder (folder) or AIST++ root (aist)"})
    num_clips: int = field(default=2000, metadata={"help": "synthetic training clips"})
    out: str = field(default="runs/cmmd", metadata={"help": "run directory: checkpoints, log, previews"})
    model: str = field(default="cmmd", metadata={"help": "cmmd (easy-fusion U-Net) or mmdiffusion (baseline)", "choices": ["cmmd", "mmdiffusion"]})
    preset: str = field(default="small", metadata={"help": "network size (paper is MM-Diffusion's official size with --model mmdiffusion)", "choices": ["paper", "small", "tiny"]})
    fusion: bool = field(default=True, metadata={"help": "easy fusion between the paths (off: ablation)"})
    vae: str = field(default="pixel", metadata={"help": "video codec: SD-VAE latents or pixels", "choices": ["sd", "pixel"]})
    vae_path: str = field(default=VAE_HUB_ID, metadata={"help": "SD-VAE directory or hub id"})
    frames: int = field(default=18, metadata={"help": "video frames per training clip (CMMD §3)"})
    size: int = field(default=64, metadata={"help": "frame side in pixels (128 in the paper)"})
    batch: int = field(default=8, metadata={"help": "clips per step per process (8 for nCMMD, 2 for CMMD)"})
    steps: int = field(default=700_000, metadata={"help": "total optimiser steps (nCMMD: 700 k)"})
    lr: float = field(default=PAPER_LR, metadata={"help": "Adam learning rate"})
    lr_decay: float = field(default=PAPER_LR_DECAY, metadata={"help": "lr factor every --lr-every steps"})
    lr_every: int = field(default=PAPER_LR_EVERY, metadata={"help": "steps between lr decays"})
    lr_min: float = field(default=PAPER_LR_MIN, metadata={"help": "lr floor"})
    ema: float = field(default=0.9999, metadata={"help": "EMA decay of the weights used for sampling"})
    grad_clip: float = field(default=1.0, metadata={"help": "gradient norm clip (0: off)"})
    contrastive: bool = field(default=False, metadata={"help": "add the contrastive loss (CMMD Eq. 6)"})
    eta: float = field(default=PAPER_ETA, metadata={"help": "η, weight of the negative terms of Eq. 6"})
    negatives: int = field(default=1, metadata={"help": "negative batches per modality and step (SPEC §4)"})
    init: str | None = field(default=None, metadata={"help": "start from this checkpoint's weights (fine-tune)"})
    ckpt_every: int = field(default=5000, metadata={"help": "steps between checkpoints"})
    keep: int = field(default=3, metadata={"help": "checkpoints kept in --out"})
    preview_every: int = field(default=5000, metadata={"help": "steps between preview samples (0: off)"})
    preview_steps: int = field(default=25, metadata={"help": "DDIM steps of a preview"})
    log_every: int = field(default=50, metadata={"help": "steps between JSONL log lines"})
    time_limit: float = field(default=0.0, metadata={"help": "stop (and save) after this many minutes (0: none)"})
    seed: int = field(default=0, metadata={"help": "seed of data order, noise, steps and negatives"})
    workers: int = field(default=2, metadata={"help": "DataLoader workers"})
    device: str = field(default="auto", metadata={"help": "auto, cpu, cuda or cuda:N"})


def add_dataclass_args(parser: argparse.ArgumentParser, cls, skip=()):
    """One flag per dataclass field, with its default and help; booleans get --x/--no-x."""
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        flag, helptext = "--" + f.name.replace("_", "-"), f.metadata.get("help", f.name)
        default = f.default
        if isinstance(default, bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, help=helptext)
        else:
            kind = type(default) if default is not None else str
            parser.add_argument(flag, type=kind, default=default, choices=f.metadata.get("choices"),
                                help=f"{helptext} (default: {default})")


# ----------------------------------------------------------------------------------------------------
# Codecs, models and checkpoints: everything `sample.py` rebuilds from a checkpoint's config
class MelCodec(torch.nn.Module):
    """Audio as normalised log-mel (SPEC §1): encode with data.py's front end, decode with a vocoder."""
    channels, steps_per_second = data.N_MELS, data.SAMPLE_RATE / data.HOP

    def __init__(self, vocoder=None):
        super().__init__()
        self.vocoder = vocoder

    def encode(self, wav: torch.Tensor) -> torch.Tensor:  # (B, L) -> (B, M, L // 256)
        return data.wav_to_mel(wav)

    def steps(self, samples: int) -> int:  # T for L samples
        return samples // data.HOP

    def decode(self, mel: torch.Tensor) -> torch.Tensor:  # (B, M, T) -> (B, 256·T)
        if self.vocoder is None:
            import melgan
            self.vocoder = melgan.Vocoder(None)
        return self.vocoder(mel)


class WaveCodec(torch.nn.Module):
    """Audio as the raw waveform (MM-Diffusion): (B, L) <-> (B, 1, L)."""
    channels, steps_per_second = 1, data.SAMPLE_RATE

    def encode(self, wav: torch.Tensor) -> torch.Tensor:
        return wav[:, None]  # (B, 1, L)

    def steps(self, samples: int) -> int:
        return samples

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, 0].clamp(-1, 1)  # (B, L)


def run_config(cfg: TrainConfig, init_meta: dict | None = None) -> dict:
    """The self-describing config stored in every checkpoint: run, clip, network, diffusion, mel scale."""
    clip = data.ClipConfig(frames=cfg.frames, size=cfg.size)
    if init_meta is not None:  # a fine-tune keeps the network, codec and clip geometry of its parent
        return {**init_meta, "train": asdict(cfg)}
    if cfg.model == "cmmd":
        video_channels = 4 if cfg.vae == "sd" else 3
        net = asdict(unet.preset(cfg.preset, video_channels=video_channels, fusion=cfg.fusion))
        diff = asdict(diffusion.DiffusionConfig())
    elif cfg.model == "mmdiffusion":
        import mmdiffusion
        if cfg.vae != "pixel":
            raise ValueError("--model mmdiffusion works on pixels and waveforms: use --vae pixel")
        name = {"paper": "official"}.get(cfg.preset, cfg.preset)  # the baseline's full size is its official one
        net = asdict(mmdiffusion.preset(name, frames=clip.frames, image_size=clip.size, audio_samples=clip.samples))
        diff = asdict(mmdiffusion.diffusion_config())
    else:
        raise ValueError(f"--model {cfg.model!r}: choose cmmd or mmdiffusion")
    return {"format": "cmmd-1", "model": cfg.model, "net": net, "diffusion": diff, "clip": asdict(clip),
            "codec": {"video": cfg.vae, "audio": "mel" if cfg.model == "cmmd" else "wave"},
            "mel": {"log_min": data.LOG_MEL_MIN, "log_max": data.LOG_MEL_MAX}, "train": asdict(cfg)}


def build(meta: dict, vae_path: str | None = None, vocoder=None):
    """(network, Diffusion, {modality: codec}, ClipConfig) from a run config."""
    if meta["model"] == "cmmd":
        net = unet.UNet(unet.UNetConfig(**meta["net"]))
    else:
        import mmdiffusion
        net = mmdiffusion.MMDiffusion(mmdiffusion.MMDiffusionConfig(**meta["net"]))
    codecs = {"video": vae.make_codec(meta["codec"]["video"], vae_path or meta["train"]["vae_path"]),
              "audio": MelCodec(vocoder) if meta["codec"]["audio"] == "mel" else WaveCodec()}
    return net, diffusion.Diffusion(diffusion.DiffusionConfig(**meta["diffusion"])), codecs, data.ClipConfig(**meta["clip"])


class CheckpointError(ValueError):
    """A checkpoint that is missing or not ours; one line naming the file."""


def read_checkpoint(path) -> tuple[dict, dict]:
    """(run config, tensors) of a `ckpt-STEP.safetensors`."""
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint")
    try:
        with safe_open(str(path), "pt") as f:
            meta = (f.metadata() or {}).get("cmmd")
        if meta is None:
            raise CheckpointError(f"{path}: not a cmmd checkpoint (no 'cmmd' config in its metadata)")
        return json.loads(meta), load_file(str(path))
    except (SafetensorError, OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: not a readable safetensors checkpoint ({type(e).__name__})") from None


def load_weights(module: torch.nn.Module, tensors: dict, prefix: str, path):
    state = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
    missing, unexpected = module.state_dict().keys() - state.keys(), state.keys() - module.state_dict().keys()
    if missing or unexpected:
        raise CheckpointError(f"{path}: weights do not fit the network ({len(missing)} missing, e.g. "
                              f"{sorted(missing)[:2]}; {len(unexpected)} unexpected, e.g. {sorted(unexpected)[:2]})")
    module.load_state_dict(state, strict=True)


def load_model(path, device="cpu", weights="ema", vae_path=None, vocoder=None):
    """Everything sampling needs from one checkpoint: (network in eval mode, Diffusion, codecs, clip, config)."""
    meta, tensors = read_checkpoint(path)
    net, diff, codecs, clip = build(meta, vae_path, vocoder)
    load_weights(net, tensors, f"{weights}.", path)
    return net.to(device).eval(), diff, {k: c.to(device) for k, c in codecs.items()}, clip, meta


def write_weights(path: Path, meta: dict, step: int, model: dict, ema: dict) -> Path:
    """The .safetensors half of a checkpoint: raw and EMA state dicts under `model.`/`ema.`, the run config
    in metadata "cmmd"; written to a temporary name and renamed."""
    from safetensors.torch import save_file
    tensors = {**{f"model.{k}": v.detach().contiguous().cpu() for k, v in model.items()},
               **{f"ema.{k}": v.detach().contiguous().cpu() for k, v in ema.items()}}
    save_file(tensors, f"{path}.tmp", metadata={"cmmd": json.dumps(meta), "step": str(step)})
    os.replace(f"{path}.tmp", path)
    return Path(path)


def save_checkpoint(out: Path, step: int, meta: dict, model, ema, opt, gen: torch.Generator, keep: int) -> Path:
    stem = out / f"ckpt-{step:08d}"
    state = {"step": step, "opt": opt.state_dict(), "gen": gen.get_state(), "torch_rng": torch.get_rng_state(),
             "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}
    torch.save(state, f"{stem}.pt.tmp")
    os.replace(f"{stem}.pt.tmp", f"{stem}.pt")
    write_weights(Path(f"{stem}.safetensors"), meta, step, model.state_dict(), ema.state_dict())
    for old in sorted(out.glob("ckpt-*.safetensors"))[:-keep]:
        old.unlink()
        old.with_suffix(".pt").unlink(missing_ok=True)
    return Path(f"{stem}.safetensors")


def latest_checkpoint(out: Path) -> Path | None:
    done = [p for p in sorted(out.glob("ckpt-*.safetensors")) if p.with_suffix(".pt").exists()]
    return done[-1] if done else None


# ----------------------------------------------------------------------------------------------------
class StepBatchSampler(torch.utils.data.Sampler):
    """Batches as a pure function of (seed, step): epoch e is permutation(seed, e) of the dataset, so a
    resumed run sees exactly the batches an uninterrupted one would. Rank r of K takes every K-th clip
    of the global batch."""

    def __init__(self, n: int, batch: int, seed: int, start: int, stop: int, rank: int = 0, world: int = 1):
        self.n, self.batch, self.seed, self.start, self.stop, self.rank, self.world = n, batch, seed, start, stop, rank, world

    def __len__(self):
        return self.stop - self.start

    def __iter__(self):
        g, perm, epoch = self.batch * self.world, None, -1
        for step in range(self.start, self.stop):
            idx = []
            for j in range(step * g, (step + 1) * g):
                if j // self.n != epoch:
                    epoch = j // self.n
                    perm = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed * 1_000_003 + epoch))
                idx.append(int(perm[j % self.n]))
            yield idx[self.rank::self.world]


def learning_rate(cfg: TrainConfig, step: int) -> float:
    """lr · decay^⌊step / every⌋, floored at lr_min (CMMD App. B.2)."""
    return max(cfg.lr * cfg.lr_decay ** (step // cfg.lr_every), cfg.lr_min)


def encode_batch(batch: dict, codecs: dict, device) -> dict:
    """Dataset windows -> model-space windows {"video": (B, Fw, c, h, w), "audio": (B, M, Tw)}."""
    with torch.no_grad():
        if "latents" in batch and isinstance(codecs["video"], vae.SDVAECodec):
            video = batch["latents"].to(device).float()
        else:
            video = codecs["video"].encode(batch["video"].to(device).float() / 127.5 - 1)
        return {"video": video, "audio": codecs["audio"].encode(batch["audio"].to(device))}


def negatives_config(clip: data.ClipConfig, codecs: dict, per_modality: int) -> negatives.NegativesConfig:
    """SPEC §4's shifts in the audio codec's own steps (mel steps or samples), checked against the windows."""
    if isinstance(codecs["audio"], WaveCodec):
        cfg = negatives.NegativesConfig.waveform(clip.samples // clip.frames, num_per_modality=per_modality)
    else:
        cfg = negatives.NegativesConfig(num_per_modality=per_modality)
    window_margin = {"video": clip.margin, "audio": codecs["audio"].steps(clip.margin_samples)}
    assert cfg.margin == window_margin, f"negatives' margins {cfg.margin} != the data windows' {window_margin}"
    return cfg


def setup(cfg: TrainConfig):
    """Device and DDP preamble: (device, rank, world size)."""
    world = int(os.environ.get("WORLD_SIZE", 1))
    rank, local = int(os.environ.get("RANK", 0)), int(os.environ.get("LOCAL_RANK", 0))
    if cfg.device == "auto":
        device = torch.device(f"cuda:{local}" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(cfg.device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    if world > 1:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device, rank, world


def train(cfg: TrainConfig, progress: bool = True) -> Path:
    device, rank, world = setup(cfg)
    out = Path(cfg.out)
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    init_meta = init_tensors = None
    if cfg.init:
        init_meta, init_tensors = read_checkpoint(cfg.init)
    meta = run_config(cfg, init_meta)
    model, diff, codecs, clip = build(meta)
    model.to(device)
    codecs = {k: c.to(device) for k, c in codecs.items()}
    ema = copy.deepcopy(model).requires_grad_(False)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    gen = torch.Generator(device).manual_seed(cfg.seed + 7919 * rank)  # n, noise, negatives
    start, resume = 0, latest_checkpoint(out)
    if resume is not None:
        _, tensors = read_checkpoint(resume)
        load_weights(model, tensors, "model.", resume)
        load_weights(ema, tensors, "ema.", resume)
        state = torch.load(resume.with_suffix(".pt"), map_location="cpu", weights_only=False)
        opt.load_state_dict(state["opt"])
        gen.set_state(state["gen"])
        torch.set_rng_state(state["torch_rng"])
        if state["cuda_rng"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        start = state["step"]
        if rank == 0:
            print(f"resuming from {resume} at step {start}", file=sys.stderr)
    elif init_tensors is not None:
        load_weights(model, init_tensors, "model.", cfg.init)
        load_weights(ema, init_tensors, "model.", cfg.init)
    if start >= cfg.steps:
        print(f"{out}: already trained to step {start} (--steps {cfg.steps})", file=sys.stderr)
        return resume
    ddp_model = torch.nn.parallel.DistributedDataParallel(model) if world > 1 else model

    dataset = data.build_dataset(cfg.data, "train", clip, root=cfg.data_root, num_clips=cfg.num_clips, seed=cfg.seed)
    loader = torch.utils.data.DataLoader(
        dataset, batch_sampler=StepBatchSampler(len(dataset), cfg.batch, cfg.seed, start, cfg.steps, rank, world),
        num_workers=cfg.workers, pin_memory=device.type == "cuda", persistent_workers=False)
    neg_cfg = negatives_config(clip, codecs, cfg.negatives)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)
    log = open(out / "log.jsonl", "a") if rank == 0 else None
    t0, last_ckpt, step = time.time(), resume, start
    bar = tqdm(total=cfg.steps, initial=start, desc="train", disable=rank != 0 or not progress, dynamic_ncols=True)
    model.train()
    for step, batch in enumerate(loader, start=start + 1):
        for g in opt.param_groups:
            g["lr"] = learning_rate(cfg, step - 1)
        windows = encode_batch(batch, codecs, device)
        pos = negatives.positive(windows, neg_cfg)
        with autocast:
            if cfg.contrastive:
                negs = negatives.draw_negatives(windows, neg_cfg, generator=gen)
                loss, terms = diff.contrastive_loss(ddp_model, pos, negs, cfg.eta, generator=gen)
            else:
                loss, terms = diff.joint_loss(ddp_model, pos, generator=gen)
        # Stop flags agreed by every process, so that no rank is left waiting in an all-reduce.
        stop = torch.tensor([float(not torch.isfinite(loss)),
                             float(cfg.time_limit > 0 and time.time() - t0 > cfg.time_limit * 60)], device=device)
        if world > 1:
            dist.all_reduce(stop, op=dist.ReduceOp.MAX)
        nonfinite, out_of_time = bool(stop[0]), bool(stop[1])
        if nonfinite:
            value = loss.item() if not torch.isfinite(loss) else "on another process"
            msg = f"error: non-finite loss ({value}) at step {step}; last good checkpoint: {last_ckpt or 'none'}"
            bar.close()
            sys.exit(msg)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        with torch.no_grad():  # EMA with warm-up, so short runs sample from trained weights
            decay = min(cfg.ema, (1 + step) / (10 + step))
            for e, p in zip(ema.parameters(), model.parameters()):
                e.lerp_(p, 1 - decay)
            for e, b in zip(ema.buffers(), model.buffers()):
                e.copy_(b)
        if rank != 0:
            if out_of_time:
                break
            continue
        logged = {"loss": loss.item(), **{k: v.item() for k, v in terms.items()}}
        bar.update(1)
        bar.set_postfix({k: f"{v:.4g}" for k, v in logged.items()})
        if step % cfg.log_every == 0 or step == cfg.steps:
            memory = {"gpu_mem_gib": round(torch.cuda.max_memory_allocated(device) / 2 ** 30, 2)} if device.type == "cuda" else {}
            log.write(json.dumps({"step": step, "lr": learning_rate(cfg, step - 1), "time": round(time.time() - t0, 2),
                                  **logged, **memory}) + "\n")
            log.flush()
        if step % cfg.ckpt_every == 0 or step == cfg.steps or out_of_time:
            last_ckpt = save_checkpoint(out, step, meta, model, ema, opt, gen, cfg.keep)
        if cfg.preview_every and (step % cfg.preview_every == 0 or step == cfg.steps):
            preview(ema, diff, codecs, clip, cfg, out / "previews" / f"step-{step:08d}", device)
        if out_of_time:
            print(f"time limit of {cfg.time_limit} min reached at step {step}", file=sys.stderr)
            break
    bar.close()
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()
    return last_ckpt


def preview(model, diff, codecs, clip, cfg: TrainConfig, stem: Path, device):
    """Video→audio and audio→video on the first validation clip: mp4s and a mel PNG to look at."""
    import sample
    val = data.build_dataset(cfg.data, "val", clip, root=cfg.data_root, num_clips=1, seed=cfg.seed)[0]
    model.eval()
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        sample.conditional_pair(model, diff, codecs, clip, val, stem, steps=cfg.preview_steps, device=device)
    model.train()


def parse_args(argv=None) -> TrainConfig:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_dataclass_args(p, TrainConfig)
    a = p.parse_args(argv)
    return TrainConfig(**{f.name: getattr(a, f.name) for f in dataclasses.fields(TrainConfig)})


def main(argv=None):
    cfg = parse_args(argv)
    try:
        train(cfg)
    except (data.BadInput, CheckpointError, vae.CheckpointError, ValueError) as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
