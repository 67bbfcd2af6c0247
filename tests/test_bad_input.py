"""Bad input never costs a user their work: a corpus of unusual but valid and of broken media files,
generated here with PyAV and numpy, through every command that reads media (sample.py in each mode, data.py
prepare, metrics.py, train.py on the prepared shards), and the flags and paths that used to give a traceback,
a wrong message or a silent wrong result. Each bad case must end with one `error: FILE: what is wrong` line
(or, among many files, one such line per bad file), a non-zero exit, no traceback, and every file already in
the output folder exactly as it was, with no temporary file left; each valid one with outputs of the input's
length."""
import json
import math
import os
import shutil
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch

import checkpoint
import cli
import media
import train
from conftest import ROOT

# ---- the corpus: media files written with PyAV ------------------------------------------------------------
LAYOUTS = {1: "mono", 2: "stereo", 6: "5.1"}
SECONDS = 1.5  # every file is this long unless it says otherwise: one window of 6 + 2 · 4 frames for prepare


def tone(seconds: float, rate: int, channels: int = 1) -> np.ndarray:
    """(channels, n) float32: a 440 Hz tone with a click every 0.5 s, something for onset detectors to find."""
    t = np.arange(int(round(seconds * rate))) / rate
    wav = 0.3 * np.sin(2 * np.pi * 440 * t) * (1 + (t % 0.5 < 0.05))
    return np.repeat(wav[None].astype(np.float32), channels, 0)


def _encode_audio(c, stream, wav: np.ndarray, rate: int, start: float):
    fmt = stream.codec_context.format
    step = stream.codec_context.frame_size or 1024
    for lo in range(0, wav.shape[1], step):
        chunk = np.ascontiguousarray(wav[:, lo:lo + step])
        if fmt.name.startswith(("s16", "s32")):
            kind = np.int16 if fmt.name.startswith("s16") else np.int32
            chunk = (np.clip(chunk, -1, 1) * np.iinfo(kind).max).astype(kind)
        if not fmt.is_planar:
            chunk = np.ascontiguousarray(chunk.T.reshape(1, -1))  # (1, n · channels) packed
        frame = av.AudioFrame.from_ndarray(chunk, format=fmt.name, layout=LAYOUTS[wav.shape[0]])
        frame.sample_rate, frame.pts, frame.time_base = rate, int(round(start * rate)) + lo, Fraction(1, rate)
        c.mux(stream.encode(frame))
    c.mux(stream.encode())


