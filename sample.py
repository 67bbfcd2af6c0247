"""Sampling from a checkpoint: video→audio, audio→video, continuation and joint generation, of any length
(CMMD §2.1, Eq. 3 and 5; the continuation tasks of MM-LDM), by DDIM or DPM-Solver++.

    python sample.py --v2a clip.mp4                     # your video back, with a generated soundtrack
    python sample.py --a2v song.wav                     # a video for the audio, as long as the audio
    python sample.py --v2a clip.mp4 --prefix 2          # audio continuation: keep the first 2 s of its sound
    python sample.py --a2v clip.mp4 --prefix 2          # video continuation: keep the first 2 s of its frames
    python sample.py --continue clip.mp4 --prefix 2 --seconds 10   # sounding-video continuation
    python sample.py --joint 4 --seconds 12             # long joint generation

Every input is as long as it is: the model sees it as it was trained (10 fps, centre crop, its frame size)
in windows of --window frames that overlap by --overlap; each window after the first treats the overlap
already generated as known, through the same replacement and guidance as the condition (temporal
inpainting, `diffusion.Known`), and the windows join at the overlap. With no --ckpt, the newest checkpoint
under runs/ (e.g. the demo's) is used. A folder among the inputs means every media file in it.
"""
import argparse
import contextlib
import json
import math
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

import checkpoint
import cli
import data
import diffusion
import figures
import media
import melspec
import pipeline

MODES = ("v2a", "a2v", "continue", "joint")
# sample.py's default: the cheapest setting that matched the paper's sampler (diffusion.PAPER_SAMPLER) on
# held-out clips, with and without guidance (experiments/samplers.py, cheapest_match)
DEFAULT_SAMPLER = {"sampler": "dpmsolver++", "steps": 25}
# Beside a run's checkpoints: the sampler settings chosen for them on validation clips, per mode (demo.py
# writes its λ there), which stand in for DEFAULT_SAMPLER where the user gives no flag
RUN_SETTINGS = "sampling.json"
DEFAULT_WINDOW = 36  # frames per window: twice the training length, as the paper samples (CMMD §3)
DEFAULT_OVERLAP = 12  # frames each window shares with the one before (1.2 s)
AUDIO_EXTENSIONS = (".wav", ".flac", ".mp3", ".ogg", ".m4a", ".aac", ".opus")


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


# ---- generation of any length --------------------------------------------------------------------------

def block_frames(clip: data.ClipConfig, codec) -> int:
    """The fewest frames whose audio is a whole number of the audio codec's steps (4 for the mel's hop of
    256 at 1 600 samples per frame): windows start on multiples of it, so both streams cut at one instant."""
    spf = clip.sample_rate // clip.fps
    return next(f for f in range(1, codec.samples_per_step + 1) if (f * spf) % codec.samples_per_step == 0)


