"""Video and audio files in and out, through PyAV (CMMD §3 "Feature Extraction": 10 fps video, 16 kHz mono
audio), with every problem of a file a one-line `BadInput` naming it.

- `read_av` decodes any container PyAV opens into frames at `fps` from `start` — each the decoded frame
  with the nearest timestamp, centre-cropped to a square and resized with antialiasing — and mono audio,
  resampled to `sample_rate` with soxr (`resample`): for 5.1 and 7.1 the ITU-R BS.775 stereo downmix
  averaged, m = (L + R)/2 + 0.7071·C + 0.7071·(Ls + Rs)/2 with the LFE left out, else the channels' mean
  (`downmix`). The two are aligned by their timestamps, so an encoder's priming delay does not shift them.
  A stream that decodes to more than TRUNCATION_SLACK less than its header's duration is a truncated file,
  not silently padded.
- `write_mp4` writes H.264 + AAC, `write_wav` 16-bit PCM, `write_soundtrack` puts generated audio under
  the untouched video stream of a source file; all write atomically (checkpoint.atomic_path).
"""
import math
import os
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

import checkpoint
from melspec import SAMPLE_RATE
from modalities import to_uint8

FPS = 10  # video frames per second, CMMD §3
VIDEO_EXTENSIONS = (".mp4", ".mov", ".mkv", ".webm", ".avi")
TRUNCATION_SLACK = 0.5  # s: a stream that decodes to this much less than its header's duration is truncated
ITU_SURROUND = 0.7071  # -3 dB: centre and surround channels in the ITU-R BS.775 downmix; LFE is left out
AAC_FRAME = 1024  # samples per AAC frame


class BadInput(ValueError):
    """A file that cannot be used; the message is one line naming the file and the reason."""


class AV(NamedTuple):
    video: torch.Tensor | None  # uint8 (F, 3, size, size)
    audio: torch.Tensor | None  # float32 (L,) at the requested sample rate, mono
    duration: float  # seconds of the source
    ends: dict  # {"video" | "audio": s}: where each stream read decodes to (its last frame's end)


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


def resample(wav: np.ndarray, sr_in: int, sr_out: int) -> np.ndarray:
    """(L,) at sr_in -> (L',) at sr_out with librosa.resample(res_type="soxr_hq"), in wav's float dtype;
    the one resampler of the project (read_av, the metrics' embedders and beat/onset detection)."""
    if sr_in == sr_out:
        return wav
    import librosa
    return librosa.resample(wav, orig_sr=sr_in, target_sr=sr_out, res_type="soxr_hq")


def _read_audio(container, path, start, samples, sample_rate, duration, check) -> tuple[torch.Tensor, float]:
    """Mono audio (`downmix`) resampled to `sample_rate`, from `start`, trimmed or zero-padded; and where the
    decoded audio ends."""
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
    wav = resample(wav, rate, sample_rate)
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
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(wav[None, i:i + AAC_FRAME]), format="fltp",
                                           layout="mono")
        frame.sample_rate, frame.pts = sample_rate, i
        packets += stream.encode(frame)
    return packets + stream.encode()


def write_mp4(path, video: torch.Tensor | None, audio: torch.Tensor | None, fps: int = FPS,
              sample_rate: int = SAMPLE_RATE) -> Path:
    """Write H.264 video (F, 3, H, W) (uint8, or float in [-1, 1]) and AAC mono audio (L,) in [-1, 1],
    atomically (checkpoint.atomic_path)."""
    import av
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


KEPT_AUDIO_COPY = ("aac", "mp3", "opus", "ac3", "eac3", "alac", "flac")  # audio codecs mp4 holds as they are


def _soundtrack_video_stream(out, vin):
    """The output's video stream: a copy of `vin` where mp4 holds its codec, else H.264 at its own timestamps.
    Returns (stream, copied, what was done)."""
    if vin.codec_context.name in out.supported_codecs:
        return out.add_stream_from_template(vin), True, "video copied"
    vout = out.add_stream("libx264", rate=vin.average_rate or FPS)
    # yuv420p needs even sides
    vout.width, vout.height = vin.codec_context.width // 2 * 2, vin.codec_context.height // 2 * 2
    vout.pix_fmt, vout.options = "yuv420p", {"crf": "18"}
    vout.time_base = vout.codec_context.time_base = vin.time_base  # the source's timestamps as they are
    return vout, False, f"video re-encoded as H.264 (mp4 cannot hold {vin.codec_context.name})"


def _kept_audio_stream(out, ain):
    """The source's audio as a second, non-default track: copied where mp4 holds its codec, else AAC.
    Returns (stream, copied, what was done)."""
    import av
    if ain.codec_context.name in KEPT_AUDIO_COPY:
        kept, copied, done = out.add_stream_from_template(ain), True, "original audio copied as track 2"
    else:
        kept, copied = out.add_stream("aac", rate=ain.codec_context.sample_rate, layout="stereo"), False
        done = f"original audio ({ain.codec_context.name}) re-encoded as AAC for track 2"
    kept.disposition = av.stream.Disposition(0)
    return kept, copied, done


def _mux_soundtrack(src, inp, out, vin, vout, ain, kept, packets, copy_video: bool, copy_kept: bool):
    """Mux the source's video (and kept audio) packets, re-encoded where they are not copied, interleaved by time
    with the generated audio's `packets`, so players never wait on one stream."""
    kept_packets = []
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


def write_soundtrack(src, dst, audio: torch.Tensor, sample_rate: int = SAMPLE_RATE, keep_audio: bool = False) -> str:
    """The video of `src` with `audio` (L,) as its soundtrack, written to the mp4 `dst` atomically: the video
    stream is copied packet for packet (its resolution, frame rate, timestamps and rotation untouched), or
    re-encoded as H.264 at its own timestamps where mp4 cannot hold its codec (VP8, Theora); the audio encoded
    as AAC at `sample_rate`, mono, starting at time 0 (the time the model's audio starts at, see read_av).
    keep_audio: the source's first audio track follows as a second, non-default track (copied, or re-encoded
    as AAC where mp4 cannot hold its codec). Returns what was done, in words."""
    import av
    src, dst = Path(src), Path(dst)
    wav = _finite_audio(audio, dst)
    with av.open(str(src)) as inp, checkpoint.atomic_path(dst) as tmp:
        vin = inp.streams.video[0]
        ain = inp.streams.audio[0] if keep_audio and inp.streams.audio else None
        with av.open(str(tmp), "w", format="mp4") as out:
            vout, copy_video, did = _soundtrack_video_stream(out, vin)
            done = [did]
            aout = out.add_stream("aac", rate=sample_rate, layout="mono")
            aout.disposition = av.stream.Disposition.default
            packets = _aac_packets(aout, wav, sample_rate)
            kept, copy_kept = None, False
            if ain is not None:
                kept, copy_kept, did = _kept_audio_stream(out, ain)
                done.append(did)
            _mux_soundtrack(src, inp, out, vin, vout, ain, kept, packets, copy_video, copy_kept)
    return ", ".join(done)


def write_wav(path, audio: torch.Tensor, sample_rate: int = SAMPLE_RATE) -> Path:
    """16-bit PCM mono WAV, written with the standard library only, atomically."""
    import wave
    pcm = (_finite_audio(audio, path) * 32767).astype("<i2")
    with checkpoint.atomic_path(path) as tmp:
        with wave.open(str(tmp), "wb") as w:
            w.setnchannels(1), w.setsampwidth(2), w.setframerate(sample_rate)
            w.writeframes(pcm.tobytes())
    return Path(path)