def write_media(path, *, size=(32, 24), seconds=SECONDS, fps=10, vcodec="libx264", pix_fmt="yuv420p", frames=None,
                acodec="aac", rate=16000, channels=1, audio_streams=1, audio_start=0.0, vfr=False, wav=None,
                video=True, options=None) -> Path:
    """A small sounding video (or, video=False, an audio file): moving squares over noise and `tone`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(len(path.name))
    with av.open(str(path), "w", options=options or {}) as c:
        if video:
            vs = c.add_stream(vcodec, rate=fps)
            vs.width, vs.height = size
            vs.pix_fmt = pix_fmt
            if vfr:
                vs.time_base = vs.codec_context.time_base = Fraction(1, 1000)
        streams = [c.add_stream(acodec, rate=rate, layout=LAYOUTS[channels]) for _ in range(audio_streams)]
        if video:
            base, t = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8), 0
            for k in range(frames if frames is not None else int(round(seconds * fps))):
                rgb = base.copy()
                y, x = (3 * k) % (size[1] - 4), (5 * k) % (size[0] - 4)
                rgb[y:y + 4, x:x + 4] = 255
                frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
                if vfr:  # frames 40 and 160 ms apart in turn
                    frame.pts, frame.time_base = t, Fraction(1, 1000)
                    t += 40 if k % 2 else 160
                c.mux(vs.encode(frame))
            c.mux(vs.encode())
        for s in streams:
            w = wav if wav is not None else tone(seconds - audio_start, rate, channels)
            _encode_audio(c, s, w, rate, audio_start)
    return path


def cut(src: Path, dst: Path, fraction: float) -> Path:
    dst.write_bytes(src.read_bytes()[:int(src.stat().st_size * fraction)])
    return dst


def nonfinite(value, rate=16000):
    wav = tone(SECONDS, rate)
    wav[0, 4000:4010] = value
    return wav


# name -> (how to write it, expected outcome). Valid inputs name the modes they are used in.
VALID_VIDEOS = {
    "portrait.mp4": dict(size=(24, 40)),
    "vfr.mp4": dict(vfr=True),
    "mono8k.mp4": dict(rate=8000),
    "two_audio.mkv": dict(audio_streams=2),
    "late.mp4": dict(seconds=3.0, audio_start=1.5),  # sound starts 1.5 s after the picture
    "clip.mkv": dict(acodec="flac"),
    "clip.webm": dict(vcodec="libvpx", acodec="libopus", rate=48000),  # mp4 cannot hold VP8: re-encoded
    "clip.avi": dict(vcodec="mpeg4", acodec="mp3"),
    "odd444.mp4": dict(size=(321, 239), pix_fmt="yuv444p"),
    "surround.mp4": dict(channels=6, rate=48000),
    "sp ace/ünï cödé.mp4": dict(),  # a path with spaces and non-ASCII characters
}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("media")
    for name, how in VALID_VIDEOS.items():
        write_media(d / name, **how)
    write_media(d / "tone8k.wav", video=False, acodec="pcm_s16le", rate=8000)
    write_media(d / "nan.wav", video=False, acodec="pcm_f32le", wav=nonfinite(np.nan))  # float wav with NaN
    write_media(d / "inf.mkv", acodec="pcm_f32le", wav=nonfinite(np.inf))  # float PCM in mkv with inf
    write_media(d / "full.mp4", seconds=4.0)  # the index (moov) at the end
    write_media(d / "fullfs.mp4", seconds=4.0, options={"movflags": "faststart"})  # the index at the front
    cut(d / "fullfs.mp4", d / "cutfs.mp4", 0.6)  # opens, but its data ends at 60 %
    cut(d / "full.mp4", d / "cut.mp4", 0.6)  # no index: unreadable
    (d / "full.mp4").unlink(), (d / "fullfs.mp4").unlink()
    write_media(d / "oneframe.mp4", frames=1, seconds=2.6)  # one still image and 2.6 s of sound
    write_media(d / "noaudio.mp4", audio_streams=0)
    (d / "empty.mp4").write_bytes(b"")
    (d / "text.mp4").write_text("this is not a video\n")
    (d / "random.mp4").write_bytes(np.random.default_rng(0).integers(0, 256, 20_000, dtype=np.uint8).tobytes())
    return d


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ckpt")
    cfg = train.parse_args(["--preset", "tiny", "--size", "16", "--frames", "6", "--batch", "2", "--num-clips", "4",
                            "--workers", "0", "--preview-every", "0", "--steps", "1", "--out", str(out)])
    return train.train(cfg, progress=False)


# ---- helpers -------------------------------------------------------------------------------------------------

def run(script, *args) -> subprocess.CompletedProcess:
    # one thread: on tensors this small, torch's threads cost more than they give (30x on a busy 2-core runner)
    return subprocess.run([sys.executable, str(ROOT / script), *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})


def error_lines(proc) -> list[str]:
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return [line for line in proc.stderr.splitlines() if line.startswith("error:")]


def one_error(proc, *words):
    """Exit 1, one `error:` line holding every word (the file and the problem), nothing else said as an error."""
    lines = error_lines(proc)
    assert proc.returncode == 1 and len(lines) == 1 and all(w in lines[0] for w in map(str, words)), \
        (words, proc.returncode, proc.stderr[-2000:])
    return lines[0]


def errors_by_file(proc, expected: dict):
    """One `error:` line per bad file (`expected`: file -> words of its problem), and no other error line."""
    lines = error_lines(proc)
    for name, message in expected.items():
        mine = [line for line in lines if f"{name}:" in line]
        assert len(mine) == 1 and message in mine[0], (name, message, proc.stderr[-3000:])
    assert len(lines) == len(expected), proc.stderr[-3000:]


def snapshot(folder: Path) -> dict:
    """Every file under `folder` with its bytes and modification time."""
    return {p.relative_to(folder): (p.stat().st_mtime_ns, p.read_bytes()) for p in folder.rglob("*") if p.is_file()}


def assert_untouched(folder: Path, before: dict):
    after = snapshot(folder)
    assert {k: after.get(k) for k in before} == before, "a file already there was changed"
    assert not [p for p in after if p.name.endswith(".tmp")], f"temporary files left: {sorted(after)}"


def stream_durations(path) -> dict:
    """{"video": s, "audio": [s, ...]} of an output file, from its streams' headers."""
    with av.open(str(path)) as c:
        seconds = [(s.type, float(s.duration * s.time_base)) for s in c.streams if s.duration]
    return {"video": next((d for t, d in seconds if t == "video"), None),
            "audio": [d for t, d in seconds if t == "audio"]}