def windows(frames: int, window: int, overlap: int, block: int) -> list[tuple[int, int]]:
    """Frame ranges [f0, f1) covering 0…frames: starts on multiples of `block`, each window `window` long and
    overlapping the one before by at least `overlap`; the last one ends at `frames` (up to block − 1 longer)."""
    if frames <= window:
        return [(0, frames)]
    hop = max(block, (window - overlap) // block * block)
    last = (frames - window) // block * block
    return [(s, s + window) for s in range(0, last, hop)] + [(last, frames)]


def generate(pipe: pipeline.Pipeline, cfg: diffusion.SamplerConfig, *, cond: dict | None = None,
             known: dict | None = None, frames: int | None = None, batch: int = 1, window: int = DEFAULT_WINDOW,
             overlap: int = DEFAULT_OVERLAP, generator=None, progress: bool = False,
             stopwatch: Stopwatch | None = None) -> dict:
    """Generate and decode. cond: signals {"video": (B, F, 3, H, W) in [-1, 1], "audio": (B, L)} with
    L = F · samples per frame; known: {modality: (B, F) bool}, the frames of cond[modality] that are known
    (a modality of cond without an entry is known whole). cond=None is joint generation of `frames` frames.
    Examples: {"video": v} is video→audio; {"video": v, "audio": a} with known {"audio": first P frames} is
    audio continuation. Returns {"video": (B, F, 3, H, W), "audio": (B, L), "mel": (B, M, T) of the audio,
    "windows": [(f0, f1), ...]}, the known part of each signal exactly as given."""
    watch, clip, codecs, net = stopwatch or Stopwatch(), pipe.clip, pipe.codecs, pipe.net
    cond, known = dict(cond or {}), dict(known or {})
    device, spf = pipe.device, clip.sample_rate // clip.fps
    if cond:
        batch = next(iter(cond.values())).shape[0]
        frames = cond["video"].shape[1] if "video" in cond else cond["audio"].shape[1] // spf
    L = frames * spf
    assert all(cond["audio"].shape[1] == L for _ in [0] if "audio" in cond), f"audio must have {L} samples"
    side = clip.size // codecs["video"].factor
    T = codecs["audio"].steps(L)
    full = {"video": (batch, frames, codecs["video"].channels, side, side), "audio": (batch, codecs["audio"].channels, T)}
    frame_known = {k: known.get(k, torch.ones(batch, frames, dtype=torch.bool)).to(device) for k in cond}
    with torch.no_grad(), watch("encode"):
        # clone: the pixel codec's encode is the identity, and x is written into below
        x = {k: codecs[k].encode(cond[k].to(device).float()).clone() if k in cond else torch.zeros(full[k], device=device)
             for k in diffusion.MODALITIES}
    have = {"video": frame_known["video"].clone() if "video" in cond else torch.zeros(batch, frames, dtype=torch.bool, device=device),
            "audio": (codecs["audio"].known_steps(frame_known["audio"].repeat_interleave(spf, 1)) if "audio" in cond
                      else torch.zeros(batch, T, dtype=torch.bool, device=device))}
    spans = windows(frames, window, overlap, block_frames(clip, codecs["audio"]))
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()
    for f0, f1 in tqdm(spans, desc="windows", disable=not progress or len(spans) == 1, leave=False):
        t1 = T if f1 == frames else codecs["audio"].steps(f1 * spf)
        span = {"video": (f0, f1 - f0), "audio": (codecs["audio"].steps(f0 * spf), t1 - codecs["audio"].steps(f0 * spf))}
        w_cond, w_mask = {}, {}
        for k in diffusion.MODALITIES:
            h = have[k].narrow(1, *span[k]).clone()  # (B, window length); copies: x and have change below
            if h.any():
                w_cond[k] = x[k].narrow(diffusion.TIME_AXIS[k], *span[k]).clone()
                if not h.all():
                    w_mask[k] = h
        shapes = {k: full[k][:diffusion.TIME_AXIS[k]] + (span[k][1],) + full[k][diffusion.TIME_AXIS[k] + 1:]
                  for k in diffusion.MODALITIES}
        with autocast, watch(f"sample ({cfg.sampler}, {cfg.steps} steps)"):
            out = pipe.diffusion.sample(net, shapes, cfg, cond=w_cond, mask=w_mask, generator=generator,
                                        progress=progress and len(spans) == 1)
        for k in diffusion.MODALITIES:
            x[k].narrow(diffusion.TIME_AXIS[k], *span[k]).copy_(out[k].float())
            have[k].narrow(1, *span[k]).fill_(True)
    result = {"windows": spans}
    for k in diffusion.MODALITIES:
        if k in cond and k not in known:  # known whole: the given signal itself
            result[k] = cond[k].to(device).float()
            continue
        with torch.no_grad(), watch(f"decode {k}"):
            decoded = codecs[k].decode(x[k]).float()
        if k == "audio":
            decoded = torch.nn.functional.pad(decoded, (0, L - decoded.shape[1]))[:, :L]  # (B, L)
        if k in cond:  # the known frames exactly as given
            m = frame_known[k].repeat_interleave(spf, 1) if k == "audio" else frame_known[k].view(batch, frames, 1, 1, 1)
            decoded = torch.where(m, cond[k].to(device).float(), decoded)
        result[k] = decoded
    for k in diffusion.MODALITIES:
        bad = int((~torch.isfinite(result[k])).sum())
        if bad:
            raise media.BadInput(f"{pipe.path}: generated {k} has {bad} non-finite values (a diverged checkpoint?)")
    result["mel"] = melspec.wav_to_mel(result["audio"])  # (B, M, T): what the figures show
    return result


# ---- inputs and outputs --------------------------------------------------------------------------------

def expand_inputs(paths: list, mode: str) -> list[Path]:
    """The files named, a folder meaning every media file in it (sorted)."""
    exts = media.VIDEO_EXTENSIONS + (AUDIO_EXTENSIONS if mode == "a2v" else ())
    out = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.suffix.lower() in exts and f.is_file())
            if not found:
                raise media.BadInput(f"{p}: a folder with no media files ({', '.join(exts)})")
            out += found
        else:
            out.append(p)
    return out


