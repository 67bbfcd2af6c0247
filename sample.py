"""Sampling from a checkpoint: video→audio, audio→video, continuation and joint generation, of any length
(CMMD §2.1, Eq. 3 and 5; the continuation tasks of MM-LDM), by DDIM or DPM-Solver++ (2M or 2S).

    python sample.py --v2a clip.mp4                     # your video back, with a generated soundtrack
    python sample.py --a2v song.wav                     # a video for the audio, as long as the audio
    python sample.py --v2a clip.mp4 --prefix 2          # audio continuation: keep the first 2 s of its sound
    python sample.py --a2v clip.mp4 --prefix 2          # video continuation: keep the first 2 s of its frames
    python sample.py --continue clip.mp4 --prefix 2 --seconds 10   # sounding-video continuation
    python sample.py --joint 4 --seconds 12             # long joint generation
    python sample.py --text "a red ball bouncing" --seconds 4             # a sounding video from a caption
    python sample.py --text "a red ball bouncing" --seconds 4 --two-step  # its video first, then its sound
    python sample.py --v2a clip.mp4 --text "a dog barks"                  # a soundtrack that follows the caption

Every input is as long as it is: the model sees it as it was trained (10 fps, centre crop, its frame size)
in windows of --window frames that overlap by --overlap; each window after the first treats the overlap
already generated as known, through the same replacement and guidance as the condition (temporal
inpainting, `sampling.Known`; generate.py), and the windows join at the overlap. With no --ckpt, the newest checkpoint
under runs/ (e.g. the demo's) is used. A folder among the inputs means every media file in it.
"""
import argparse
import dataclasses
import math
import re
import sys
from pathlib import Path

import torch
from tqdm import tqdm

import checkpoint
import cli
import data
import generate
import media
import pipeline
import sampling
from modalities import to_unit

MODES = ("v2a", "a2v", "continue", "joint")
AUDIO_EXTENSIONS = (".wav", ".flac", ".mp3", ".ogg", ".m4a", ".aac", ".opus")


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
            why = ("its first --prefix seconds are kept" if (mode, kind) in (("v2a", "audio"), ("a2v", "video"))
                   else f"--{mode} needs one")
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
        cond["video"] = to_unit(cond["video"])  # (F, 3, H, W) in [-1, 1]
    keep = round(prefix * clip.fps)
    generated = {"v2a": ["audio"], "a2v": ["video"], "continue": ["video", "audio"]}[mode]
    known = {k: torch.arange(frames) < keep for k in generated if k in cond}  # (F,): the prefix
    return {"cond": cond, "known": known, "frames": frames, "duration": duration}


# ---- the command ---------------------------------------------------------------------------------------

