"""Data: video/audio files in and out, the one log-mel front end, and the datasets (CMMD §3, App. B).

Everything the model eats or emits passes through here:
- `read_av` decodes any container PyAV opens into 10 fps centre-cropped square frames and 16 kHz mono
  audio; `write_mp4` writes H.264 + AAC back.
- `wav_to_mel` / `mel_to_wav` are the single mel front end (SPEC §1) shared by the diffusion model, the
  vocoder and the metrics.
- `SyntheticDataset`, folders of videos and AIST++ become windows of `ClipConfig.frames` frames plus a
  margin of `ClipConfig.margin` frames on each side, so that temporal-shift negatives (SPEC §4) are real
  neighbouring content. `python data.py prepare` decodes once into safetensors shards.
"""
import argparse
import hashlib
import json
import math
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

# ----------------------------------------------------------------------------------------------------
# Constants (SPEC §1; paper §3 "Feature Extraction")
SAMPLE_RATE = 16000  # Hz, CMMD §3
FPS = 10  # video frames per second, CMMD §3
N_FFT = 512  # 32 ms Hann window, CMMD §3
HOP = 256  # 16 ms hop, 50 % overlap, CMMD §3
N_MELS = 80  # CMMD §3, Table 5
MEL_FMIN, MEL_FMAX = 0.0, 8000.0  # full band at 16 kHz, as MelGAN's Audio2Mel (fmin 0, fmax = sr / 2)
LOG_MEL_FLOOR = 1e-5  # MelGAN's clamp before log10
# [choice] fixed affine map of log10-mel to about [-1, 1]: the floor log10(1e-5) = -5 maps to -1 and
# log10 = 1 (about 6 dB above a full-scale sine's mel peak) maps to +1. Stored with every checkpoint.
LOG_MEL_MIN, LOG_MEL_MAX = -5.0, 1.0
VIDEO_EXTENSIONS = (".mp4", ".mov", ".mkv", ".webm", ".avi")


@dataclass
class ClipConfig:
    """One training example: `frames` video frames at `fps` and the matching audio, plus a margin of
    `margin` frames on each side (SPEC §4 [choice]: shift negatives come from real neighbours)."""
    frames: int = 18  # 1.8 s, CMMD §3
    size: int = 64  # square side in pixels (128 in the paper, 64 for the MM-Diffusion comparison)
    fps: int = FPS
    sample_rate: int = SAMPLE_RATE
    margin: int = 4  # video frames each side: room for the 2-4 frame shifts of SPEC §4

    def __post_init__(self):  # the flags of the same names, checked before any work
        import cli
        for name, low in (("frames", 1), ("size", 1), ("fps", 1), ("sample_rate", 1), ("margin", 0)):
            cli.check_range(name, getattr(self, name), low)

    @property
    def samples(self) -> int:  # L of the positive clip
        return self.frames * self.sample_rate // self.fps

    @property
    def mel_steps(self) -> int:  # T of the positive clip: 28 800 // 256 = 112
        return self.samples // HOP

    @property
    def margin_samples(self) -> int:
        return self.margin * self.sample_rate // self.fps

    @property
    def margin_mel(self) -> int:  # 6 400 // 256 = 25 mel steps
        return self.margin_samples // HOP

    @property
    def window_frames(self) -> int:
        return self.frames + 2 * self.margin

    @property
    def window_samples(self) -> int:
        return self.samples + 2 * self.margin_samples

    @property
    def duration(self) -> float:
        return self.frames / self.fps


# ----------------------------------------------------------------------------------------------------
# The mel front end (SPEC §1)
_MEL_BASIS: dict = {}


def mel_basis(device=None, dtype=torch.float32) -> torch.Tensor:
    """librosa's Slaney mel filterbank, (M, N_FFT // 2 + 1), cached per device and dtype."""
    key = (str(device), dtype)
    if key not in _MEL_BASIS:
        import librosa
        fb = librosa.filters.mel(sr=SAMPLE_RATE, n_fft=N_FFT, n_mels=N_MELS, fmin=MEL_FMIN, fmax=MEL_FMAX)
        _MEL_BASIS[key] = torch.from_numpy(fb).to(device=device, dtype=dtype)
    return _MEL_BASIS[key]


def _hann(device, dtype):
    return torch.hann_window(N_FFT, periodic=True, device=device, dtype=dtype)  # = scipy 'hann', librosa's


def mel_magnitude(wav: torch.Tensor) -> torch.Tensor:
    """Magnitude mel spectrogram (B, L) -> (B, M, L // HOP), MelGAN's front end: reflect-pad
    (N_FFT - HOP) / 2 on both sides, then an STFT with center=False."""
    assert wav.ndim == 2, f"waveform must be (B, L), got {tuple(wav.shape)}"
    pad = (N_FFT - HOP) // 2
    x = F.pad(wav.float().unsqueeze(1), (pad, pad), mode="reflect").squeeze(1)  # (B, L + 256)
    spec = torch.stft(x, N_FFT, HOP, N_FFT, _hann(x.device, x.dtype), center=False, return_complex=True)
    return mel_basis(x.device) @ spec.abs()  # (B, M, T)


def normalize_log_mel(log_mel: torch.Tensor) -> torch.Tensor:
    return 2 * (log_mel - LOG_MEL_MIN) / (LOG_MEL_MAX - LOG_MEL_MIN) - 1


def denormalize_log_mel(mel: torch.Tensor) -> torch.Tensor:
    return (mel + 1) / 2 * (LOG_MEL_MAX - LOG_MEL_MIN) + LOG_MEL_MIN


def wav_to_mel(wav: torch.Tensor) -> torch.Tensor:
    """Normalised log-mel (B, L) -> (B, M, T), T = L // 256, values in about [-1, 1] (SPEC §1)."""
    return normalize_log_mel(torch.log10(mel_magnitude(wav).clamp(min=LOG_MEL_FLOOR)))