def output_stems(files: list[Path], mode: str) -> list[str]:
    """One output name per input, unique: STEM_MODE; on a clash the extension is added (clip.mkv, clip.avi ->
    clip_mkv_v2a, clip_avi_v2a), else the parent folders' names are prepended (a/clip.mp4, b/clip.mp4 ->
    a_clip_v2a, b_clip_v2a); the same file given twice gets a number. Names never contain a path separator."""
    paths = [p.resolve() for p in files]

    def name(p: Path, depth: int, ext: bool) -> str:
        folders = [x for x in p.parent.parts if x != p.anchor][-depth:] if depth else []
        return "_".join([*folders, p.stem, *([p.suffix.lstrip(".")] if ext else []), mode])
    keys = [(depth, ext) for depth in range(max((len(p.parts) for p in paths), default=0)) for ext in (False, True)]
    stems = []
    for p in paths:
        others = [q for q in paths if q != p]
        key = next((k for k in keys if all(name(q, *k) != name(p, *k) for q in others)), keys[-1])
        stems.append(name(p, *key))
    seen: dict[str, int] = {}
    for i, s in enumerate(stems):  # the same file given twice
        seen[s] = seen.get(s, 0) + 1
        if seen[s] > 1:
            stems[i] = f"{s}{seen[s]}"
    return stems


def read_input(path: Path, mode: str, clip: data.ClipConfig, prefix: float, seconds: float | None,
               keep_audio: bool = False) -> dict:
    """The condition of one input, whole: {"video", "audio", "known", "duration"}; checks before any work.
    keep_audio (v2a): the input's sound goes into the output too, so it is read and checked as well."""
    info = media.probe(path)  # read_av below checks the packets too (media.probe complete=True)
    need = {"v2a": {"video"} | ({"audio"} if prefix or (keep_audio and info["audio"]) else set()),
            "a2v": {"audio"} | ({"video"} if prefix else set()), "continue": {"video", "audio"}}[mode]
    for kind in sorted(need):
        if not info[kind]:
            why = "its first --prefix seconds are kept" if (mode, kind) in (("v2a", "audio"), ("a2v", "video")) else f"--{mode} needs one"
            raise media.BadInput(f"{path}: no {kind} stream ({why})")
    duration = info["duration"] if mode != "continue" else (seconds or info["duration"])
    if prefix and prefix >= min(duration, info["duration"]):
        raise media.BadInput(f"{path}: --prefix {prefix:g} s is not shorter than the input ({info['duration']:.2f} s)")
    frames = math.ceil(duration * clip.fps - 1e-6)  # the generated signal covers the whole duration
    if frames < 1:
        raise media.BadInput(f"{path}: too short ({duration:.2f} s)")
    av = media.read_av(path, frames=frames, size=clip.size, fps=clip.fps, sample_rate=clip.sample_rate,
                      need_video="video" in need, need_audio="audio" in need, check_complete=True)
    cond = {k: v for k, v in (("video", av.video), ("audio", av.audio)) if v is not None}
    if "video" in cond:
        cond["video"] = cond["video"].float() / 127.5 - 1  # (F, 3, H, W) in [-1, 1]
    keep = round(prefix * clip.fps)
    gen = {"v2a": ["audio"], "a2v": ["video"], "continue": ["video", "audio"]}[mode]
    known = {k: torch.arange(frames) < keep for k in gen if k in cond}  # (F,): the prefix
    return {"cond": cond, "known": known, "frames": frames, "duration": duration}


