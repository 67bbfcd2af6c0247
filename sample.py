"""Sampling from a trained checkpoint: video→audio, audio→video and joint generation by guided DDIM
(CMMD §2.1, Eq. 3 and 5; SPEC §5).

    python sample.py --ckpt runs/cmmd/ckpt-00010000.safetensors --v2a clip.mp4
    python sample.py --ckpt CKPT --a2v song.wav --guidance 1
    python sample.py --ckpt CKPT --joint 4

Every input is converted by data.py (any length, fps, size or channel count): the clip runs from --start
for --frames frames (36 by default, twice the training length, as in the paper), or to the file's end if
that comes first. Outputs are mp4s with sound, wavs and mel-spectrogram PNGs in --out.
"""
import argparse
import contextlib
import sys
import time
from pathlib import Path

import torch

import data
import train
import vae

MODES = ("v2a", "a2v", "joint")


class Stopwatch:
    """Wall time per named stage, synchronising CUDA so a stage's kernels are counted in it."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, stage: str):
        sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
        sync()
        t0 = time.perf_counter()
        yield
        sync()
        self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - t0


def generate(model, diff, codecs, clip, *, cond: dict | None = None, batch: int = 1, frames: int = 36,
             steps: int = 200, guidance: float = 0.0, generator=None, progress: bool = True,
             stopwatch: Stopwatch | None = None) -> dict:
    """Sample with one of the three modes and decode: cond None (joint), {"video": frames (B, F, 3, H, W) in
    [-1, 1]} (video→audio) or {"audio": wav (B, L)} (audio→video). Returns {"video": (B, F, 3, H, W) in
    [-1, 1], "audio": (B, L)}, the given modality passed through. `stopwatch` times the stages."""
    watch = stopwatch or Stopwatch()
    device = next(model.parameters()).device
    if cond:
        batch = next(iter(cond.values())).shape[0]
        frames = cond["video"].shape[1] if "video" in cond else cond["audio"].shape[1] * clip.fps // clip.sample_rate
    samples = frames * clip.sample_rate // clip.fps
    latent = clip.size // codecs["video"].factor
    shapes = {"video": (batch, frames, codecs["video"].channels, latent, latent),  # (B, F, c, h, w)
              "audio": (batch, codecs["audio"].channels, codecs["audio"].steps(samples))}  # (B, M, T)
    with torch.no_grad(), watch("encode"):
        encoded = {k: codecs[k].encode(x.to(device)) for k, x in (cond or {}).items()}
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)
    with autocast, watch(f"sample ({steps} steps)"):
        x0 = diff.sample(model, shapes, cond=encoded, steps=steps, guidance=guidance, generator=generator,
                         progress=progress, **getattr(model, "sample_defaults", {}))
    out = {k: cond[k].to(device) for k in (cond or {})}
    for k in ("video", "audio"):
        if k not in out:
            with torch.no_grad(), watch(f"decode {k}"):
                out[k] = codecs[k].decode(x0[k].float())
    out["audio"] = torch.nn.functional.pad(out["audio"], (0, samples - out["audio"].shape[1]))[:, :samples]  # (B, L)
    out["mel"] = data.wav_to_mel(out["audio"])  # (B, M, T): what the PNGs show
    return out


def save(stem: Path, result: dict, i: int, reference: dict | None = None, clip=None) -> list[Path]:
    """Write example i as STEM.mp4 (video with sound), STEM.wav and STEM_mel.png (generated above, the
    reference below when given)."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    fps, sr = (clip.fps, clip.sample_rate) if clip else (data.FPS, data.SAMPLE_RATE)
    paths = [data.write_mp4(f"{stem}.mp4", result["video"][i], result["audio"][i], fps, sr),
             data.write_wav(f"{stem}.wav", result["audio"][i], sr)]
    mels = {"generated": result["mel"][i]}
    if reference is not None:
        mels["reference"] = data.wav_to_mel(reference["audio"][i:i + 1].to(result["mel"].device))[0]
    paths.append(data.mel_png(f"{stem}_mel.png", mels))
    return paths


def conditional_pair(model, diff, codecs, clip, item: dict, stem: Path, steps: int, device, guidance: float = 0.0,
                     seed: int = 0) -> dict:
    """Video→audio and audio→video from one dataset window's positive clip: STEM_v2a.* and STEM_a2v.*."""
    m, ms = clip.margin, clip.margin_samples
    ref = {"video": item["video"][None, m:m + clip.frames].to(device).float() / 127.5 - 1,  # (1, F, 3, H, W)
           "audio": item["audio"][None, ms:ms + clip.samples].to(device)}  # (1, L)
    results = {}
    for mode, known in (("v2a", "video"), ("a2v", "audio")):
        g = torch.Generator(device).manual_seed(seed)
        results[mode] = generate(model, diff, codecs, clip, cond={known: ref[known]}, steps=steps, guidance=guidance,
                                 generator=g, progress=False)
        save(Path(f"{stem}_{mode}"), results[mode], 0, reference=ref, clip=clip)
    return results