def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--v2a", nargs="+", metavar="VIDEO", help="generate a soundtrack for these videos (or folders)")
    mode.add_argument("--a2v", nargs="+", metavar="AUDIO",
                      help="generate video for these audio files (wav, flac, mp3, or a video's sound)")
    mode.add_argument("--continue", dest="cont", nargs="+", metavar="VIDEO",
                      help="continue both streams after --prefix")
    mode.add_argument("--joint", type=int, metavar="N", help="generate N sounding videos from noise")
    p.add_argument("--text", default=None, metavar="PROMPT", help="a caption for a text-conditioned checkpoint; "
                   "alone, joint generation from it (--seconds long, --samples of them); with --cfg S, classifier-"
                   "free guidance")
    p.add_argument("--two-step", action="store_true", help="--text alone: the video from the caption first, then "
                   "its sound from that video and the caption (video→audio), rather than both jointly")
    p.add_argument("--ckpt", default=None, help="a checkpoint file, a Hugging Face Hub repo id (org/name), or none: "
                                                "the newest under runs/")
    cli.add_dataclass_args(p, sampling.SamplerConfig, unset=True)
    p.add_argument("--prefix", type=float, default=0.0, help="seconds at the start of each input that are kept "
                   "(v2a: its audio, a2v: its video, continue: both) and continued")
    p.add_argument("--seconds", type=float, default=None, help="length of --joint and --continue outputs "
                   "(default: --window frames for joint, the input's length for continue)")
    p.add_argument("--window", type=int, default=generate.DEFAULT_WINDOW, help="frames the model sees at once")
    p.add_argument("--overlap", type=int, default=generate.DEFAULT_OVERLAP,
                   help="frames each window shares with the one before")
    p.add_argument("--samples", type=int, default=1, help="generations per input (the paper's protocol: 5)")
    p.add_argument("--seed", type=int, default=0, help="seed; the same seed and --batch give the same output")
    p.add_argument("--batch", type=int, default=4, help="examples sampled together")
    p.add_argument("--keep-audio", action="store_true",
                   help="v2a: add the input's own sound as a second, non-default track")
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
    if a.text is None and a.two_step:
        raise media.BadInput("--two-step makes a sounding video from --text PROMPT in two steps; give --text")
    if a.text is not None and a.prefix and not (a.v2a or a.a2v or a.cont):
        raise media.BadInput("--prefix needs an input to keep; --text alone starts from noise")
    if a.cfg is not None and a.cfg != 1 and a.text is None:
        raise media.BadInput(f"--cfg {a.cfg:g} is classifier-free guidance of a caption; give --text")
    if a.text is not None and not a.text.strip():
        raise media.BadInput("--text must not be empty")
    if a.text is None and a.v2a is None and a.a2v is None and a.cont is None and a.joint is None:
        raise media.BadInput("one of --v2a, --a2v, --continue, --joint or --text is required")
    if a.two_step and (a.v2a or a.a2v or a.cont or a.joint is not None):
        raise media.BadInput("--two-step is for --text alone (it makes the video, then its sound)")
    if a.cont is not None and not a.prefix:
        raise media.BadInput("--continue needs --prefix SECONDS, the part of the input that is kept")
    sampling.SamplerConfig(**{k: v for k, v in cli.dataclass_fields(a, sampling.SamplerConfig).items()
                              if v is not None})
    device = cli.device(a.device)
    out = Path(a.out)
    cli.check_writable_dir(out)
    return device


def main(argv=None):
    cli.run(run, parse_args(argv))


def load_inputs(files: list, stems: list, mode: str, clip, a) -> tuple[list, list]:
    """Every input read and checked before the model loads: a single bad file fails in a second; among many
    it is skipped. Returns ([(file, stem, condition)], [failed files])."""
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
    return inputs, failed


def prompt_slug(text: str, limit: int = 40) -> str:
    """A file-name-safe form of a caption (lower case, words joined by '-', at most `limit` characters), so that
    two prompts written to one --out folder do not overwrite each other."""
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:limit].rstrip("-")
    return slug or "prompt"


def sample_joint(pipe, cfg, a, out: Path, options: dict) -> int:
    """--joint N (or --text: --samples of them): sounding videos from noise, --batch at a time, from the caption
    when there is one; --two-step: the video from the caption, then its sound from that video and the caption.
    Returns the outputs written."""
    clip, count = pipe.clip, a.joint if a.joint is not None else a.samples
    frames = math.ceil((a.seconds or a.window / clip.fps) * clip.fps - 1e-6)
    name = "joint" if a.text is None else "text" + ("_two_step" if a.two_step else "") + f"_{prompt_slug(a.text)}"
    for lo in tqdm(range(0, count, a.batch), desc="batches", disable=count <= a.batch):
        n = min(a.batch, count - lo)
        text = None if a.text is None else [a.text] * n
        # from noise: no condition for reconstruction guidance (λ is the second step's, --guidance or the v2a
        # setting of the run's sampling.json)
        first = dataclasses.replace(cfg, guidance=0.0) if a.text is not None else cfg
        result = generate.generate(pipe, first, frames=frames, batch=n, text=text, **options)
        if a.two_step:  # seed 002's second step: the sound of the generated video, from it and the caption
            video = result["video"].clamp(-1, 1)
            result = generate.generate(pipe, pipe.sampler("v2a", **a.flags), cond={"video": video}, text=text,
                                       **options)
        for i in range(n):
            for line in generate.save(out / f"{name}_{lo + i:03d}", result, i, clip, title=a.text or ""):
                print(line)
    return count