def decoded_seconds(path) -> float:
    """How long a file's streams decode to, at most (a stream's last frame's end)."""
    end = 0.0
    with av.open(str(path)) as c:
        for frame in c.decode(*c.streams):
            if frame.time is not None:
                d = frame.samples / frame.sample_rate if isinstance(frame, av.AudioFrame) else 0.0
                end = max(end, frame.time + d)
    return end


def source_seconds(path) -> float:
    return media.probe(path)["duration"]


def new_mode() -> int:
    """The permissions the user's umask gives a new file."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


# ---- sample.py -------------------------------------------------------------------------------------------------

def test_v2a_over_the_corpus(tiny_ckpt, corpus, tmp_path):
    """Every valid video gets its soundtrack (its own video, the whole length, the original sound as track 2);
    each bad one its line, with the earlier outputs of the same names left as they were."""
    out = tmp_path / "out"
    out.mkdir()
    for stem in ("inf_v2a", "cutfs_v2a"):  # a previous run's outputs, of the names the bad files would write
        for ext in (".mp4", ".wav", "_mel.png"):
            (out / f"{stem}{ext}").write_bytes(b"earlier output " + stem.encode())
    before = snapshot(out)
    bad = {"nan.wav": "no video stream", "inf.mkv": "audio has 10 non-finite samples",
           "cutfs.mp4": "truncated (video data ends at", "cut.mp4": "not a readable media file",
           "empty.mp4": "empty file", "text.mp4": "not a readable media file",
           "random.mp4": "not a readable media file", "missing.mp4": "no such file"}
    valid = [corpus / name for name in VALID_VIDEOS]
    proc = run("sample.py", "--ckpt", tiny_ckpt, "--steps", "1", "--keep-audio", "--out", out,
               "--v2a", *valid, *(corpus / name for name in bad))
    assert proc.returncode == 1
    errors_by_file(proc, bad)
    assert f"{len(valid)} of {len(valid) + len(bad)} inputs done" in proc.stderr
    assert_untouched(out, before)
    for src in valid:
        stem = {"clip.mkv": "clip_mkv", "clip.avi": "clip_avi", "clip.webm": "clip_webm"}.get(src.name, src.stem)
        mp4 = out / f"{stem}_v2a.mp4"  # clip.mkv, clip.avi, clip.webm: one name each
        assert str(mp4) in proc.stdout and (out / f"{stem}_v2a_mel.png").is_file()
        got, want = stream_durations(mp4), source_seconds(src)
        assert len(got["audio"]) == 2, (src.name, got)  # generated, then the input's own (--keep-audio)
        assert abs(got["audio"][0] - want) < 0.1 and abs(got["video"] - want) < 0.15, (src.name, got, want)
        assert abs(decoded_seconds(mp4) - want) < 0.15, src.name
        assert (mp4.stat().st_mode & 0o777) == new_mode()  # the user's umask
    assert "re-encoded as H.264 (mp4 cannot hold vp8)" in proc.stdout


def test_a2v_and_continuation_over_the_corpus(tiny_ckpt, corpus, tmp_path):
    out = tmp_path / "a2v"
    valid = [corpus / "tone8k.wav", corpus / "surround.mp4", corpus / "late.mp4", corpus / "two_audio.mkv"]
    bad = {"nan.wav": "audio has 10 non-finite samples", "inf.mkv": "audio has 10 non-finite samples",
           "noaudio.mp4": "no audio stream", "cutfs.mp4": "truncated"}
    proc = run("sample.py", "--ckpt", tiny_ckpt, "--steps", "1", "--out", out, "--a2v", *valid,
               *(corpus / name for name in bad))
    assert proc.returncode == 1
    errors_by_file(proc, bad)
    for src in valid:
        got = media.read_av(out / f"{src.stem}_a2v.mp4", size=16)
        assert abs(got.duration - source_seconds(src)) < 0.15 and got.video.shape[1:] == (3, 16, 16), src.name
    assert not list(out.glob("nan_*")) and not list(out.glob("inf_*"))
    # sounding-video continuation of a path with spaces and non-ASCII characters, and of a VFR file
    odd, vfr = corpus / "sp ace/ünï cödé.mp4", corpus / "vfr.mp4"
    proc = run("sample.py", "--ckpt", tiny_ckpt, "--steps", "1", "--out", tmp_path / "cont", "--continue", odd, vfr,
               "--prefix", "0.5")
    assert proc.returncode == 0 and not error_lines(proc), proc.stderr[-2000:]
    for src in (odd, vfr):
        got = media.read_av(tmp_path / "cont" / f"{src.stem}_continue.mp4", size=16)
        assert abs(got.duration - source_seconds(src)) < 0.15
    # audio continuation reads the input's sound: a non-finite one is refused
    proc = run("sample.py", "--ckpt", tiny_ckpt, "--steps", "1", "--out", tmp_path / "cont", "--v2a",
               corpus / "inf.mkv", "--prefix", "0.5")
    one_error(proc, "inf.mkv:", "audio has 10 non-finite samples")


def test_a_diverged_checkpoint_replaces_no_earlier_output(tiny_ckpt, corpus, tmp_path):
    """Generated output that would carry NaN is refused before anything is written (group 1)."""
    meta, tensors = checkpoint.read(tiny_ckpt)
    nan = checkpoint.save(tmp_path / "nan.safetensors", {k: v.float().fill_(math.nan) if k.startswith("ema.") else v
                                                        for k, v in tensors.items()}, meta)
    out = tmp_path / "out"
    out.mkdir()
    for ext in (".mp4", ".wav", "_mel.png"):
        (out / f"portrait_v2a{ext}").write_bytes(b"a good earlier output")
    before = snapshot(out)
    proc = run("sample.py", "--ckpt", nan, "--steps", "1", "--out", out, "--v2a", corpus / "portrait.mp4")
    one_error(proc, "nan.safetensors:", "non-finite values")
    assert_untouched(out, before)


def test_sample_flags_and_paths(tiny_ckpt, corpus, tmp_path):
    """Every flag's range and the output folder, before the checkpoint or the inputs are read (groups 2, 3, 6,
    9, 10); each line names what is wrong."""
    plain = corpus / "portrait.mp4"
    meta, tensors = checkpoint.read(tiny_ckpt)
    lacking = checkpoint.save(tmp_path / "lacking.safetensors", tensors, {k: v for k, v in meta.items() if k != "clip"})
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    cases = [
        (["--v2a", plain, "--device", "foo"], ["--device 'foo'", "not a device"]),
        (["--v2a", plain, "--out", a_file], ["a_file:", "not a directory"]),
        (["--v2a", plain, "--prefix", "nan"], ["--prefix", "finite", "nan"]),
        (["--a2v", plain, "--prefix", "-1"], ["--prefix", "-1"]),
        (["--continue", plain, "--prefix", "inf"], ["--prefix", "inf"]),
        (["--v2a", plain, "--guidance", "-1"], ["guidance", "-1"]),
        (["--v2a", plain, "--guidance", "nan"], ["guidance", "nan"]),
        (["--joint", "-1"], ["--joint must be at least 1"]),
        (["--joint", "1", "--seconds", "inf"], ["--seconds", "inf"]),
        (["--v2a", tmp_path / "folder.mp4"], ["folder.mp4:", "no media files"]),
    ]
    if not torch.cuda.is_available():
        cases.append((["--v2a", plain, "--device", "cuda"], ["--device cuda", "no CUDA GPU"]))
    (tmp_path / "folder.mp4").mkdir()
    for args, words in cases:
        out = tmp_path / "out"
        proc = run("sample.py", "--ckpt", tiny_ckpt, "--steps", "1", "--out", out, *args)
        one_error(proc, *words)
        assert not out.exists()  # nothing made before the checks
    one_error(run("sample.py", "--ckpt", lacking, "--joint", "1", "--out", tmp_path / "o"), "lacking.safetensors:",
              "lacks", "'clip'")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only folder")
def test_read_only_out_is_found_before_work(tiny_ckpt, corpus, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    one_error(run("sample.py", "--ckpt", tiny_ckpt, "--v2a", corpus / "portrait.mp4", "--out", ro / "o"), "ro:",
              "not writable")


def test_read_only_out_check(tmp_path, monkeypatch):
    """The check itself, where the tests run as root (who may write anywhere)."""
    monkeypatch.setattr(os, "access", lambda path, mode: False)
    with pytest.raises(ValueError, match=r"not writable \(--out .*sub\)"):
        cli.check_writable_dir(tmp_path / "sub")


def test_two_inputs_of_one_name_get_two_outputs():
    import sample
    stems = sample.output_stems([Path("/x/a/clip.mp4"), Path("/x/b/clip.mp4"), Path("/x/a/clip.mkv"),
                                 Path("/clip.mp4"), Path("/x/a/clip.mp4")], "v2a")
    assert stems == ["a_clip_mp4_v2a", "b_clip_v2a", "clip_mkv_v2a", "clip_v2a", "a_clip_mp4_v2a2"]
    assert all("/" not in s for s in stems)  # never a path outside --out


# ---- data.py prepare and train.py on its shards ---------------------------------------------------------------

PREPARE = ["--frames", "6", "--size", "16"]  # windows of 6 + 2 · 4 frames, 1.4 s


def test_prepare_and_train_over_the_corpus(corpus, tmp_path):
    src = tmp_path / "videos"
    valid = ["portrait.mp4", "vfr.mp4", "mono8k.mp4", "clip.webm", "odd444.mp4", "surround.mp4",
             "sp ace/ünï cödé.mp4"]
    bad = {"inf.mkv": "audio has 10 non-finite samples", "cutfs.mp4": "truncated", "cut.mp4": "not a readable",
           "oneframe.mp4": "video shorter than one clip", "empty.mp4": "empty file", "text.mp4": "not a readable",
           "noaudio.mp4": "no audio stream"}
    for name in [*valid, *bad]:
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(corpus / name, src / name)
    shards = tmp_path / "shards"
    proc = run("data.py", "prepare", "--data", "folder", "--data-root", src, "--out", shards, *PREPARE)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    warnings = [line for line in proc.stderr.splitlines() if line.startswith("warning: skipped")]
    for name, reason in bad.items():
        assert len([w for w in warnings if f"{Path(name).name}:" in w and reason in w]) == 1, (name, proc.stderr)
    assert len(warnings) == len(bad) and f"prepared {len(valid)} clips in {len(valid)} new shards" in proc.stderr
    files = sorted(shards.rglob("*.safetensors"))
    assert len(files) == len(valid) and all((f.stat().st_mode & 0o777) == new_mode() for f in files)
    before = snapshot(shards)
    proc = run("data.py", "prepare", "--data", "folder", "--data-root", src, "--out", shards, *PREPARE)
    assert proc.returncode == 0 and f"{len(valid) + len(bad)} already done" in proc.stderr, proc.stderr[-2000:]
    assert_untouched(shards, before)
    assert snapshot(shards).keys() == before.keys()

    # train.py on shards without a validation split: previews are off, with one line, before training
    train_only = tmp_path / "train_only"
    (train_only / "train").mkdir(parents=True)
    shutil.copy(shards / "config.json", train_only)
    for f in files:
        shutil.copy(f, train_only / "train" / f.name)
    tiny = ["--preset", "tiny", *PREPARE, "--batch", "2", "--workers", "0", "--steps", "1", "--preview-every", "1"]
    proc = run("train.py", "--data", train_only, *tiny, "--out", tmp_path / "run")
    assert proc.returncode == 0 and not error_lines(proc), proc.stderr[-2000:]
    assert len([line for line in proc.stderr.splitlines() if line.startswith("warning: previews are off")]) == 1
    assert (tmp_path / "run" / "ckpt-00000001.safetensors").is_file()
    # a damaged shard: one line naming it, and no run folder made
    cut(files[0], train_only / "train" / files[0].name, 0.5)
    proc = run("train.py", "--data", train_only, *tiny, "--out", tmp_path / "run2")
    one_error(proc, files[0].name, "not a readable shard")
    assert not (tmp_path / "run2").exists()


def test_prepare_flags_and_paths(corpus, tmp_path):
    src = tmp_path / "videos"
    src.mkdir()
    shutil.copy(corpus / "portrait.mp4", src)
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    half = tmp_path / "half"
    half.mkdir()
    (half / "config.json").write_text('{"data": "fol')  # written by a run that was killed
    cases = [
        (["--frames", "0"], tmp_path / "s1", ["--frames", "0"]),
        (["--size", "0"], tmp_path / "s2", ["--size", "0"]),
        (["--margin", "-1"], tmp_path / "s3", ["--margin", "-1"]),
        ([], a_file, ["a_file:", "not a directory"]),
        ([], half, ["config.json:", "unreadable"]),
    ]
    for args, out, words in cases:
        before = snapshot(out) if out.is_dir() else None
        one_error(run("data.py", "prepare", "--data", "folder", "--data-root", src, "--out", out, *args), *words)
        assert (snapshot(out) == before) if before is not None else not out.is_dir()
    one_error(run("data.py", "prepare", "--data", "folder", "--out", tmp_path / "s4"),
              "--data folder needs --data-root")
    assert not (tmp_path / "s4").exists()  # no config.json left behind


def test_train_flags(tmp_path):
    base = ["--preset", "tiny", "--size", "16", "--frames", "6", "--workers", "0", "--preview-every", "0"]
    cases = [(["--batch", "0"], ["--batch", "0"]), (["--device", "foo"], ["--device 'foo'"]),
             (["--lr", "nan"], ["--lr", "nan"]), (["--size", "15"], ["15", "divisible"]),
             (["--snr-gamma", "-1"], ["--snr-gamma", "-1"])]
    for args, words in cases:
        out = tmp_path / "run"
        one_error(run("train.py", *base, *args, "--out", out), *words)
        assert not out.exists()  # no empty log.jsonl, nothing


# ---- metrics.py --------------------------------------------------------------------------------------------------

def test_metrics_over_the_corpus(corpus, tmp_path):
    gen, ref = tmp_path / "gen", tmp_path / "ref"
    gen.mkdir(), ref.mkdir()
    for name in ("portrait.mp4", "surround.mp4", "clip.webm"):
        shutil.copy(corpus / name, gen / f"{Path(name).stem}.mp4")
        shutil.copy(corpus / name, ref / f"{Path(name).stem}.mp4")
    report = tmp_path / "report.json"
    proc = run("metrics.py", "--gen", gen, "--ref", ref, "--metrics", "beat", "--device", "cpu", "--json", report)
    assert proc.returncode == 0 and not error_lines(proc) and json.loads(report.read_text())["results"]["n_gen"] == 3
    before = snapshot(tmp_path)
    for name, words in (("cutfs.mp4", ["truncated"]), ("inf.mkv", ["audio has 10 non-finite samples"]),
                        ("random.mp4", ["not a readable media file"])):
        bad = gen / "zz.mp4"  # a generated file and its reference, both bad
        shutil.copy(corpus / name, bad)
        shutil.copy(corpus / name, ref / "zz.mp4")
        proc = run("metrics.py", "--gen", gen, "--ref", ref, "--metrics", "beat", "--device", "cpu", "--json", report)
        one_error(proc, "zz.mp4:", *words)
        bad.unlink(), (ref / "zz.mp4").unlink()
    assert_untouched(tmp_path, before)  # the earlier report as it was
    for args, words in ((["--metrics", ""], ["--metrics", "none given"]), (["--frames", "-1"], ["--frames", "-1"]),
                        (["--size", "0"], ["--size", "0"]), (["--fps", "0"], ["--fps", "0"]),
                        (["--device", "foo"], ["--device 'foo'"]), (["--json", tmp_path], ["a directory", "--json"])):
        one_error(run("metrics.py", "--gen", gen, "--ref", ref, "--metrics", "beat", *args), *words)
    assert_untouched(tmp_path, before)


# ---- 5.1 sound (group 12) ------------------------------------------------------------------------------------------

def test_surround_is_downmixed_as_itu_bs775(tmp_path):
    """One channel of a 5.1 file at a time: the mono mix is (L + R)/2 + 0.7071·C + 0.7071·(Ls + Rs)/2, the
    ITU-R BS.775 stereo downmix averaged, and the LFE is left out (a plain mean would give every channel 1/6)."""
    rate, gains = 16000, {"FL": 0.5, "FR": 0.5, "FC": 0.7071, "LFE": 0.0, "BL": 0.7071 / 2, "BR": 0.7071 / 2}
    for i, (name, gain) in enumerate(gains.items()):
        wav = np.zeros((6, rate), np.float32)
        wav[i] = tone(1.0, rate)[0]
        f = write_media(tmp_path / f"{name}.wav", video=False, acodec="pcm_f32le", channels=6, wav=wav)
        with av.open(str(f)) as c:
            assert c.streams.audio[0].layout.channels[i].name == name
        mono = media.read_av(f, need_video=False).audio
        assert torch.allclose(mono, gain * torch.from_numpy(wav[i]), atol=1e-5), name
