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
import contextlib
import copy
import dataclasses
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm import tqdm

import checkpoint
import cli
import data
import generate
import media
import mmldm
import models
import negatives
import pipeline
import sampling
from modalities import to_unit
from vae import HUB_ID  # by name: TrainConfig's field `vae` would shadow the module

# The paper's optimiser (CMMD App. B.2): Adam at 1e-4, ×0.8 every 80 k steps, down to 2e-5.
PAPER_LR, PAPER_LR_DECAY, PAPER_LR_EVERY, PAPER_LR_MIN = 1e-4, 0.8, 80_000, 2e-5
PAPER_ETA = 5e-5  # η of Eq. 6 (CMMD §2.2, following CDCD)


@dataclass
class TrainConfig:
    """Everything about a run that is not the network; saved whole in every checkpoint."""
    data: str = field(default="synthetic", metadata={"help": "synthetic, folder, aist, or a prepared shard dir"})
    data_root: str | None = field(default=None, metadata={"help": "video folder (folder) or AIST++ root (aist)"})
    num_clips: int = field(default=2000, metadata={"help": "synthetic training clips"})
    out: str = field(default="runs/cmmd", metadata={"help": "run directory: checkpoints, log, previews"})
    model: str = field(default="cmmd", metadata={
        "help": "; ".join(f"{k}: {f.summary}" for k, f in models.MODELS.items()), "choices": list(models.MODELS)})
    preset: str = field(default="small", metadata={
        "help": "network size (paper is MM-Diffusion's official size with --model mmdiffusion)",
        "choices": list(models.PRESETS)})
    as_cmmd: bool = field(default=False, metadata={
        "help": "the --model's network with everything else CMMD's: the video codec of the flags, the mel, CMMD's "
                "diffusion and guidance (compares architectures alone)"})
    fusion: bool = field(default=True, metadata={"help": "easy fusion between the paths (off: ablation)"})
    vae: str = field(default="pixel", metadata={
        "help": "video codec: SD-VAE latents or pixels", "choices": ["sd", "pixel"]})
    vae_path: str = field(default=HUB_ID, metadata={"help": "SD-VAE directory or hub id"})
    patch: int = field(default=1, metadata={
        "help": "pixel codec: space-to-depth patch, video diffused as (3·p², H/p, W/p)"})
    center: bool = field(default=False, metadata={
        "help": "diffuse each modality minus its mean over the training clips (pipeline.Centered; for pixel models)"})
    frames: int = field(default=18, metadata={"help": "video frames per training clip (CMMD §3)"})
    size: int = field(default=64, metadata={"help": "frame side in pixels (128 in the paper)"})
    batch: int = field(default=8, metadata={"help": "clips per step per process (8 for nCMMD, 2 for CMMD)"})
    steps: int = field(default=700_000, metadata={"help": "total optimiser steps (nCMMD: 700 k)"})
    lr: float = field(default=PAPER_LR, metadata={"help": "Adam learning rate"})
    lr_decay: float = field(default=PAPER_LR_DECAY, metadata={"help": "lr factor every --lr-every steps"})
    lr_every: int = field(default=PAPER_LR_EVERY, metadata={"help": "steps between lr decays"})
    lr_min: float = field(default=PAPER_LR_MIN, metadata={"help": "lr floor"})
    lr_schedule: str = field(default="step", metadata={
        "help": "step: ×lr-decay every lr-every steps (the paper's); cosine: from lr to lr-min over --steps",
        "choices": ["step", "cosine"]})
    warmup: int = field(default=0, metadata={"help": "steps of linear lr warm-up from 0"})
    ema: float = field(default=0.9999, metadata={"help": "EMA decay of the weights used for sampling"})
    grad_clip: float = field(default=1.0, metadata={"help": "gradient norm clip (0: off)"})
    contrastive: bool = field(default=False, metadata={"help": "add the contrastive loss (CMMD Eq. 6)"})
    eta: float = field(default=PAPER_ETA, metadata={"help": "η, weight of the negative terms of Eq. 6"})
    negatives: int = field(default=1, metadata={"help": "negative batches per modality and step (CMMD §2.2)"})
    cond_tasks: float = field(default=0.0, metadata={
        "help": "MM-LDM's trained conditional modes (--model dit): the share of examples trained as v2a or a2v "
                "(half each), the clean known modality fed to the network and the loss on the other; 0: joint"})
    text_encoder: str | None = field(default=None, metadata={
        "help": "condition the DiT on the clips' captions (text.py): byt5-scratch (offline, trained with it) or a "
                "Hub id or folder of a T5 encoder (frozen); omit it for no text"})
    caption_drop: float = field(default=0.1, metadata={
        "help": "share of examples whose caption is dropped (\"\"), so the model also runs without text "
                "(classifier-free guidance, Ho & Salimans 2022)"})
    snr_gamma: float = field(default=0.0, metadata={
        "help": "γ of the Min-SNR-γ loss weighting (Hang et al. 2023; diffusion.py); 0: uniform over n, the paper's"})
    ae: str | None = field(default=None, metadata={
        "help": "--model mmldm: its autoencoder checkpoint (a --model mmldm-ae run); default: train one first in "
                "OUT/autoencoder for --ae-steps"})
    ae_steps: int = field(default=100_000, metadata={"help": "--model mmldm without --ae: the autoencoder's steps"})
    init: str | None = field(default=None, metadata={"help": "start from this checkpoint's weights (fine-tune)"})
    ckpt_every: int = field(default=5000, metadata={"help": "steps between checkpoints"})
    keep: int = field(default=3, metadata={"help": "checkpoints kept in --out"})
    preview_every: int = field(default=5000, metadata={"help": "steps between preview samples (0: off)"})
    preview_steps: int = field(default=pipeline.DEFAULT_SAMPLER["steps"], metadata={
        "help": "sampling steps of a preview (sample.py's default)"})
    preview_sampler: str = field(default=pipeline.DEFAULT_SAMPLER["sampler"], metadata={
        "help": "sampler of a preview (sample.py's default)", "choices": list(sampling.SOLVERS)})
    log_every: int = field(default=50, metadata={"help": "steps between JSONL log lines"})
    time_limit: float = field(default=0.0, metadata={"help": "stop (and save) after this many minutes (0: none)"})
    seed: int = field(default=0, metadata={"help": "seed of data order, noise, steps and negatives"})
    workers: int = field(default=2, metadata={"help": "DataLoader workers"})
    device: str = field(default="auto", metadata={"help": "auto, cpu, cuda or cuda:N"})