def mel_to_wav(mel: torch.Tensor, n_iter: int = 32, generator: torch.Generator | None = None) -> torch.Tensor:
    """Griffin-Lim inverse of `wav_to_mel` (B, M, T) -> (B, 256·T): mel -> linear magnitude by
    non-negative least squares through the filterbank's pseudo-inverse, then `n_iter` Griffin-Lim
    iterations (Griffin & Lim 1984). Frame j of the front end is centred on sample 256·j + 128, so the
    iterations run on the signal advanced by 128 samples with torch's centred STFT."""
    assert mel.ndim == 3 and mel.shape[1] == N_MELS, f"mel must be (B, {N_MELS}, T), got {tuple(mel.shape)}"
    B, _, T = mel.shape
    mag_mel = 10 ** denormalize_log_mel(mel.float())  # (B, M, T)
    fb = mel_basis(mel.device)
    mag = (torch.linalg.pinv(fb) @ mag_mel).clamp(min=0)  # (B, N_FFT // 2 + 1, T)
    mag = torch.cat([mag, mag[..., -1:]], dim=-1)  # (B, N_FFT // 2 + 1, T + 1): centred STFT of 256·T samples
    L = HOP * T
    window = _hann(mel.device, torch.float32)
    phase = torch.rand(mag.shape, generator=generator, device="cpu").to(mel.device) * 2 * math.pi
    spec = mag * torch.exp(1j * phase)
    for _ in range(n_iter):
        z = torch.istft(spec, N_FFT, HOP, N_FFT, window, center=True, length=L)  # (B, L)
        rebuilt = torch.stft(z, N_FFT, HOP, N_FFT, window, center=True, return_complex=True)
        spec = mag * torch.exp(1j * rebuilt.angle())
    z = torch.istft(spec, N_FFT, HOP, N_FFT, window, center=True, length=L)  # (B, L), z[t] = wav[t + 128]
    shift = (N_FFT - HOP) // 2
    return F.pad(z, (shift, -shift)).clamp(-1, 1)  # (B, L)


# ----------------------------------------------------------------------------------------------------
# Reading and writing media
class BadInput(ValueError):
    """A file that cannot be used; the message is one line naming the file and the reason."""


class AV(NamedTuple):
    video: torch.Tensor | None  # uint8 (F, 3, size, size)
    audio: torch.Tensor | None  # float32 (L,) at the requested sample rate, mono
    duration: float  # seconds of the source
    ends: dict = {}  # {"video" | "audio": s}: where each stream read decodes to (its last frame's end)