def load_input(path, mode: str, clip, start: float, frames: int) -> dict:
    """The condition of `mode` from a file, converted by data.py; refuses inputs shorter than one clip."""
    need_video = mode == "v2a"
    info = data.probe(path)
    kind = "video" if need_video else "audio"
    if not info[kind]:
        raise data.BadInput(f"{path}: no {kind} stream (--{mode} needs one)")
    available = int((info["duration"] - start) * clip.fps + 1e-6)
    if available < clip.frames:
        raise data.BadInput(f"{path}: shorter than one clip ({max(info['duration'] - start, 0):.2f} s from "
                            f"--start {start} < {clip.duration:.1f} s)")
    n = min(frames, available)
    av = data.read_av(path, start=start, frames=n, size=clip.size, fps=clip.fps, sample_rate=clip.sample_rate,
                      need_video=need_video, need_audio=True if not need_video else info["audio"])
    return {"video": None if av.video is None else av.video.float() / 127.5 - 1, "audio": av.audio}  # audio may be None


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--ckpt", required=True, help="a train.py checkpoint (ckpt-STEP.safetensors)")
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--v2a", nargs="+", metavar="VIDEO", help="generate audio for these videos")
    mode.add_argument("--a2v", nargs="+", metavar="AUDIO", help="generate video for these audio files (wav, flac, mp3, or a video's sound)")
    mode.add_argument("--joint", type=int, metavar="N", help="generate N sounding videos from noise")
    p.add_argument("--steps", type=int, default=200, help="DDIM steps (200 in the paper)")
    p.add_argument("--guidance", type=float, default=0.0, help="λ of the reconstruction guidance (Eq. 3); 0: replacement")
    p.add_argument("--frames", type=int, default=36, help="video frames to generate (36 = 2× training length, as the paper)")
    p.add_argument("--start", type=float, default=0.0, help="seconds into each input where the clip starts")
    p.add_argument("--samples", type=int, default=1, help="generations per input (the paper's protocol: 5)")
    p.add_argument("--seed", type=int, default=0, help="seed; the same seed and --batch give the same output")
    p.add_argument("--batch", type=int, default=4, help="examples sampled together")
    p.add_argument("--out", default="samples", help="output directory")
    p.add_argument("--vocoder", default=None, help="a melgan.py checkpoint; without one, Griffin-Lim")
    p.add_argument("--vae-path", default=None, help="SD-VAE directory or hub id (default: the checkpoint's)")
    p.add_argument("--weights", choices=["ema", "model"], default="ema", help="EMA or raw weights")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    a = p.parse_args(argv)
    try:
        run(a)
    except (data.BadInput, train.CheckpointError, vae.CheckpointError) as e:
        sys.exit(f"error: {e}")


def run(a):
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if a.device == "auto" else a.device)
    torch.manual_seed(a.seed)  # Griffin-Lim's initial phases
    if a.steps < 1 or a.frames < 1 or a.samples < 1 or a.batch < 1:
        raise data.BadInput("--steps, --frames, --samples and --batch must be positive")
    vocoder = None
    if a.vocoder:
        import melgan
        vocoder = melgan.Vocoder(a.vocoder)
    mode = next(m for m in MODES if getattr(a, m) is not None)
    # Read every input before the model, so that a bad file fails in a second, not after loading.
    model_meta = train.read_checkpoint(a.ckpt)[0]
    clip = data.ClipConfig(**model_meta["clip"])
    inputs = [] if mode == "joint" else [(Path(f), load_input(f, mode, clip, a.start, a.frames)) for f in getattr(a, mode)]
    model, diff, codecs, clip, _ = train.load_model(a.ckpt, device, a.weights, a.vae_path, vocoder)
    out, g = Path(a.out), torch.Generator(device).manual_seed(a.seed)
    written = []
    if mode == "joint":
        for lo in range(0, a.joint, a.batch):
            n = min(a.batch, a.joint - lo)
            result = generate(model, diff, codecs, clip, batch=n, frames=a.frames, steps=a.steps, generator=g)
            for i in range(n):
                written += save(out / f"joint_{lo + i:03d}", result, i, clip=clip)
    else:
        known = "video" if mode == "v2a" else "audio"
        jobs = [(path, x, k) for path, x in inputs for k in range(a.samples)]
        for lo in range(0, len(jobs), a.batch):
            chunk = jobs[lo:lo + a.batch]
            by_len = {}  # inputs of different lengths are sampled in separate batches
            for job in chunk:
                by_len.setdefault(job[1][known].shape[0], []).append(job)
            for group in by_len.values():
                cond = {known: torch.stack([x[known] for _, x, _ in group])}
                result = generate(model, diff, codecs, clip, cond=cond, steps=a.steps, guidance=a.guidance, generator=g)
                has_audio = mode == "v2a" and all(x["audio"] is not None for _, x, _ in group)
                ref = {"audio": torch.stack([x["audio"] for _, x, _ in group])} if has_audio else None
                for i, (path, _, k) in enumerate(group):
                    suffix = f"_{k}" if a.samples > 1 else ""
                    written += save(out / f"{path.stem}_{mode}{suffix}", result, i, reference=ref, clip=clip)
    for path in written:
        if path.suffix in (".mp4", ".png"):
            print(path)


if __name__ == "__main__":
    main()
