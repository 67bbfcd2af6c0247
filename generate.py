"""Generation of any length (CMMD §2.1 and §3; the continuation tasks of MM-LDM), and a result written as a
person looks at it: an mp4 with sound, a wav and a mel figure.

A signal longer than the model's window is generated in windows that overlap; each window after the first
treats the overlap already generated as known, through the same replacement and guidance as the condition
(temporal inpainting, `sampling.Known`), and the windows join at the overlap. A window wholly known (inside a
kept prefix) is skipped. Generated audio is brought to a peak of at most melspec.PEAK_DBFS, never clipped.
"""
import contextlib
import time
from pathlib import Path

import torch
from tqdm import tqdm

import data
import figures
import media
import melspec
import mmldm
import sampling
from modalities import MODALITIES, TIME_AXIS, with_time

DEFAULT_WINDOW = 36  # frames per window: twice the training length, as the paper samples (CMMD §3)
DEFAULT_OVERLAP = 12  # frames each window shares with the one before (1.2 s)


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


def block_frames(clip: data.ClipConfig, codec) -> int:
    """The fewest frames whose audio is a whole number of the audio codec's steps (4 for the mel's hop of
    256 at 1 600 samples per frame): windows start on multiples of it, so both streams cut at one instant."""
    spf = clip.samples_per_frame
    return next(f for f in range(1, codec.samples_per_step + 1) if (f * spf) % codec.samples_per_step == 0)