def probe(path, complete: bool = False) -> dict:
    """Streams and duration of a media file, without decoding: {"video": bool, "audio": bool, "duration": s}.
    complete: also read every packet (no decoding, so cheap) and raise BadInput where the packets end more than
    TRUNCATION_SLACK before the duration the header gives: a file cut short with its index at the front."""
    import av
    path = Path(path)
    if path.is_dir():
        raise BadInput(f"{path}: a directory, not a media file")
    if not path.is_file():
        raise BadInput(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise BadInput(f"{path}: empty file (0 bytes)")
    if not os.access(path, os.R_OK):
        raise BadInput(f"{path}: not readable (permission denied)")
    try:
        with av.open(str(path)) as c:
            has = {k: len(getattr(c.streams, k)) > 0 for k in ("video", "audio")}
            durations = [float(s.duration * s.time_base) for s in c.streams if s.duration is not None]
            if c.duration is not None:
                durations.append(c.duration / 1e6)
            info = {**has, "duration": max(durations, default=0.0)}
            if complete:
                _check_packets(c, path)
            return info
    except av.FFmpegError as e:
        raise BadInput(f"{path}: not a readable media file ({type(e).__name__})") from None


def _check_packets(container, path):
    """Truncation by the packets alone: each stream's last packet against its header's end; where no stream
    has one (mkv, webm), the last packet of any stream against the container's duration."""
    ends: dict = {}  # stream index -> where its last packet ends, s
    for p in container.demux():
        if p.pts is not None:
            i = p.stream.index
            ends[i] = max(ends.get(i, 0.0), float((p.pts + (p.duration or 0)) * p.time_base))
    for stream in container.streams:
        end, got = _stream_end(stream), ends.get(stream.index, 0.0)
        if stream.type in ("video", "audio") and end is not None and got + TRUNCATION_SLACK < end:
            raise BadInput(f"{path}: truncated ({stream.type} data ends at {got:.2f} s of the {end:.2f} s its header "
                           f"gives)")
    if container.duration is not None and all(_stream_end(s) is None for s in container.streams):
        total, got = (container.duration + (container.start_time or 0)) / 1e6, max(ends.values(), default=0.0)
        if got + TRUNCATION_SLACK < total:
            raise BadInput(f"{path}: truncated (data ends at {got:.2f} s of the {total:.2f} s its header gives)")


def _crop_resize(rgb: np.ndarray, size: int) -> torch.Tensor:
    """Centre square crop and antialiased bilinear resize: (h, w, 3) uint8 -> (3, size, size) uint8."""
    h, w, _ = rgb.shape
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    x = torch.from_numpy(np.ascontiguousarray(rgb[top:top + s, left:left + s])).permute(2, 0, 1)  # (3, s, s)
    if s != size:
        x = F.interpolate(x[None].float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False)[0]
        x = x.round().clamp(0, 255).to(torch.uint8)  # (3, size, size)
    return x


TRUNCATION_SLACK = 0.5  # s: a stream that decodes to this much less than its header's duration is truncated
ITU_SURROUND = 0.7071  # -3 dB: centre and surround channels in the ITU-R BS.775 downmix; LFE is left out


def _stream_end(stream) -> float | None:
    """Where a stream's header says it ends, in seconds (None where the container does not say)."""
    if stream.duration is None:
        return None
    return float((stream.duration + (stream.start_time or 0)) * stream.time_base)


def _read_video(container, path, start, frames, size, fps, duration, check) -> tuple[torch.Tensor, float]:
    """Frames at start + k / fps, each the decoded frame with the nearest timestamp; and where the decoded
    frames end (the last one's time plus its duration)."""
    n = frames if frames is not None else max(int(math.floor((duration - start) * fps + 1e-6)), 0)
    targets = start + np.arange(n) / fps
    chosen: list = [None] * n
    best = np.full(n, np.inf)
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    last_time, last_end, stopped_early = None, 0.0, False
    rate = stream.average_rate or fps  # a frame's duration where the decoder gives none
    for frame in container.decode(stream):
        if frame.time is None:
            continue
        last_time = frame.time
        last_end = frame.time + (float(frame.duration * frame.time_base) if frame.duration else float(1 / rate))
        d = np.abs(targets - frame.time)
        better = d < best
        if better.any():
            rgb = _crop_resize(frame.to_ndarray(format="rgb24"), size)
            for k in np.flatnonzero(better):
                chosen[k], best[k] = rgb, d[k]
        if n and frame.time > targets[-1] + 1.0 / fps:
            stopped_early = True
            break
    have = [c for c in chosen if c is not None]
    if not have:
        raise BadInput(f"{path}: no decodable video frames")
    end = _stream_end(stream)
    if check and not stopped_early and end is not None and last_time + TRUNCATION_SLACK < end:
        raise BadInput(f"{path}: truncated (video decodes to {last_time:.2f} s of the {end:.2f} s its header gives)")
    # Past the last decoded frame, repeat it: pad to exactly `frames`.
    last = have[-1]
    out = [c if c is not None else last for c in chosen]
    video = torch.stack(out) if out else torch.zeros(0, 3, size, size, dtype=torch.uint8)  # (F, 3, size, size)
    return video, last_end


def downmix(a: np.ndarray, channels: list[str]) -> np.ndarray:
    """(channels, n) float -> (n,) mono: for 5.1 and 7.1 the ITU-R BS.775 stereo downmix (L + 0.7071·C +
    0.7071·Ls, likewise R; LFE left out), then the mean of its two channels; otherwise the channels' mean."""
    names = list(channels)
    if "FL" in names and "FR" in names and "FC" in names and len(names) >= 5:
        side = [i for i, c in enumerate(names) if c in ("BL", "BR", "SL", "SR")]
        mono = (a[names.index("FL")] + a[names.index("FR")]) / 2 + ITU_SURROUND * a[names.index("FC")]
        return mono + ITU_SURROUND * a[side].sum(axis=0) / 2 if side else mono
    return a.mean(axis=0)


def _read_audio(container, path, start, samples, sample_rate, duration, check) -> tuple[torch.Tensor, float]:
    """Mono audio (`downmix`) resampled to `sample_rate`, from `start`, trimmed or zero-padded; and where the
    decoded audio ends."""
    import librosa
    stream = container.streams.audio[0]
    chunks, t0, rate = [], None, None
    for frame in container.decode(stream):
        a = frame.to_ndarray()  # (channels, n) planar, or (1, n * channels) packed
        names = [c.name for c in frame.layout.channels]
        if not frame.format.is_planar:
            a = a.reshape(-1, len(names)).T  # (channels, n)
        if t0 is None:
            t0, rate = (frame.time or 0.0), frame.sample_rate
        a = a.astype(np.float32) if a.dtype.kind == "f" else a.astype(np.float32) / np.iinfo(a.dtype).max
        chunks.append(downmix(a, names))
    if not chunks:
        raise BadInput(f"{path}: no decodable audio")
    wav = np.concatenate(chunks)
    bad = int((~np.isfinite(wav)).sum())
    if bad:
        raise BadInput(f"{path}: audio has {bad} non-finite samples")
    end, decoded_end = _stream_end(stream), t0 + len(wav) / rate
    if check and end is not None and decoded_end + TRUNCATION_SLACK < end:
        raise BadInput(f"{path}: truncated (audio decodes to {decoded_end:.2f} s of the {end:.2f} s its header gives)")
    if rate != sample_rate:
        wav = librosa.resample(wav, orig_sr=rate, target_sr=sample_rate, res_type="soxr_hq")
    offset = int(round((start - t0) * sample_rate))  # timestamps align audio to video
    n = samples if samples is not None else max(int(round((duration - start) * sample_rate)), 0)
    out = np.zeros(n, dtype=np.float32)
    lo, hi = max(offset, 0), min(offset + n, len(wav))
    if hi > lo:
        out[lo - offset:hi - offset] = wav[lo:hi]
    return torch.from_numpy(out), decoded_end  # (L,)


def read_av(path, *, start: float = 0.0, frames: int | None = None, size: int = 64, fps: int = FPS,
            sample_rate: int = SAMPLE_RATE, need_video: bool = True, need_audio: bool = True,
            check_complete: bool = True) -> AV:
    """Decode a video (or audio) file: frames at `fps` from `start`, centre-cropped and resized to `size`,
    and mono audio at `sample_rate`. With `frames` given, both are trimmed or padded to exactly `frames`
    frames and `frames · sample_rate / fps` samples; otherwise they run to the end of the file.
    check_complete: a stream that decodes to more than TRUNCATION_SLACK less than its header's duration
    (a file cut short with its index at the front) is a BadInput, not silently padded."""
    import av
    path = Path(path)
    info = probe(path, complete=check_complete)
    for kind, needed in (("video", need_video), ("audio", need_audio)):
        if needed and not info[kind]:
            raise BadInput(f"{path}: no {kind} stream")
    samples = None if frames is None else frames * sample_rate // fps
    out, ends = {"video": None, "audio": None}, {}
    for kind, needed in (("video", need_video), ("audio", need_audio)):
        if not needed:
            continue
        try:
            with av.open(str(path)) as c:  # one pass per stream: seeking in AAC-in-mp4 is unreliable
                out[kind], ends[kind] = (
                    _read_video(c, path, start, frames, size, fps, info["duration"], check_complete) if kind == "video"
                    else _read_audio(c, path, start, samples, sample_rate, info["duration"], check_complete))
        except av.FFmpegError as e:
            raise BadInput(f"{path}: corrupt or truncated ({type(e).__name__} while decoding its {kind})") from None
    return AV(out["video"], out["audio"], info["duration"], ends)


def to_uint8(video: torch.Tensor) -> torch.Tensor:
    """Frames in [-1, 1] (float) or uint8 -> uint8, same shape."""
    if video.dtype == torch.uint8:
        return video
    return ((video.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


AAC_FRAME = 1024  # samples per AAC frame


def _finite_audio(audio: torch.Tensor, path) -> np.ndarray:
    """(L,) float in [-1, 1] as float32 numpy; non-finite samples are an error, never passed to an encoder."""
    wav = audio.detach().float().cpu()
    bad = int((~torch.isfinite(wav)).sum())
    if bad:
        raise BadInput(f"{path}: audio has {bad} non-finite samples; nothing written")
    return wav.clamp(-1, 1).numpy()


def _aac_packets(stream, wav: np.ndarray, sample_rate: int) -> list:
    """Encode mono float audio (L,) into AAC packets of `stream`."""
    import av
    packets = []
    for i in range(0, len(wav), AAC_FRAME):
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(wav[None, i:i + AAC_FRAME]), format="fltp", layout="mono")
        frame.sample_rate, frame.pts = sample_rate, i
        packets += stream.encode(frame)
    return packets + stream.encode()


def write_mp4(path, video: torch.Tensor | None, audio: torch.Tensor | None, fps: int = FPS,
              sample_rate: int = SAMPLE_RATE) -> Path:
    """Write H.264 video (F, 3, H, W) (uint8, or float in [-1, 1]) and AAC mono audio (L,) in [-1, 1],
    atomically (checkpoint.atomic_path)."""
    import av

    import checkpoint
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    wav = None if audio is None else _finite_audio(audio, path)
    if audio is not None:
        assert audio.ndim == 1, f"audio must be (L,), got {tuple(audio.shape)}"
    with checkpoint.atomic_path(path) as tmp, av.open(str(tmp), "w", format="mp4") as c:
        if video is not None:
            assert video.ndim == 4 and video.shape[1] == 3, f"video must be (F, 3, H, W), got {tuple(video.shape)}"
            frames = to_uint8(video.cpu()).permute(0, 2, 3, 1).numpy()  # (F, H, W, 3)
            vs = c.add_stream("libx264", rate=fps)
            vs.height, vs.width = frames.shape[1:3]
            vs.pix_fmt = "yuv420p"
            vs.options = {"crf": "18"}
        if wav is not None:
            aus = c.add_stream("aac", rate=sample_rate, layout="mono")
        if video is not None:
            for rgb in frames:
                c.mux(vs.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")))
            c.mux(vs.encode())
        if wav is not None:
            c.mux(_aac_packets(aus, wav, sample_rate))
    return path


def _decode_timestamps(src) -> list | None:
    """The dts of each packet of the first video stream, in decode order, where the container stores some
    without (Matroska keeps only pts, and mp4 needs both): the sorted pts moved back by the largest reordering,
    so that dts rises and never passes pts. None where every packet has its dts."""
    import av
    with av.open(str(src)) as c:
        stamps = [(p.pts, p.dts) for p in c.demux(c.streams.video[0]) if p.pts is not None]
    if all(d is not None for _, d in stamps):
        return None
    pts = [p for p, _ in stamps]
    order = sorted(pts)
    delay = max(o - p for o, p in zip(order, pts))
    return [o - delay for o in order]


def write_soundtrack(src, dst, audio: torch.Tensor, sample_rate: int = SAMPLE_RATE, keep_audio: bool = False) -> str:
    """The video of `src` with `audio` (L,) as its soundtrack, written to the mp4 `dst` atomically: the video
    stream is copied packet for packet (its resolution, frame rate, timestamps and rotation untouched), or
    re-encoded as H.264 at its own timestamps where mp4 cannot hold its codec (VP8, Theora); the audio encoded
    as AAC at `sample_rate`, mono, starting at time 0 (the time the model's audio starts at, see read_av).
    keep_audio: the source's first audio track follows as a second, non-default track (copied, or re-encoded
    as AAC where mp4 cannot hold its codec). Returns what was done, in words."""
    import av

    import checkpoint
    src, dst = Path(src), Path(dst)
    wav = _finite_audio(audio, dst)
    with av.open(str(src)) as inp, checkpoint.atomic_path(dst) as tmp:
        vin = inp.streams.video[0]
        ain = inp.streams.audio[0] if keep_audio and inp.streams.audio else None
        with av.open(str(tmp), "w", format="mp4") as out:
            copy_video = vin.codec_context.name in out.supported_codecs
            if copy_video:
                vout = out.add_stream_from_template(vin)
                done = ["video copied"]
            else:
                vout = out.add_stream("libx264", rate=vin.average_rate or FPS)
                # yuv420p needs even sides
                vout.width, vout.height = vin.codec_context.width // 2 * 2, vin.codec_context.height // 2 * 2
                vout.pix_fmt, vout.options = "yuv420p", {"crf": "18"}
                vout.time_base = vout.codec_context.time_base = vin.time_base  # the source's timestamps as they are
                done = [f"video re-encoded as H.264 (mp4 cannot hold {vin.codec_context.name})"]
            aout = out.add_stream("aac", rate=sample_rate, layout="mono")
            aout.disposition = av.stream.Disposition.default
            packets = _aac_packets(aout, wav, sample_rate)
            kept, kept_packets = None, []
            copy_kept = ain is not None and ain.codec_context.name in ("aac", "mp3", "opus", "ac3", "eac3", "alac",
                                                                       "flac")
            if ain is not None:
                if copy_kept:
                    kept = out.add_stream_from_template(ain)
                    done.append("original audio copied as track 2")
                else:
                    kept = out.add_stream("aac", rate=ain.codec_context.sample_rate, layout="stereo")
                    done.append(f"original audio ({ain.codec_context.name}) re-encoded as AAC for track 2")
                kept.disposition = av.stream.Disposition(0)
            # interleave by time: the generated audio before each video packet that comes after it
            queue = sorted(packets, key=lambda p: float(p.pts * p.time_base))

            def mux(p):
                t = float(p.dts * p.time_base)
                while queue and float(queue[0].pts * queue[0].time_base) <= t:
                    out.mux(queue.pop(0))
                out.mux(p)

            dts = iter(_decode_timestamps(src) or ())
            for p in inp.demux(*([vin] + ([ain] if ain is not None else []))):
                if p.pts is None and p.dts is None:  # the demuxer's empty end-of-stream packet
                    continue
                if p.stream is vin and p.pts is not None:
                    p.dts = next(dts, p.dts)
                if p.stream is ain and not copy_kept:
                    for frame in p.decode():
                        frame.pts = None
                        kept_packets += kept.encode(frame)
                elif p.stream is vin and not copy_video:
                    for frame in p.decode():
                        frame = frame.reformat(width=vout.width, height=vout.height, format="yuv420p")
                        for q in vout.encode(frame):
                            mux(q)
                else:
                    p.stream = vout if p.stream is vin else kept
                    mux(p)
            if not copy_video:
                for q in vout.encode():
                    mux(q)
            out.mux(queue)
            if kept is not None and not copy_kept:
                out.mux(kept_packets + kept.encode())
    return ", ".join(done)


def write_wav(path, audio: torch.Tensor, sample_rate: int = SAMPLE_RATE) -> Path:
    """16-bit PCM mono WAV, written with the standard library only, atomically."""
    import wave

    import checkpoint
    pcm = (_finite_audio(audio, path) * 32767).astype("<i2")
    with checkpoint.atomic_path(path) as tmp:
        with wave.open(str(tmp), "wb") as w:
            w.setnchannels(1), w.setsampwidth(2), w.setframerate(sample_rate)
            w.writeframes(pcm.tobytes())
    return Path(path)


# ----------------------------------------------------------------------------------------------------
# The synthetic benchmark: sound events and visual events coincide at known times
EVENTS_MAX = 32  # events are stored NaN-padded to this length so batches collate
PALETTE = np.array([[1, .2, .2], [.2, 1, .2], [.3, .4, 1], [1, 1, .2], [1, .2, 1], [.2, 1, 1]], np.float32)
PITCHES = np.array([261.6, 329.6, 392.0, 523.3, 659.3, 784.0], np.float32)  # Hz, C major, one per colour
VARIANTS = ("bounce", "dance")
MIN_EVENT_GAP = 3  # frames between impacts of different balls: 10 fps cannot show closer events apart
MAX_TRIES = 20
NOISE_FLOOR = 0.002  # std of the background noise (-54 dBFS): a room tone between events, not digital silence


def _disk(yy, xx, cy, cx, r):
    """Soft-edged disks: centres and radii (F,) or scalars -> masks (F, S, S) in [0, 1]."""
    d = np.sqrt((yy[None] - cy[:, None, None]) ** 2 + (xx[None] - cx[:, None, None]) ** 2)
    return np.clip(np.reshape(r, (-1, 1, 1)) - d + 0.5, 0, 1)


def _box(yy, xx, cy, cx, hh, hw):
    """Soft-edged axis-aligned boxes of half-sizes (hh, hw) centred at (F,) -> masks (F, S, S)."""
    dy = np.abs(yy[None] - cy[:, None, None]) - hh
    dx = np.abs(xx[None] - cx[:, None, None]) - hw
    return np.clip(0.5 - np.maximum(dy, dx), 0, 1)


def _hit(wav, t, sr, freq, decay, gain, noise, rng):
    """Add a percussive note at time t: a decaying sine at `freq` plus a short noise burst."""
    i0 = int(round(t * sr))
    if i0 >= len(wav) or i0 < 0:
        return
    n = min(int(0.35 * sr), len(wav) - i0)
    tt = np.arange(n, dtype=np.float32) / sr
    note = np.sin(2 * np.pi * freq * tt) * np.exp(-tt / decay)
    note += noise * rng.standard_normal(n).astype(np.float32) * np.exp(-tt / 0.012)
    wav[i0:i0 + n] += gain * note


def synthetic_clip(seed: int, clip: ClipConfig, variant: str = "bounce", max_events: int = EVENTS_MAX) -> dict:
    """One deterministic window (frames + 2·margin) of the synthetic benchmark.

    - "bounce": 1-3 balls bounce on the floor; at each impact the ball flashes white and a note sounds,
      its pitch set by the ball's colour, its decay and noise by its size. Impacts lie on the frame grid.
    - "dance": a figure jumps and swaps its pose on every beat of a kick/snare loop at a random tempo
      (90-150 bpm), a stand-in for AIST++ dance.
    Returns video uint8 (Fw, 3, S, S), audio float32 (Lw,), events (max_events,) in seconds from the
    positive clip's start (NaN-padded; long clips need more than EVENTS_MAX) and tempo (bpm; 0 for "bounce").
    """
    rng = np.random.default_rng(seed)
    S, Fw, sr = clip.size, clip.window_frames, clip.sample_rate
    t_frames = np.arange(Fw, dtype=np.float32) / clip.fps  # frame times, seconds from window start
    yy, xx = np.mgrid[0:S, 0:S].astype(np.float32)
    canvas = np.broadcast_to(rng.uniform(0, 0.15, 3).astype(np.float32), (Fw, S, S, 3)).copy()
    wav = (NOISE_FLOOR * rng.standard_normal(clip.window_samples)).astype(np.float32)
    events, tempo = [], 0.0
    if variant == "bounce":
        n_obj = int(rng.integers(1, 4))
        columns = rng.permutation(3)[:n_obj]
        taken = np.zeros(0, int)  # impact frames of the balls drawn so far
        for k in range(n_obj):
            colour = int(rng.integers(len(PALETTE)))
            big = bool(rng.integers(2))
            r = S * (0.13 if big else 0.08)
            for _ in range(MAX_TRIES):  # keep impacts of different balls >= 3 frames apart: separate events
                gap = int(rng.integers(4, 9))  # frames between impacts: 0.4-0.8 s
                first = int(rng.integers(0, gap))
                impacts = np.arange(first - gap, Fw + gap, gap)  # frame indices; virtual ones beyond the window
                if taken.size == 0 or np.abs(impacts[:, None] - taken[None]).min() >= MIN_EVENT_GAP:
                    break
            else:
                continue  # no room for this ball
            taken = np.concatenate([taken, impacts])
            prev = impacts[np.searchsorted(impacts, np.arange(Fw), side="right") - 1]
            u = (np.arange(Fw) - prev) / gap  # phase in the current bounce
            since = np.arange(Fw) - prev  # frames since the last impact
            pop = np.exp(-since / 1.0)  # 1 on the impact frame, then a fast fade
            floor = S - 1.35 * r - 1
            cy = floor - S * 0.12 * 4 * u * (1 - u)  # a low hop, on the floor at impacts
            cx = np.full(Fw, S * (0.2 + 0.3 * columns[k]) + rng.uniform(-2, 2))
            # The ball swells and flashes white on impact and fades back, so the largest frame change
            # is into the impact frame itself (a visual onset at the sound's onset).
            mask = _disk(yy, xx, cy, cx, r * (1 + 0.35 * pop))[..., None]  # (Fw, S, S, 1)
            flash = (0.8 * pop).astype(np.float32)[:, None, None, None]
            colour_px = (0.45 + 0.55 * pop[:, None, None, None]) * (PALETTE[colour] * (1 - flash) + flash)
            canvas = canvas * (1 - mask) + mask * colour_px
            for f in impacts[(impacts >= 0) & (impacts < Fw)]:
                t = f / clip.fps
                _hit(wav, t, sr, PITCHES[colour] / (2 if big else 1), 0.12 if big else 0.06, 0.5,
                     0.6 if big else 0.2, rng)
                events.append(t)
    elif variant == "dance":
        tempo = float(rng.uniform(90, 150))
        period = 60.0 / tempo
        beats = np.arange(rng.uniform(0, period), clip.window_samples / sr, period)
        k = np.searchsorted(beats, t_frames, side="right") - 1  # index of the last beat (-1: none yet)
        since = np.where(k >= 0, t_frames - np.append(beats, 0.0)[np.maximum(k, 0)], 1.0)  # beats may be empty
        jump = S * 0.12 * np.exp(-since / 0.08)  # a sharp hop on each beat
        side = np.where(k % 2 == 0, 1.0, -1.0) * S * 0.08  # the pose swaps sides on each beat
        colour = PALETTE[int(rng.integers(len(PALETTE)))]
        cx, base = S / 2 + side, S * 0.62 - jump
        body = _box(yy, xx, base, cx, S * 0.14, S * 0.06)
        head = _disk(yy, xx, base - S * 0.22, cx, S * 0.07)
        arm = _box(yy, xx, base - S * 0.10 - side, cx + 2 * side, S * 0.03, S * 0.12)
        mask = np.clip(body + head + arm, 0, 1)[..., None]  # (Fw, S, S, 1)
        canvas = canvas * (1 - mask) + mask * colour
        for i, t in enumerate(beats):
            _hit(wav, t, sr, 60.0, 0.10, 0.8, 0.3, rng)  # kick on every beat
            if i % 2:
                _hit(wav, t, sr, 180.0, 0.05, 0.3, 1.5, rng)  # snare on the off beats of the bar
        events = list(beats)
    else:
        raise ValueError(f"unknown synthetic variant {variant!r}; choose from {VARIANTS}")
    offset = clip.margin / clip.fps
    ev = np.unique(np.round(np.asarray(events, np.float64) - offset, 6))
    ev = ev[(ev >= 0) & (ev < clip.duration)][:max_events]
    padded = np.full(max_events, np.nan, np.float32)
    padded[:len(ev)] = ev
    video = torch.from_numpy((canvas * 255).round().clip(0, 255).astype(np.uint8)).permute(0, 3, 1, 2)  # (Fw, 3, S, S)
    audio = torch.from_numpy(np.clip(wav, -1, 1))  # (Lw,)
    return {"video": video.contiguous(), "audio": audio, "events": torch.from_numpy(padded),
            "tempo": torch.tensor(tempo, dtype=torch.float32)}


def _stable_int(*parts) -> int:
    """A hash of strings/ints that is the same in every process and Python version (unlike hash())."""
    return int.from_bytes(hashlib.sha1("/".join(map(str, parts)).encode()).digest()[:8], "little")


def with_mel(item: dict, clip: ClipConfig) -> dict:
    """Add the normalised log-mel of the whole audio window: (M, Lw // HOP), i.e. 112 + 2·25 steps."""
    return {**item, "mel": wav_to_mel(item["audio"][None])[0]}


class SyntheticDataset(torch.utils.data.Dataset):
    """Clips of the synthetic benchmark, generated on the fly from (seed, split, index); the variants
    alternate. Splits draw from disjoint seed streams, so held-out clips are never trained on."""
    SPLITS = ("train", "val", "test")

    def __init__(self, clip: ClipConfig, split: str = "train", num_clips: int = 2000, seed: int = 0,
                 variants=VARIANTS):
        assert split in self.SPLITS, f"split must be one of {self.SPLITS}, got {split!r}"
        self.clip, self.split, self.num_clips, self.seed, self.variants = clip, split, num_clips, seed, variants

    def __len__(self):
        return self.num_clips

    def __getitem__(self, i):
        variant = self.variants[i % len(self.variants)]
        item = synthetic_clip(_stable_int("synthetic", self.seed, self.split, i), self.clip, variant)
        return with_mel({**item, "name": f"synthetic-{self.split}-{self.seed}-{i:06d}-{variant}"}, self.clip)


# ----------------------------------------------------------------------------------------------------
# Real videos: folders and AIST++, cut into windows and stored as shards
FOLDER_SPLIT = {"train": (0, 90), "val": (90, 95), "test": (95, 100)}  # percent of hash(filename) % 100


def folder_split(name: str) -> str:
    h = _stable_int("folder-split", name) % 100
    return next(s for s, (lo, hi) in FOLDER_SPLIT.items() if lo <= h < hi)


def list_videos(root) -> list[Path]:
    root = Path(root)
    if not root.is_dir():
        raise BadInput(f"{root}: no such directory")
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in VIDEO_EXTENSIONS and p.is_file())


def aist_split_files(root) -> dict[str, list[Path]]:
    """AIST++ videos under ROOT/videos, split by the official cross-modal lists in ROOT/splits
    (crossmodal_{train,val,test}.txt of the AIST++ release). The lists name sequences with camera
    'cAll'; every camera view of a listed sequence belongs to its split."""
    root = Path(root)
    out = {}
    for split in ("train", "val", "test"):
        lst = root / "splits" / f"crossmodal_{split}.txt"
        if not lst.is_file():
            raise BadInput(f"{lst}: missing AIST++ split list (see the README, section 'AIST++')")
        names = {line.strip() for line in lst.read_text().splitlines() if line.strip()}
        out[split] = [p for p in list_videos(root / "videos")
                      if "_".join("cAll" if part.startswith("c") and part[1:].isdigit() else part
                                  for part in p.stem.split("_")) in names]
    return out


def source_files(data: str, root) -> dict[str, list[Path]]:
    """{split: [video files]} for `--data folder` or `--data aist`."""
    if data in ("folder", "aist") and root is None:
        raise BadInput(f"--data {data} needs --data-root DIR")
    if data == "aist":
        return aist_split_files(root)
    if data == "folder":
        files = list_videos(root)
        if not files:
            raise BadInput(f"{root}: no video files ({', '.join(VIDEO_EXTENSIONS)}) in it or its subfolders")
        return {s: [p for p in files if folder_split(p.name) == s] for s in FOLDER_SPLIT}
    raise ValueError(f"--data {data!r} has no source files; choose folder or aist")


def video_windows(path, clip: ClipConfig) -> list[dict]:
    """Cut one video into windows of frames + 2·margin, with positive clips tiling the file. Raises
    BadInput for a file that cannot give one window."""
    info = probe(path)
    for kind in ("video", "audio"):
        if not info[kind]:
            raise BadInput(f"{path}: no {kind} stream")
    window_s = clip.window_frames / clip.fps
    n = int(math.floor((info["duration"] - window_s) / clip.duration + 1e-6)) + 1
    if info["duration"] + 1e-6 < window_s:
        raise BadInput(f"{path}: shorter than one clip ({info['duration']:.2f} s < {window_s:.2f} s with margins)")
    av_ = read_av(path, frames=(n - 1) * clip.frames + clip.window_frames, size=clip.size, fps=clip.fps,
                  sample_rate=clip.sample_rate)
    # Windows only where both streams have content: past a stream's end read_av pads with its last frame or
    # silence, which is no training example (a single still frame before seconds of sound, say). One frame of
    # slack absorbs encoders' rounding of the last frame's end.
    kind = min(av_.ends, key=av_.ends.get)
    n = min(n, int(math.floor((av_.ends[kind] + 1 / clip.fps - window_s) / clip.duration + 1e-6)) + 1)
    if n < 1:
        raise BadInput(f"{path}: {kind} shorter than one clip (it ends at {av_.ends[kind]:.2f} s < {window_s:.2f} s "
                       f"with margins)")
    out = []
    for k in range(n):
        f0, s0 = k * clip.frames, k * clip.samples
        out.append({"video": av_.video[f0:f0 + clip.window_frames],
                    "audio": av_.audio[s0:s0 + clip.window_samples],
                    "events": torch.full((EVENTS_MAX,), float("nan")), "tempo": torch.tensor(0.0)})
    return out


def _save_shard(path: Path, items: list[dict], meta: dict):
    """Stack items into one safetensors file, written atomically (checkpoint.atomic_path): an interrupted
    run never leaves a half-written shard."""
    from safetensors.torch import save_file

    import checkpoint
    tensors = {k: torch.stack([it[k] for it in items]).contiguous()
               for k in ("video", "audio", "mel", "events", "tempo", "latents") if k in items[0]}
    tensors["audio"] = (tensors["audio"] * 32767).round().clamp(-32768, 32767).to(torch.int16)  # 16-bit PCM
    with checkpoint.atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"names": json.dumps([it["name"] for it in items]),
                                              "meta": json.dumps(meta)})