# ----------------------------------------------------------------------------------------------------
# The run on disk: weights and config in checkpoint.py's format, the resume state beside them
def save(out: Path, step: int, meta: dict, model, ema, opt, gen: torch.Generator, keep: int,
         autoencoder=None) -> Path:
    """ckpt-STEP.pt (optimizer, generator and RNG states), then ckpt-STEP.safetensors (raw and EMA weights,
    the config, and MM-LDM's frozen `autoencoder`, so the file alone is the model), each written atomically: a
    checkpoint exists once its .safetensors does. Keeps the newest `keep`."""
    stem = out / f"ckpt-{step:08d}"
    state = {"step": step, "opt": opt.state_dict(), "gen": gen.get_state(), "torch_rng": torch.get_rng_state(),
             "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}
    checkpoint.torch_save(state, f"{stem}.pt")
    tensors = {**{f"model.{k}": v for k, v in model.state_dict().items()},
               **{f"ema.{k}": v for k, v in ema.state_dict().items()},
               **({f"{pipeline.AE_PREFIX}{k}": v for k, v in autoencoder.state_dict().items()}
                  if autoencoder is not None else {})}
    path = checkpoint.save(f"{stem}.safetensors", tensors, meta, step=step)
    for old in sorted(out.glob(checkpoint.PATTERN))[:-keep]:
        old.unlink()
        old.with_suffix(".pt").unlink(missing_ok=True)
    return path


def latest_checkpoint(out: Path) -> Path | None:
    """The newest complete checkpoint of a run (its resume state beside it)."""
    return checkpoint.latest(out, complete=lambda p: p.with_suffix(".pt").exists())


def restore(cfg: TrainConfig, model, ema, opt, gen: torch.Generator) -> tuple[int, Path | None]:
    """Load where the run starts into the network, its EMA, the optimizer and the generator; return (the steps
    already done, the checkpoint resumed from or None). A run resumes from its own newest checkpoint: raw and
    EMA weights, optimizer, generator and RNG states, so that the rest of it is bit for bit an uninterrupted
    run's. Otherwise a fine-tune (--init) starts the network and its EMA both from the parent's raw weights,
    with a fresh optimizer; otherwise nothing is loaded."""
    resume = latest_checkpoint(Path(cfg.out))
    source = resume or cfg.init
    if source is None:
        return 0, None
    _, tensors = checkpoint.read(source)
    for module, prefix in ((model, "model."), (ema, "ema." if resume else "model.")):
        checkpoint.load_strict(module, tensors, prefix, source)
    if resume is None:
        return 0, None
    state = torch.load(resume.with_suffix(".pt"), map_location="cpu", weights_only=False)
    opt.load_state_dict(state["opt"])
    gen.set_state(state["gen"])
    torch.set_rng_state(state["torch_rng"])
    if state["cuda_rng"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    return state["step"], resume


# ----------------------------------------------------------------------------------------------------
class StepBatchSampler(torch.utils.data.Sampler):
    """Batches as a pure function of (seed, step): epoch e is permutation(seed, e) of the dataset, so a
    resumed run sees exactly the batches an uninterrupted one would. Rank r of K takes every K-th clip
    of the global batch."""

    def __init__(self, n: int, batch: int, seed: int, start: int, stop: int, rank: int = 0, world: int = 1):
        self.n, self.batch, self.seed = n, batch, seed
        self.start, self.stop, self.rank, self.world = start, stop, rank, world

    def __len__(self):
        return self.stop - self.start

    def __iter__(self):
        g, perm, epoch = self.batch * self.world, None, -1
        for step in range(self.start, self.stop):
            idx = []
            for j in range(step * g, (step + 1) * g):
                if j // self.n != epoch:
                    epoch = j // self.n
                    perm = torch.randperm(self.n,
                                          generator=torch.Generator().manual_seed(self.seed * 1_000_003 + epoch))
                idx.append(int(perm[j % self.n]))
            yield idx[self.rank::self.world]


def learning_rate(cfg: TrainConfig, step: int) -> float:
    """The paper's lr · decay^⌊step / every⌋ floored at lr_min (CMMD App. B.2), or a cosine from lr to lr_min
    over the run (Loshchilov & Hutter 2017; for short runs, which end at a low rate); after `warmup`
    linear steps from 0."""
    if cfg.lr_schedule == "cosine":
        lr = cfg.lr_min + 0.5 * (cfg.lr - cfg.lr_min) * (1 + math.cos(math.pi * min(step / max(cfg.steps, 1), 1.0)))
    else:
        lr = max(cfg.lr * cfg.lr_decay ** (step // cfg.lr_every), cfg.lr_min)
    return lr * min(1.0, (step + 1) / cfg.warmup) if cfg.warmup else lr


def optimizer_step(opt: torch.optim.Optimizer, loss: torch.Tensor, lr: float, grad_clip: float) -> None:
    """θ ← θ − ε·∇θ L (Algorithm 1's last line): one Adam step at ε = lr, the gradient's norm clipped to
    `grad_clip` (0: not clipped)."""
    for g in opt.param_groups:
        g["lr"] = lr
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], grad_clip)
    opt.step()


def optimizer(model: torch.nn.Module, lr: float) -> torch.optim.Optimizer:
    """Adam (CMMD App. B.2), the fused kernel: the same update as the per-tensor loop, one pass over all the
    parameters (CPU and CUDA), 5× faster on the demo's 258 small tensors, 6 % of its training step."""
    return torch.optim.Adam(model.parameters(), lr=lr, fused=True)


def parameters_and_buffers(net: torch.nn.Module) -> tuple[list, list]:
    """A network's parameters and buffers, listed once for ema_update rather than walked every step."""
    return list(net.parameters()), list(net.buffers())


@torch.no_grad()
def ema_update(ema: tuple[list, list], model: tuple[list, list], step: int, decay: float) -> None:
    """θ_ema ← d·θ_ema + (1 − d)·θ with d = min(decay, (1 + step) / (10 + step)): a warm-up, so that short runs
    sample from trained weights. `ema`, `model`: (parameters, buffers) as `parameters_and_buffers` lists them;
    buffers are copied."""
    d = min(decay, (1 + step) / (10 + step))
    torch._foreach_lerp_(ema[0], model[0], 1 - d)
    for e, b in zip(ema[1], model[1]):
        e.copy_(b)


def negatives_config(clip: data.ClipConfig, codecs: dict, per_modality: int) -> negatives.NegativesConfig:
    """The shifts of CMMD App. B.2 (2–4 frames) in the audio codec's own steps (mel steps or samples),
    checked against the data windows' margins."""
    if isinstance(codecs["audio"], pipeline.WaveCodec):
        cfg = negatives.NegativesConfig.waveform(clip.samples // clip.frames, num_per_modality=per_modality)
    else:
        cfg = negatives.NegativesConfig(num_per_modality=per_modality)
    window_margin = {"video": clip.margin, "audio": codecs["audio"].steps(clip.margin_samples)}
    assert cfg.margin == window_margin, f"negatives' margins {cfg.margin} != the data windows' {window_margin}"
    return cfg


def check_config(cfg: TrainConfig) -> None:
    """Every flag's range, with finite numbers, and the output folder: one line before any work."""
    for name, low in (("num_clips", 1), ("patch", 1), ("frames", 1), ("size", 1), ("batch", 1), ("steps", 1),
                      ("lr_every", 1), ("warmup", 0), ("negatives", 1), ("ckpt_every", 1), ("keep", 1),
                      ("preview_every", 0), ("preview_steps", 1), ("log_every", 1), ("workers", 0), ("lr_min", 0),
                      ("grad_clip", 0), ("eta", 0), ("time_limit", 0), ("snr_gamma", 0), ("ae_steps", 1)):
        cli.check_range(name, getattr(cfg, name), low)
    cli.check_range("cond_tasks", cfg.cond_tasks, 0, 1)
    cli.check_range("caption_drop", cfg.caption_drop, 0, 1)
    if cfg.text_encoder and cfg.contrastive:
        raise ValueError("--text-encoder with --contrastive: Eq. 6's negatives carry no captions; train one or the "
                         "other")
    if cfg.cond_tasks > 0 and cfg.contrastive:
        raise ValueError("--cond-tasks with --contrastive: Eq. 6's negatives are joint pairs; train one or the other")
    if cfg.model.startswith("mmldm") and cfg.contrastive:
        raise ValueError("--contrastive is CMMD's fine-tune (Eq. 6); MM-LDM's autoencoder has its own contrastive head")
    if cfg.ae is not None and cfg.model != "mmldm":
        raise ValueError(f"--ae is MM-LDM's autoencoder for --model mmldm, not --model {cfg.model}")
    if cfg.init is not None and cfg.model.startswith("mmldm"):
        raise ValueError("--init: MM-LDM's stages are not fine-tuned here; rerun a run's command to resume it")
    cli.check_range("lr", cfg.lr, 0, above=True)
    cli.check_range("lr_decay", cfg.lr_decay, 0, 1, above=True)
    cli.check_range("ema", cfg.ema, 0, 1)
    cli.check_writable_dir(cfg.out)


@contextlib.contextmanager
def process_group(cfg: TrainConfig):
    """The device and DDP preamble: yields (device, rank, world size). Under torchrun the process group lives
    for the block and is destroyed however the block ends: trained, already trained, out of time, or an error."""
    world = int(os.environ.get("WORLD_SIZE", 1))
    rank, local = int(os.environ.get("RANK", 0)), int(os.environ.get("LOCAL_RANK", 0))
    if cfg.device == "auto":
        device = torch.device(f"cuda:{local}" if torch.cuda.is_available() else "cpu")
    else:
        device = cli.device(cfg.device)
        if device.type == "cuda" and device.index is None:  # "cuda": this process's GPU
            device = torch.device("cuda", local)
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    if world > 1:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        yield device, rank, world
    finally:
        if world > 1:
            dist.destroy_process_group()


def build_run(cfg: TrainConfig, device) -> tuple[dict, pipeline.Pipeline, torch.utils.data.Dataset]:
    """The run's config (a fine-tune's keeps its parent's network, codecs and clip geometry), its untrained
    pipeline on `device`, checked on a zero clip, and its training clips."""
    parent = checkpoint.read(cfg.init)[0] if cfg.init else None
    meta = pipeline.run_config(cfg, parent)
    dataset = data.build_dataset(cfg.data, "train", data.ClipConfig(**meta["clip"]), root=cfg.data_root,
                                 num_clips=cfg.num_clips, seed=cfg.seed)
    if cfg.text_encoder:
        check_captions(cfg, dataset)
    if cfg.center and parent is None and cfg.model != "mmldm":  # a fine-tune, MM-LDM's generator: the parent's μ
        raw = {k: c.to(device) for k, c in pipeline.build(meta).codecs.items()}
        meta["codec"]["center"] = pipeline.codec_means(raw, dataset, device)
    pipe = pipeline.build(meta, path=cfg.init)
    pipe.net.to(device)
    pipe.codecs = {k: c.to(device) for k, c in pipe.codecs.items()}
    if pipe.autoencoder is not None:  # MM-LDM's generator: its autoencoder, trained and frozen
        checkpoint.load_strict(pipe.autoencoder, checkpoint.read(cfg.ae)[1], "ema.", cfg.ae, "the autoencoder")
        pipe.autoencoder.to(device)
    check_network(pipe, device)
    return meta, pipe, dataset


def check_captions(cfg: TrainConfig, dataset) -> None:
    """--text-encoder needs captions: a one-line error when the first clips have none (no captions.tsv, or
    shards prepared before captions existed), rather than a text model trained on empty captions."""
    seen = [dataset[i].get("caption", "") for i in range(min(len(dataset), 64))]
    if not any(seen):
        raise ValueError(f"--text-encoder: the first {len(seen)} training clips of --data {cfg.data} have no caption "
                         "(a folder needs captions.tsv; shards prepared before captions need preparing again: "
                         "docs/data.md#captions)")


def check_network(pipe: pipeline.Pipeline, device) -> None:
    """One forward pass of the network on a zero clip, before any data is read: a clip the network cannot
    take (a frame side its downsampling does not divide, say) is one line here, not a traceback at step 1."""
    clip, codecs = pipe.clip, pipe.codecs
    if clip.size % codecs["video"].factor:
        raise ValueError(f"--size {clip.size} must be divisible by the video codec's factor {codecs['video'].factor}")
    x = {k: torch.zeros(s, device=device) for k, s in pipe.net_shapes(1, clip.frames).items()}  # the net's input
    pipe.net.eval()  # no dropout: the check draws no random numbers from the run's generator
    try:
        with torch.no_grad():
            if isinstance(pipe.net, mmldm.MMAutoencoder):  # its forward is its loss, on a clip of its codecs
                pipe.net(pipe.diffusion, x, torch.zeros(1, dtype=torch.long, device=device),
                         generator=torch.Generator(device).manual_seed(0))
            else:
                pipe.net(x, torch.zeros(1, dtype=torch.long, device=device))
    except RuntimeError as e:
        raise ValueError(f"--size {clip.size}, --frames {clip.frames}: the network cannot take this clip "
                         f"({str(e).splitlines()[0]})") from None
    pipe.net.train()


def has_validation_clip(cfg: TrainConfig, clip: data.ClipConfig) -> bool:
    """Whether there is a validation clip to preview: a folder's hash split can give none (chance about
    0.95^N for N files); then previews are off, with a warning."""
    try:
        data.build_dataset(cfg.data, "val", clip, root=cfg.data_root, num_clips=1, seed=cfg.seed)
    except media.BadInput as e:
        print(f"warning: previews are off: no validation clip to preview ({e})", file=sys.stderr)
        return False
    return True


def agreed_stop(loss: torch.Tensor, out_of_time: bool, device, world: int) -> tuple[bool, bool]:
    """(a non-finite loss, out of time) on any process: every process stops at the same step, so that none
    is left waiting in an all-reduce."""
    stop = torch.tensor([float(not torch.isfinite(loss)), float(out_of_time)], device=device)
    if world > 1:
        dist.all_reduce(stop, op=dist.ReduceOp.MAX)
    return bool(stop[0]), bool(stop[1])


def log(out: Path, record: dict, device) -> None:
    """One line of OUT/log.jsonl, with the peak GPU memory on a GPU; the file is made at its first line, so a
    run that fails before one leaves none."""
    if device.type == "cuda":
        record = {**record, "gpu_mem_gib": round(torch.cuda.max_memory_allocated(device) / 2 ** 30, 2)}
    with open(out / "log.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")


def step_loss(cfg: TrainConfig, pipe: pipeline.Pipeline, model, batch: dict, windows: dict,
              neg_cfg: negatives.NegativesConfig, gen: torch.Generator, autocast) -> tuple[torch.Tensor, dict]:
    """One step's loss on a batch of encoded windows: MM-LDM's autoencoder's (mmldm.MMAutoencoder.loss) on
    the windows' centres and the clips' classes, or Algorithm 1's (on MM-LDM's latents of the centres for its
    generator). Returns (loss, its terms)."""
    if isinstance(pipe.net, mmldm.MMAutoencoder):
        pos = negatives.positive(windows, neg_cfg)
        with autocast:
            return model(pipe.diffusion, pos, mmldm.classes_of(batch).to(pos["audio"].device), generator=gen,
                         snr_gamma=cfg.snr_gamma)
    captions = None
    if cfg.text_encoder:  # each caption dropped with probability --caption-drop (classifier-free guidance)
        drop = torch.rand(len(batch["caption"]), generator=gen, device=gen.device) < cfg.caption_drop
        captions = ["" if d else c for c, d in zip(batch["caption"], drop.tolist())]
    return algorithm_1_loss(cfg, pipe.diffusion, model, windows, neg_cfg, gen, autocast,
                            pipe.latents if pipe.autoencoder is not None else None, captions)


def algorithm_1_loss(cfg: TrainConfig, diff, model, windows: dict, neg_cfg: negatives.NegativesConfig,
                     gen: torch.Generator, autocast, latents=None, captions=None) -> tuple[torch.Tensor, dict]:
    """Algorithm 1's loss on a batch of encoded windows: L_cont = L − η·L¬ against negatives drawn from them
    (CMMD Eq. 6) with --contrastive, else nCMMD's joint loss L alone (Eq. 2). latents: a map of the windows'
    centres into the space the model denoises (MM-LDM's; joint loss only); captions: the batch's, for a
    text-conditioned network (joint loss only). Returns (loss, its terms)."""
    pos = negatives.positive(windows, neg_cfg)
    if latents is not None:
        pos = latents(pos)
    with autocast:
        if cfg.contrastive:
            negs = negatives.draw_negatives(windows, neg_cfg, generator=gen)  # v₀¬, a₀¬
            return diff.contrastive_loss(model, pos, negs, cfg.eta, generator=gen, snr_gamma=cfg.snr_gamma)  # Eq. 6
        known = draw_tasks(cfg.cond_tasks, pos, gen) if cfg.cond_tasks > 0 else None
        return diff.joint_loss(model, pos, generator=gen, snr_gamma=cfg.snr_gamma, known=known,
                               text=captions)  # Eq. 2


def draw_tasks(share: float, x0: dict, gen: torch.Generator) -> dict:
    """Each example's task (MM-LDM's conditional modes): v2a with probability share/2, a2v share/2, else joint.
    Returns {modality: (B,) bool, True where that modality is the clean known condition}."""
    some = next(iter(x0.values()))
    u = torch.rand(some.shape[0], generator=gen, device=gen.device).to(some.device)  # (B,)
    return {"video": u < share / 2, "audio": (u >= share / 2) & (u < share)}


def log_step(cfg: TrainConfig, out: Path, bar, step: int, loss: torch.Tensor, terms: dict, t0: float, device) -> None:
    """Rank 0's progress bar every step and, every --log-every steps and at the last, a log line with the
    loss and its per-modality terms."""
    logged = {"loss": loss.item(), **{k: v.item() for k, v in terms.items()}}
    bar.update(1)
    bar.set_postfix({k: f"{v:.4g}" for k, v in logged.items()})
    if step % cfg.log_every == 0 or step == cfg.steps:
        log(out, {"step": step, "lr": learning_rate(cfg, step - 1), "time": round(time.time() - t0, 2),
                  **logged}, device)


def run_steps(cfg: TrainConfig, meta: dict, pipe: pipeline.Pipeline, dataset, ema, opt, gen: torch.Generator,
              start: int, last_ckpt: Path | None, ranks: tuple, progress: bool) -> Path | None:
    """Algorithm 1's loop from step `start` to --steps or the time limit: the loss, the Adam step and the EMA on
    every process, the log, checkpoints and previews on rank 0. Returns the newest checkpoint."""
    device, rank, world = ranks
    out, model, clip = Path(cfg.out), pipe.net, pipe.clip
    ema_state, model_state = parameters_and_buffers(ema), parameters_and_buffers(model)
    ddp_model = torch.nn.parallel.DistributedDataParallel(model) if world > 1 else model
    previews = (rank == 0 and cfg.preview_every > 0 and not isinstance(model, mmldm.MMAutoencoder)
                and has_validation_clip(cfg, clip))
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
    loader = torch.utils.data.DataLoader(
        dataset, batch_sampler=StepBatchSampler(len(dataset), cfg.batch, cfg.seed, start, cfg.steps, rank, world),
        num_workers=cfg.workers, pin_memory=device.type == "cuda", persistent_workers=False)
    neg_cfg = negatives_config(clip, pipe.codecs, cfg.negatives)
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda"
                else torch.autocast("cpu", enabled=False))
    t0 = time.time()
    model.train()
    with tqdm(total=cfg.steps, initial=start, desc="train", disable=rank != 0 or not progress,
              dynamic_ncols=True) as bar:
        for step, batch in enumerate(loader, start=start + 1):
            windows = pipeline.encode_batch(batch, pipe.codecs, device)  # v₀, a₀ with their margins
            loss, terms = step_loss(cfg, pipe, ddp_model, batch, windows, neg_cfg, gen, autocast)
            nonfinite, out_of_time = agreed_stop(
                loss, cfg.time_limit > 0 and time.time() - t0 > cfg.time_limit * 60, device, world)
            if nonfinite:
                value = loss.item() if not torch.isfinite(loss) else "on another process"
                sys.exit(f"error: non-finite loss ({value}) at step {step}; "
                         f"last good checkpoint: {last_ckpt or 'none'}")
            optimizer_step(opt, loss, learning_rate(cfg, step - 1), cfg.grad_clip)
            ema_update(ema_state, model_state, step, cfg.ema)
            if rank == 0:
                log_step(cfg, out, bar, step, loss, terms, t0, device)
                if step % cfg.ckpt_every == 0 or step == cfg.steps or out_of_time:
                    last_ckpt = save(out, step, meta, model, ema, opt, gen, cfg.keep, pipe.autoencoder)
                if previews and (step % cfg.preview_every == 0 or step == cfg.steps):
                    preview(dataclasses.replace(pipe, net=ema), cfg, out / "previews" / f"step-{step:08d}")
            if out_of_time:
                if rank == 0:
                    print(f"time limit of {cfg.time_limit} min reached at step {step}", file=sys.stderr)
                break
    return last_ckpt


def train(cfg: TrainConfig, progress: bool = True) -> Path:
    """Train by CMMD's Algorithm 1 and return the newest checkpoint: CMMD with the contrastive loss (Eq. 6)
    with --contrastive, else nCMMD with the joint loss alone (Eq. 2). A step, line by line of Algorithm 1:

        v₀, a₀ ~ 𝒟                           a batch of windows (StepBatchSampler), encoded
        v₀¬, a₀¬ ~ V′, A′ made of 𝒟, v₀, a₀   negatives.draw_negatives (--contrastive only)
        n ~ U(1, …, N);  ε ~ N(0, I)          drawn from `gen` inside the loss
        L_cont = L − η·L¬                     Diffusion.contrastive_loss (Eq. 6); nCMMD: L, Diffusion.joint_loss
        θ ← θ − ε·∇θ L_cont                   optimizer_step

    Around it (run_steps): the EMA of θ that sampling uses (ema_update), a checkpoint every --ckpt-every steps
    (save), the start from the run's newest checkpoint or from a fine-tune's parent (restore), and a stop on a
    non-finite loss or at the time limit that every DDP process agrees on (agreed_stop)."""
    check_config(cfg)
    if cfg.model == "mmldm" and cfg.ae is None:  # MM-LDM's two stages: its autoencoder first, as its own run
        cfg = dataclasses.replace(cfg, ae=str(autoencoder_stage(cfg, progress)))
    with process_group(cfg) as (device, rank, world):
        out = Path(cfg.out)
        torch.manual_seed(cfg.seed)
        meta, pipe, dataset = build_run(cfg, device)
        ema = copy.deepcopy(pipe.net).requires_grad_(False)
        opt = optimizer(pipe.net, cfg.lr)
        gen = torch.Generator(device).manual_seed(cfg.seed + 7919 * rank)  # n, noise, negatives
        start, last_ckpt = restore(cfg, pipe.net, ema, opt, gen)
        if last_ckpt is not None and cfg.model == "mmldm":
            same_autoencoder(cfg, last_ckpt)
        if last_ckpt is not None and rank == 0:
            print(f"resuming from {last_ckpt} at step {start}", file=sys.stderr)
        if start >= cfg.steps:
            print(f"{out}: already trained to step {start} (--steps {cfg.steps})", file=sys.stderr)
            return last_ckpt
        last_ckpt = run_steps(cfg, meta, pipe, dataset, ema, opt, gen, start, last_ckpt, (device, rank, world),
                              progress)
        if world > 1:
            dist.barrier()  # no process returns before rank 0 has written the last checkpoint
        return last_ckpt


def autoencoder_stage(cfg: TrainConfig, progress: bool) -> Path:
    """MM-LDM's first stage for `--model mmldm` without --ae: its autoencoder trained (or found trained) in
    OUT/autoencoder for --ae-steps; a generator already begun in OUT goes on with the autoencoder it began on.
    Stops the command, with a line saying how to go on, when the stage ends early (--time-limit)."""
    begun = latest_checkpoint(Path(cfg.out))
    if begun is not None:
        ae = Path(checkpoint.config(begun)["train"]["ae"])
        if not ae.is_file():
            raise ValueError(f"{begun}: its autoencoder {ae} is gone; start the generator afresh in another --out")
        return ae
    stage = dataclasses.replace(cfg, model="mmldm-ae", out=str(Path(cfg.out) / "autoencoder"), steps=cfg.ae_steps,
                                cond_tasks=0.0, preview_every=0)
    train(stage, progress)
    ae = latest_checkpoint(Path(stage.out))  # on every process (only rank 0's train() returns it)
    step = int(ae.stem.split("-")[1]) if ae else 0
    if step < cfg.ae_steps:
        sys.exit(f"the autoencoder stopped at step {step} of {cfg.ae_steps} (--time-limit); rerun the same command "
                 "to go on")
    return ae


def same_autoencoder(cfg: TrainConfig, resumed: Path) -> None:
    """A resumed MM-LDM generator goes on with the autoencoder whose latents it learnt (its autoencoder run, trained
    further, would give other latents): a one-line error otherwise."""
    carried = {k[len(pipeline.AE_PREFIX):]: v for k, v in checkpoint.read(resumed)[1].items()
               if k.startswith(pipeline.AE_PREFIX)}
    given = {k[len("ema."):]: v for k, v in checkpoint.read(cfg.ae)[1].items() if k.startswith("ema.")}
    if carried.keys() != given.keys() or any(not torch.equal(v, given[k]) for k, v in carried.items()):
        raise ValueError(f"{resumed}: the generator was trained on another autoencoder than {cfg.ae}; "
                         "keep its --ae-steps or use another --out")


def preview(pipe: pipeline.Pipeline, cfg: TrainConfig, stem: Path):
    """Video→audio and audio→video on the first validation clip: STEM_v2a.* and STEM_a2v.* (mp4s, mel PNGs)."""
    clip, device = pipe.clip, pipe.device
    val = data.build_dataset(cfg.data, "val", clip, root=cfg.data_root, num_clips=1, seed=cfg.seed)[0]
    m, ms = clip.margin, clip.margin_samples
    truth = {"video": to_unit(val["video"][None, m:m + clip.frames].to(device)),  # (1, F, 3, H, W)
             "audio": val["audio"][None, ms:ms + clip.samples].to(device)}  # (1, L)
    sampler = pipe.sampler(sampler=cfg.preview_sampler, steps=cfg.preview_steps)
    pipe.net.eval()
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        for mode, known in (("v2a", "video"), ("a2v", "audio")):
            result = generate.generate(pipe, sampler, cond={known: truth[known]},
                                       generator=torch.Generator(device).manual_seed(0))
            generate.save(f"{stem}_{mode}", result, 0, clip, reference=truth["audio"][0])
    pipe.net.train()


def parse_args(argv=None) -> TrainConfig:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    cli.add_dataclass_args(p, TrainConfig)
    return TrainConfig(**cli.dataclass_fields(p.parse_args(argv), TrainConfig))


def main(argv=None):
    cli.run(train, parse_args(argv))


if __name__ == "__main__":
    main()