def sample_file(pipe, cfg, a, mode: str, f: Path, stem: str, x: dict, out: Path, options: dict) -> int:
    """--samples generations of one input, --batch at a time. Returns the outputs written."""
    for lo in range(0, a.samples, a.batch):
        n = min(a.batch, a.samples - lo)
        cond = {k: v[None].expand(n, *v.shape) for k, v in x["cond"].items()}
        known = {k: m[None].expand(n, -1) for k, m in x["known"].items()}
        if mode == "v2a" and not a.prefix:
            cond.pop("audio", None)  # the input's own sound is only carried into the output
        text = None if a.text is None else [a.text] * n
        result = generate.generate(pipe, cfg, cond=cond, known=known, text=text, **options)
        ref = x["cond"].get("audio") if mode == "v2a" else None
        for i in range(n):
            suffix = f"_{lo + i}" if a.samples > 1 else ""
            for line in generate.save(out / f"{stem}{suffix}", result, i, pipe.clip, duration=x["duration"],
                                      soundtrack_of=f if mode == "v2a" else None, keep_audio=a.keep_audio,
                                      reference=ref):
                print(line)
    return a.samples


def prepare(a) -> tuple:
    """Everything checked before the model loads: flags, checkpoint, sampler settings, window, inputs.
    Returns (device, mode, checkpoint path, inputs, failed files, file count)."""
    device = check_args(a)
    mode = ("joint" if a.joint is not None or not (a.cont or a.v2a or a.a2v) else "continue" if a.cont is not None
            else "v2a" if a.v2a else "a2v")
    path, how = checkpoint.resolve(a.ckpt)
    if how:
        print(how, file=sys.stderr)
    meta, _ = checkpoint.read(path)
    if meta.get("model") == "mmldm-ae":
        raise media.BadInput(f"{path}: an MM-LDM autoencoder alone; sample its generator (the run folder above it, "
                             "ckpt-*.safetensors)")
    untrained = pipeline.build(meta, a.vae_path, path=path)  # checks the config before any input is read
    chosen = pipeline.run_settings(path, mode)
    if chosen:
        print(f"{mode} settings chosen for this run ({path.parent / pipeline.RUN_SETTINGS}): "
              + ", ".join(f"{k} {v}" for k, v in chosen.items()), file=sys.stderr)
    try:
        generate.windows(1, a.window, a.overlap, generate.block_frames(untrained.clip, untrained.codecs["audio"]))
    except ValueError as e:
        raise media.BadInput(f"{path}: {e}") from None
    files = [] if mode == "joint" else expand_inputs(a.cont if mode == "continue" else getattr(a, mode), mode)
    inputs, failed = load_inputs(files, output_stems(files, mode), mode, untrained.clip, a)
    return device, mode, path, inputs, failed, len(files)


def run(a):
    device, mode, path, inputs, failed, n_files = prepare(a)
    torch.manual_seed(a.seed)  # Griffin-Lim's initial phases
    vocoder = None
    if a.vocoder:
        import melgan
        vocoder = melgan.Vocoder(a.vocoder)
    pipe = pipeline.load(path, device, a.weights, a.vae_path, vocoder)
    if a.text is not None and getattr(pipe.net.cfg, "text", None) is None:
        raise media.BadInput(f"{path}: this checkpoint takes no caption (train one with train.py --text-encoder)")
    if a.compile:
        pipe.net = pipeline.compile_net(pipe.net, device)
    a.flags = cli.dataclass_fields(a, sampling.SamplerConfig)
    cfg = pipe.sampler(mode, **a.flags)
    out, g = Path(a.out), torch.Generator(device).manual_seed(a.seed)
    out.mkdir(parents=True, exist_ok=True)
    options = dict(window=a.window, overlap=a.overlap, generator=g, progress=True)
    written = sample_joint(pipe, cfg, a, out, options) if mode == "joint" else 0
    for f, stem, x in tqdm(inputs, desc="files", disable=len(inputs) < 2):
        try:
            written += sample_file(pipe, cfg, a, mode, f, stem, x, out, options)
        except media.BadInput as e:
            if len(inputs) == 1 and not failed:
                raise
            print(f"error: {e} (skipped)", file=sys.stderr)
            failed.append(f)
    if n_files:
        print(f"{n_files - len(failed)} of {n_files} inputs done, {written} outputs in {out}"
              + (f"; failed: {', '.join(map(str, failed))}" if failed else ""), file=sys.stderr)
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