def _count_skip(counts: dict, message: str):
    reason = message.split(": ", 1)[-1].split(" (")[0]  # "FILE: reason (detail)" -> "reason"
    counts["skipped"] += 1
    counts["reasons"][reason] = counts["reasons"].get(reason, 0) + 1


def prepare(data: str, out, *, clip: ClipConfig, root=None, num_clips: dict | None = None, seed: int = 0,
            shard_size: int = 256, encoder=None, progress: bool = True) -> dict:
    """Decode once into OUT/{split}/*.safetensors (uint8 frames, 16-bit audio, normalised mel, and
    latents when `encoder` is given). Resumable: finished shards and recorded failures are skipped.
    Returns counts; bad files are skipped with one warning line each."""
    import checkpoint
    import cli
    out = Path(out)
    meta = {"data": data, "clip": asdict(clip), "seed": seed}
    cfg_path = out / "config.json"
    cli.check_writable_dir(out)
    if cfg_path.exists() and read_config(out)["clip"] != meta["clip"]:
        raise BadInput(f"{cfg_path}: prepared with another clip config; use a new --out")
    # Jobs: (split, shard key, list of sources). A source is a synthetic index or a file.
    jobs = []
    if data == "synthetic":
        num_clips = num_clips or {"train": 2000, "val": 100, "test": 100}
        for split, n in num_clips.items():
            for s, lo in enumerate(range(0, n, shard_size)):
                jobs.append((split, f"shard-{s:05d}", list(range(lo, min(lo + shard_size, n)))))
    else:
        for split, files in source_files(data, root).items():
            for p in files:
                key = f"{p.stem[:60]}-{_stable_int(p.relative_to(root)) % 16 ** 8:08x}"
                jobs.append((split, key, [p]))
    text = json.dumps(meta, indent=1)
    if not cfg_path.exists() or cfg_path.read_text() != text:  # once the sources are known; a rerun changes nothing
        checkpoint.write_text(cfg_path, text)
    counts = {"clips": 0, "shards": 0, "resumed": 0, "skipped": 0, "reasons": {}}
    bar = tqdm(jobs, desc=f"prepare {data}", unit="shard" if data == "synthetic" else "file", disable=not progress)
    for split, key, sources in bar:
        shard, skip = out / split / f"{key}.safetensors", out / split / f"{key}.skip"
        shard.parent.mkdir(exist_ok=True)
        if shard.exists() or skip.exists():
            counts["resumed"] += 1
            if skip.exists():
                _count_skip(counts, skip.read_text().strip())
            continue
        try:
            if data == "synthetic":
                ds = SyntheticDataset(clip, split, max(sources) + 1, seed)
                items = [ds[i] for i in sources]
            else:
                items = [with_mel({**w, "name": f"{sources[0].stem}-{k:03d}"}, clip)
                         for k, w in enumerate(video_windows(sources[0], clip))]
        except BadInput as e:
            _count_skip(counts, str(e))
            tqdm.write(f"warning: skipped {e}", file=sys.stderr)
            checkpoint.write_text(skip, str(e) + "\n")
            continue
        if encoder is not None:
            for it in items:
                it["latents"] = encoder(it["video"]).to(torch.float16)
        _save_shard(shard, items, meta)
        counts["clips"] += len(items)
        counts["shards"] += 1
    reasons = ", ".join(f"{r}: {n}" for r, n in counts["reasons"].items())
    print(f"prepared {counts['clips']} clips in {counts['shards']} new shards under {out}; "
          f"{counts['resumed']} already done; skipped {counts['skipped']} files" + (f" ({reasons})" if reasons else ""),
          file=sys.stderr)
    return counts