def windows(frames: int, window: int, overlap: int, block: int) -> list[tuple[int, int]]:
    """Frame ranges [f0, f1) covering 0…frames: starts on multiples of `block`, each window `window` long and
    overlapping the one before by at least `overlap`; the last one ends at `frames` (up to block − 1 longer).
    A window shorter than a block could leave frames uncovered, so it is refused."""
    if window < block:
        raise ValueError(f"--window {window} frames is shorter than the audio codec's block of {block} frames "
                         f"(the least both streams can be cut at)")
    if frames <= window:
        return [(0, frames)]
    hop = max(block, (window - overlap) // block * block)
    last = (frames - window) // block * block
    return [(s, s + window) for s in range(0, last, hop)] + [(last, frames)]


def _model_space(pipe, cond: dict, known: dict, batch: int, frames: int, watch) -> tuple[dict, dict]:
    """The whole signal in model space, zeros where unknown, and {modality: (B, F) or (B, T) bool} of what is
    known in it."""
    codecs, device, spf = pipe.codecs, pipe.device, pipe.clip.samples_per_frame
    full = pipe.shapes(batch, frames)
    with torch.no_grad(), watch("encode"):
        # clone: the pixel codec's encode is the identity, and x is written into below
        x = {k: codecs[k].encode(cond[k].to(device).float()).clone() if k in cond
             else torch.zeros(full[k], device=device) for k in MODALITIES}
    have = {}
    for k in MODALITIES:
        length = full[k][TIME_AXIS[k]]
        have[k] = torch.zeros(batch, length, dtype=torch.bool, device=device)
        if k in cond:
            frame_known = known[k].to(device)  # (B, F)
            have[k] = (frame_known.clone() if k == "video"
                       else codecs[k].known_steps(frame_known.repeat_interleave(spf, 1)))
    return x, have


def _unknown_windows(pipe, spans: list, have: dict, frames: int, progress: bool):
    """For each window [f0, f1) of `spans` not wholly known, in order: ({modality: (start, length) along its
    time axis}, {modality: (B, length) bool, a copy of what is known in it}); `have` may change between them."""
    audio, spf = pipe.codecs["audio"], pipe.clip.samples_per_frame
    T = have["audio"].shape[1]
    for f0, f1 in tqdm(spans, desc="windows", disable=not progress or len(spans) == 1, leave=False):
        t0, t1 = audio.steps(f0 * spf), (T if f1 == frames else audio.steps(f1 * spf))
        span = {"video": (f0, f1 - f0), "audio": (t0, t1 - t0)}
        h = {k: have[k].narrow(1, *span[k]).clone() for k in MODALITIES}  # (B, window length)
        if not all(m.all() for m in h.values()):  # a window wholly known has nothing to generate
            yield span, h


def _sample_windows(pipe, cfg, x: dict, have: dict, frames: int, window: int, overlap: int, generator, progress,
                    watch, text=None):
    """Fill the unknown parts of x window by window, in place (the module docstring)."""
    spans = windows(frames, window, overlap, block_frames(pipe.clip, pipe.codecs["audio"]))
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if pipe.device.type == "cuda" else contextlib.nullcontext()
    for span, h in _unknown_windows(pipe, spans, have, frames, progress):
        w_cond = {k: x[k].narrow(TIME_AXIS[k], *span[k]).clone() for k in MODALITIES if h[k].any()}
        w_mask = {k: h[k] for k in w_cond if not h[k].all()}
        shapes = {k: with_time(tuple(x[k].shape), k, span[k][1]) for k in MODALITIES}
        with autocast, watch(f"sample ({cfg.sampler}, {cfg.steps} steps)"):
            out = sampling.sample(pipe.diffusion, pipe.net, shapes, cfg, cond=w_cond, mask=w_mask, generator=generator,
                                  progress=progress and len(spans) == 1, text=text)
        for k in MODALITIES:
            x[k].narrow(TIME_AXIS[k], *span[k]).copy_(out[k].float())
            have[k].narrow(1, *span[k]).fill_(True)
    return spans


def _sample_latent_windows(pipe, cfg, x: dict, have: dict, frames: int, generator, progress, watch):
    """MM-LDM's two stages (Sun et al. 2024, Fig. 2), window by window, filling x's unknown parts in place.
    [choice] The windows are the training clip's length, overlapping by at least one block of frames (6 frames
    at 18): a window's video latent stands for its whole clip, so --window and --overlap do not apply. In each
    window the generator samples the latents it is not given, given those it is (its trained conditions): a
    modality known whole is encoded, and so is video known in part (a continuation's prefix, the overlap with
    the window before), from its known frames alone, so that the scene goes on ([choice]: the encoder then
    sees fewer key frames than in training). The autoencoder's decoder then samples the window's unknown frames
    and mel steps from both latents, keeping by replacement (Eq. 5) what is known in the window; the mel, one
    image, is inpainted across the seam."""
    ae, block = pipe.autoencoder, block_frames(pipe.clip, pipe.codecs["audio"])
    spans = windows(frames, max(pipe.clip.frames, block), block, block)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if pipe.device.type == "cuda" else contextlib.nullcontext()
    for span, h in _unknown_windows(pipe, spans, have, frames, progress):
        w = {k: x[k].narrow(TIME_AXIS[k], *span[k]).clone() for k in MODALITIES}
        whole = [k for k in MODALITIES if h[k].all()]
        seen = {k: w[k] for k in whole}
        if "video" not in whole and h["video"].all(0).any():  # video known in part: its known frames' latent
            seen["video"] = w["video"][:, h["video"].all(0)]  # (B, F_known, C, H, W)
        lat = mmldm.latent_shapes(ae.cfg, {k: tuple(v.shape) for k, v in w.items()})  # {modality: (B, Z, h, w)}
        with torch.no_grad(), watch("encode latents"):
            z = ae.encode(seen) if seen else {}
        if len(z) < len(MODALITIES):  # a latent to sample
            with autocast, watch(f"sample latents ({cfg.sampler}, {cfg.steps} steps)"):
                out = sampling.sample(pipe.diffusion, pipe.net, mmldm.modality_shapes(lat), cfg,
                                      cond=mmldm.as_modalities(z), generator=generator,
                                      progress=progress and len(spans) == 1, **({} if z else {"guidance": 0.0}))
            z = {**mmldm.from_modalities({k: v.float() for k, v in out.items()}, lat["audio"][2]), **z}
        todo = [k for k in MODALITIES if k not in whole]
        part = {k: w[k] for k in todo if h[k].any()}
        with autocast, watch(f"decode latents ({cfg.sampler}, {cfg.steps} steps)"):
            decoded = ae.decode(pipe.ae_diffusion, z, {k: tuple(w[k].shape) for k in todo}, cfg, generator,
                                progress=progress and len(spans) == 1, cond=part, mask={k: h[k] for k in part},
                                guidance=0.0)
        for k in todo:
            x[k].narrow(TIME_AXIS[k], *span[k]).copy_(decoded[k].float())
            have[k].narrow(1, *span[k]).fill_(True)
    return spans


def _decode(pipe, x: dict, cond: dict, known: dict, batch: int, frames: int, watch) -> dict:
    """Model space -> signals, the known frames exactly as given, generated audio peak-limited."""
    device, spf, L = pipe.device, pipe.clip.samples_per_frame, frames * pipe.clip.samples_per_frame
    result = {}
    for k in MODALITIES:
        if k in cond and k not in known:  # known whole: the given signal itself
            result[k] = cond[k].to(device).float()
            continue
        with torch.no_grad(), watch(f"decode {k}"):
            decoded = pipe.codecs[k].decode(x[k]).float()
        if k == "audio":
            decoded = torch.nn.functional.pad(decoded, (0, L - decoded.shape[1]))[:, :L]  # (B, L)
            decoded = melspec.limit_peak(decoded)
        if k in cond:  # the known frames exactly as given
            m = known[k].to(device)
            m = m.repeat_interleave(spf, 1) if k == "audio" else m.view(batch, frames, 1, 1, 1)
            decoded = torch.where(m, cond[k].to(device).float(), decoded)
        bad = int((~torch.isfinite(decoded)).sum())
        if bad:
            raise media.BadInput(f"{pipe.path}: generated {k} has {bad} non-finite values (a diverged checkpoint?)")
        result[k] = decoded
    return result


def generate(pipe, cfg: sampling.SamplerConfig, *, cond: dict | None = None, known: dict | None = None,
             frames: int | None = None, batch: int = 1, window: int = DEFAULT_WINDOW, overlap: int = DEFAULT_OVERLAP,
             generator=None, progress: bool = False, stopwatch: Stopwatch | None = None,
             text: list[str] | None = None) -> dict:
    """Generate and decode with a pipeline.Pipeline. cond: signals {"video": (B, F, 3, H, W) in [-1, 1],
    "audio": (B, L)} with L = F · samples per frame; known: {modality: (B, F) bool}, the frames of cond[modality]
    that are known (absent: known whole). cond=None is joint generation of `frames` frames. {"video": v} is
    video→audio; {"video": v, "audio": a} with known {"audio": the first P frames} is audio continuation.
    text: B captions for a text-conditioned model, every window the same (cfg.cfg: its guidance scale).
    Returns {"video": (B, F, 3, H, W), "audio": (B, L), "mel": (B, M, T), "windows": [(f0, f1), ...]}."""
    watch, spf = stopwatch or Stopwatch(), pipe.clip.samples_per_frame
    cond, known = dict(cond or {}), dict(known or {})
    if cond:
        batch = next(iter(cond.values())).shape[0]
        frames = cond["video"].shape[1] if "video" in cond else cond["audio"].shape[1] // spf
    assert "audio" not in cond or cond["audio"].shape[1] == frames * spf, f"audio must have {frames * spf} samples"
    frame_known = {k: known.get(k, torch.ones(batch, frames, dtype=torch.bool)) for k in cond}
    x, have = _model_space(pipe, cond, frame_known, batch, frames, watch)
    if getattr(pipe, "autoencoder", None) is not None:  # MM-LDM: latents, then its decoder
        if text is not None:
            raise ValueError(f"{pipe.path}: MM-LDM's generator here takes no caption (text conditions --model dit)")
        spans = _sample_latent_windows(pipe, cfg, x, have, frames, generator, progress, watch)
    else:
        spans = _sample_windows(pipe, cfg, x, have, frames, window, overlap, generator, progress, watch, text)
    result = _decode(pipe, x, cond, {k: frame_known[k] for k in known if k in cond}, batch, frames, watch)
    result["mel"] = melspec.wav_to_mel(result["audio"])  # (B, M, T): what the figures show
    result["windows"] = spans
    return result


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
        mels["truth" if events is not None else "input"] = \
            melspec.wav_to_mel(reference[None, :n].to(result["mel"].device))[0]
    figures.mel_figure(f"{stem}_mel.png", mels, events=events, title=title or stem.name)
    return [f"{stem}.mp4 ({how})", f"{stem}_mel.png"]