def save(stem, result: dict, i: int, clip: data.ClipConfig, *, duration: float | None = None, soundtrack_of=None,
         keep_audio: bool = False, reference: torch.Tensor | None = None, events=None, title: str = "") -> list[str]:
    """Example i of a result as STEM.mp4, STEM.wav and STEM_mel.png (the generated mel, and the `reference`
    audio's (L,) below it when given, with the `events` times marked). soundtrack_of: a video file whose own
    video stream STEM.mp4 carries, with the generated audio (v2a); else STEM.mp4 is the result's video at
    the model's size. Returns lines to print."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    n = round((duration if duration is not None else result["audio"].shape[1] / clip.sample_rate) * clip.sample_rate)
    wav = result["audio"][i, :n].cpu()
    if soundtrack_of is not None:
        how = media.write_soundtrack(soundtrack_of, f"{stem}.mp4", wav, clip.sample_rate, keep_audio=keep_audio)
    else:
        media.write_mp4(f"{stem}.mp4", result["video"][i].cpu(), wav, clip.fps, clip.sample_rate)
        how = f"video at the model's {clip.size}×{clip.size} px, {clip.fps} fps"
    media.write_wav(f"{stem}.wav", wav, clip.sample_rate)
    mels = {"generated": result["mel"][i, :, :n // melspec.HOP]}
    if reference is not None:
        mels["truth" if events is not None else "input"] = melspec.wav_to_mel(reference[None, :n].to(result["mel"].device))[0]
    figures.mel_figure(f"{stem}_mel.png", mels, events=events, title=title or stem.name)
    return [f"{stem}.mp4 ({how})", f"{stem}_mel.png"]


# ---- the command ---------------------------------------------------------------------------------------

def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--v2a", nargs="+", metavar="VIDEO", help="generate a soundtrack for these videos (or folders)")
    mode.add_argument("--a2v", nargs="+", metavar="AUDIO", help="generate video for these audio files (wav, flac, mp3, or a video's sound)")
    mode.add_argument("--continue", dest="cont", nargs="+", metavar="VIDEO", help="continue both streams after --prefix")
    mode.add_argument("--joint", type=int, metavar="N", help="generate N sounding videos from noise")
    p.add_argument("--ckpt", default=None, help="a checkpoint file, a Hugging Face Hub repo id (org/name), or none: "
                                                "the newest under runs/")
    cli.add_dataclass_args(p, diffusion.SamplerConfig, unset=True)
    p.add_argument("--prefix", type=float, default=0.0, help="seconds at the start of each input that are kept "
                   "(v2a: its audio, a2v: its video, continue: both) and continued")
    p.add_argument("--seconds", type=float, default=None, help="length of --joint and --continue outputs "
                   "(default: --window frames for joint, the input's length for continue)")
    p.add_argument("--window", type=int, default=DEFAULT_WINDOW, help="frames the model sees at once")
    p.add_argument("--overlap", type=int, default=DEFAULT_OVERLAP, help="frames each window shares with the one before")
    p.add_argument("--samples", type=int, default=1, help="generations per input (the paper's protocol: 5)")
    p.add_argument("--seed", type=int, default=0, help="seed; the same seed and --batch give the same output")
    p.add_argument("--batch", type=int, default=4, help="examples sampled together")
    p.add_argument("--keep-audio", action="store_true", help="v2a: add the input's own sound as a second, non-default track")
    p.add_argument("--out", default="samples", help="output directory")
    p.add_argument("--vocoder", default=None, help="a melgan.py checkpoint; without one, Griffin-Lim")
    p.add_argument("--vae-path", default=None, help="SD-VAE directory or hub id (default: the checkpoint's)")
    p.add_argument("--weights", choices=["ema", "model"], default="ema", help="EMA or raw weights")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--compile", action="store_true", help="torch.compile the network (CUDA graphs on a GPU): "
                   "faster steps after a compile of tens of seconds; for long or many inputs")
    return p.parse_args(argv)


def check_args(a) -> torch.device:
    """Every flag's range, the device and the output folder, before any work."""
    for name in ("window", "samples", "batch"):
        if getattr(a, name) < 1:
            raise media.BadInput(f"--{name} must be at least 1, got {getattr(a, name)}")
    if a.joint is not None and a.joint < 1:
        raise media.BadInput(f"--joint must be at least 1, got {a.joint}")
    if not 0 <= a.overlap < a.window:
        raise media.BadInput(f"--overlap must be in 0..--window − 1 ({a.window - 1}), got {a.overlap}")
    for name in ("prefix", "seconds"):
        v = getattr(a, name)
        if v is not None and not (math.isfinite(v) and v >= 0):
            raise media.BadInput(f"--{name} must be a finite number >= 0, got {v}")
    if a.seconds is not None and a.seconds <= 0:
        raise media.BadInput(f"--seconds must be positive, got {a.seconds}")
    if a.joint is not None and a.prefix:
        raise media.BadInput("--prefix needs an input to keep; --joint starts from noise (use --continue FILE)")
    if a.cont is not None and not a.prefix:
        raise media.BadInput("--continue needs --prefix SECONDS, the part of the input that is kept")
    diffusion.SamplerConfig(**{k: v for k, v in cli.dataclass_fields(a, diffusion.SamplerConfig).items() if v is not None})
    device = cli.device(a.device)
    out = Path(a.out)
    cli.check_writable_dir(out)
    return device