def read_config(root) -> dict:
    """ROOT/config.json of prepared shards, as `prepare` wrote it."""
    path = Path(root) / "config.json"
    try:
        meta = json.loads(path.read_text())
        ClipConfig(**meta["clip"])
        return meta
    except FileNotFoundError:
        raise BadInput(f"{path}: missing (not a folder prepared by `python data.py prepare`)") from None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise BadInput(f"{path}: unreadable or not a prepare config ({type(e).__name__}); delete it and prepare "
                       f"again") from None


class ShardDataset(torch.utils.data.Dataset):
    """Windows from prepared shards, read row by row through safetensors' memory-mapped slices, so a
    large set never has to fit in memory and DataLoader workers share the page cache."""

    def __init__(self, root, split: str = "train"):
        from safetensors import SafetensorError, safe_open
        self.clip = ClipConfig(**read_config(root)["clip"])
        self.files = sorted((Path(root) / split).glob("*.safetensors"))
        if not self.files:
            raise BadInput(f"{Path(root) / split}: no prepared shards (run `python data.py prepare`)")
        self.index, self.names, self._open = [], [], {}
        for f in self.files:
            try:  # safetensors checks that the header covers the whole file: a cut or damaged shard fails here
                with safe_open(str(f), "pt") as h:
                    names = json.loads(h.metadata()["names"])
            except (SafetensorError, OSError, ValueError, KeyError, TypeError) as e:
                raise BadInput(f"{f}: not a readable shard ({type(e).__name__}); delete it and run `python data.py "
                               f"prepare` again") from None
            self.index += [(f, r) for r in range(len(names))]
            self.names += names

    def __len__(self):
        return len(self.index)

    def __getitem__(self, i):
        from safetensors import safe_open
        f, r = self.index[i]
        if f not in self._open:  # opened lazily, so each DataLoader worker has its own handles
            self._open[f] = safe_open(str(f), "pt")
        h = self._open[f]
        item = {k: h.get_slice(k)[r] for k in h.keys()}
        item["audio"] = item["audio"].float() / 32767
        return {**item, "name": self.names[i]}

    def __getstate__(self):
        return {**self.__dict__, "_open": {}}


def build_dataset(data: str, split: str, clip: ClipConfig, *, root=None, cache=None, num_clips: int | None = None,
                  seed: int = 0, encoder=None):
    """The dataset behind `--data NAME`: synthetic clips on the fly, or shards under `cache` prepared
    from ROOT on first use (folder, aist)."""
    if data == "synthetic":
        default = {"train": 2000, "val": 100, "test": 100}[split]
        return SyntheticDataset(clip, split, num_clips or default, seed)
    if data in ("folder", "aist"):
        if root is None:
            raise BadInput(f"--data {data} needs --data-root DIR")
        cache = Path(cache or Path(root) / ".cmmd_shards" / f"{clip.size}px-{clip.frames}f")
        prepare(data, cache, clip=clip, root=root, encoder=encoder)
        return ShardDataset(cache, split)
    if Path(data).is_dir() and (Path(data) / "config.json").exists():  # a prepared folder
        ds = ShardDataset(data, split)
        if ds.clip != clip:
            raise BadInput(f"{data}: shards were prepared for {ds.clip}, not the requested {clip}")
        return ds
    raise BadInput(f"--data {data}: unknown; choose synthetic, folder, aist, or a prepared shard directory")


def main(argv=None):
    p = argparse.ArgumentParser(description="Data tools for cmmd.")
    sub = p.add_subparsers(dest="cmd", required=True)
    q = sub.add_parser("prepare", help="decode once into training-ready safetensors shards")
    q.add_argument("--data", required=True, choices=["synthetic", "folder", "aist"], help="which dataset")
    q.add_argument("--data-root", help="folder of videos (folder) or the AIST++ root (aist)")
    q.add_argument("--out", required=True, help="output directory of shards")
    for f in ("frames", "size", "margin"):
        q.add_argument(f"--{f}", type=int, default=getattr(ClipConfig, f), help=f"ClipConfig.{f}")
    q.add_argument("--clips", type=int, nargs=3, default=[2000, 100, 100], metavar=("TRAIN", "VAL", "TEST"),
                   help="number of synthetic clips per split")
    q.add_argument("--seed", type=int, default=0, help="synthetic generator seed")
    q.add_argument("--vae", choices=["none", "sd"], default="none", help="also store SD-VAE latents")
    q.add_argument("--vae-path", default="stabilityai/sd-vae-ft-mse", help="local VAE directory or hub id")
    import cli
    cli.run(run_prepare, p.parse_args(argv))


def run_prepare(a):
    import cli
    clip = ClipConfig(frames=a.frames, size=a.size, margin=a.margin)
    for split, n in zip(("train", "val", "test"), a.clips):
        cli.check_range(f"clips ({split})", n, 0)
    # the folder and the sources before the VAE loads (prepare checks them again, at no cost)
    cli.check_writable_dir(a.out)
    if a.data != "synthetic":
        source_files(a.data, a.data_root)
    encoder = None
    if a.vae == "sd":
        import vae
        codec = vae.make_codec("sd", a.vae_path)

        def encoder(frames):  # (Fw, 3, H, W) uint8 -> (Fw, 4, h, w)
            with torch.inference_mode():
                return codec.encode(frames[None].float() / 127.5 - 1)[0]
    prepare(a.data, a.out, clip=clip, root=a.data_root, seed=a.seed, encoder=encoder,
            num_clips=dict(zip(("train", "val", "test"), a.clips)))


if __name__ == "__main__":
    main()