def run_settings(ckpt: Path, mode: str) -> dict:
    """The sampler settings (SamplerConfig fields) chosen for `mode` in the RUN_SETTINGS file beside `ckpt`:
    {"v2a": {"sampler": "ddim", "steps": 25, "guidance": 3.0}, ...}; {} without one."""
    f = Path(ckpt).parent / RUN_SETTINGS
    if not f.is_file():
        return {}
    try:
        chosen = json.loads(f.read_text()).get(mode, {})
        diffusion.SamplerConfig(**chosen)  # names and values checked before any work
    except (OSError, ValueError, TypeError, AttributeError) as e:
        raise checkpoint.CheckpointError(f"{f}: not sampler settings per mode ({type(e).__name__}: "
                                         f"{str(e).splitlines()[0] if str(e) else ''})") from None
    return chosen


def main(argv=None):
    cli.run(run, parse_args(argv))


def run(a):
    device = check_args(a)
    torch.manual_seed(a.seed)  # Griffin-Lim's initial phases
    mode = "joint" if a.joint is not None else "continue" if a.cont is not None else "v2a" if a.v2a else "a2v"
    path, how = checkpoint.resolve(a.ckpt)
    if how:
        print(how, file=sys.stderr)
    meta, _ = checkpoint.read(path)
    clip = pipeline.build(meta, a.vae_path, path=path).clip  # checks the config before any input is read
    chosen = run_settings(path, mode)
    if chosen:
        print(f"{mode} settings chosen for this run ({path.parent / RUN_SETTINGS}): "
              + ", ".join(f"{k} {v}" for k, v in chosen.items()), file=sys.stderr)
    files = [] if mode == "joint" else expand_inputs(a.cont if mode == "continue" else getattr(a, mode), mode)
    stems = output_stems(files, mode)
    # Read every input before the model: a single bad file fails in a second; among many it is skipped.
    inputs, failed = [], []
    for f, stem in zip(files, stems):
        try:
            inputs.append((f, stem, read_input(f, mode, clip, a.prefix, a.seconds, a.keep_audio)))
        except media.BadInput as e:
            if len(files) == 1:
                raise
            print(f"error: {e} (skipped)", file=sys.stderr)
            failed.append(f)
    if files and not inputs:  # nothing left to sample: no model to load
        sys.exit(f"0 of {len(files)} inputs usable; nothing written")
    vocoder = None
    if a.vocoder:
        import melgan
        vocoder = melgan.Vocoder(a.vocoder)
    pipe = pipeline.load(path, device, a.weights, a.vae_path, vocoder)
    if a.compile:
        pipe.net = pipeline.compile_net(pipe.net, device)
    cfg = pipe.sampler(**{**DEFAULT_SAMPLER, **chosen, **{k: v for k, v in cli.dataclass_fields(a, diffusion.SamplerConfig).items()
                                                if v is not None}})
    out, g = Path(a.out), torch.Generator(device).manual_seed(a.seed)
    out.mkdir(parents=True, exist_ok=True)
    options = dict(window=a.window, overlap=a.overlap, generator=g, progress=True)
    written = 0
    if mode == "joint":
        frames = math.ceil((a.seconds or a.window / clip.fps) * clip.fps - 1e-6)
        for lo in tqdm(range(0, a.joint, a.batch), desc="batches", disable=a.joint <= a.batch):
            n = min(a.batch, a.joint - lo)
            result = generate(pipe, cfg, frames=frames, batch=n, **options)
            for i in range(n):
                for line in save(out / f"joint_{lo + i:03d}", result, i, clip):
                    print(line)
                written += 1
    for f, stem, x in tqdm(inputs, desc="files", disable=len(inputs) < 2):
        try:
            for lo in range(0, a.samples, a.batch):
                n = min(a.batch, a.samples - lo)
                cond = {k: v[None].expand(n, *v.shape) for k, v in x["cond"].items()}
                known = {k: m[None].expand(n, -1) for k, m in x["known"].items()}
                if mode == "v2a" and not a.prefix:
                    cond.pop("audio", None)
                result = generate(pipe, cfg, cond=cond, known=known, **options)
                ref = x["cond"].get("audio") if mode == "v2a" else None
                for i in range(n):
                    suffix = f"_{lo + i}" if a.samples > 1 else ""
                    for line in save(out / f"{stem}{suffix}", result, i, clip, duration=x["duration"],
                                     soundtrack_of=f if mode == "v2a" else None, keep_audio=a.keep_audio, reference=ref):
                        print(line)
                    written += 1
        except media.BadInput as e:
            if len(inputs) == 1 and not failed:
                raise
            print(f"error: {e} (skipped)", file=sys.stderr)
            failed.append(f)
    if files:
        print(f"{len(files) - len(failed)} of {len(files)} inputs done, {written} outputs in {out}"
              + (f"; failed: {', '.join(map(str, failed))}" if failed else ""), file=sys.stderr)
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
