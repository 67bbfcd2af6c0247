"""melspec.py against librosa, media.py in and out with bad input, data.py's synthetic events and shards."""
import librosa
import numpy as np
import pytest
import torch

import data
import media
import melspec
from conftest import FIXTURES, shared_file

CLIP = data.ClipConfig()


def test_clip_config_numbers():
    assert (CLIP.samples, CLIP.mel_steps, CLIP.margin_samples, CLIP.margin_mel) == (28800, 112, 6400, 25)


def test_mel_frame_count_and_librosa_equality():
    wav = np.random.default_rng(0).standard_normal(28800).astype(np.float32) * 0.3
    mel = melspec.mel_magnitude(torch.from_numpy(wav)[None])[0].numpy()
    assert mel.shape == (80, 112)
    padded = np.pad(wav, (melspec.N_FFT - melspec.HOP) // 2, mode="reflect")
    ref = librosa.feature.melspectrogram(y=padded, sr=16000, n_fft=512, hop_length=256, win_length=512,
                                         window="hann", center=False, power=1.0, n_mels=80, fmin=0.0, fmax=8000.0)
    interior = slice(1, -1)
    rel = np.abs(mel[:, interior] - ref[:, interior]) / np.abs(ref[:, interior]).max()
    assert rel.max() < 1e-4


def test_normalised_mel_range_and_batching():
    t = torch.arange(2 * 28800) / 16000
    loud = torch.sin(2 * torch.pi * 440 * t).reshape(2, 28800)  # (B, L), full-scale sines
    mel = melspec.wav_to_mel(torch.cat([loud, torch.zeros(1, 28800)]))
    assert mel.shape == (3, 80, 112)
    assert mel.max() <= 1 and mel.min() >= -1 and mel[2].eq(-1).all()
    assert torch.allclose(mel[:1], melspec.wav_to_mel(loud[:1]))  # batching changes nothing


def test_griffin_lim_inverse_reproduces_the_mel():
    rng = np.random.default_rng(0)
    t = np.arange(112 * 256) / 16000
    wav = torch.from_numpy((0.5 * np.sin(2 * np.pi * 440 * t) + 0.05 * rng.standard_normal(t.size)).astype(np.float32))
    mel = melspec.wav_to_mel(wav[None])
    back = melspec.mel_to_wav(mel, n_iter=32, generator=torch.Generator().manual_seed(0))
    assert back.shape == (1, 112 * 256)
    err = (melspec.wav_to_mel(back) - mel)[..., 2:-2].abs().mean()
    rough = (melspec.wav_to_mel(melspec.mel_to_wav(mel, n_iter=0, generator=torch.Generator().manual_seed(0))) - mel)
    assert err < 0.03 and err < rough[..., 2:-2].abs().mean() / 2  # the iterations do the work


def test_mp4_round_trip_keeps_timing(tmp_path):
    frames = 20
    video = torch.zeros(frames, 3, 64, 64, dtype=torch.uint8)
    audio = torch.zeros(frames * 1600)
    for f in (3, 12):
        video[f] = 255
        audio[f * 1600:f * 1600 + 64] = 0.9  # a click at the frame's time
    path = media.write_mp4(tmp_path / "rt.mp4", video, audio)
    back = media.read_av(path, size=64)
    assert back.video.shape == (frames, 3, 64, 64) and back.audio.shape == (frames * 1600,)
    brightest = back.video.float().mean((1, 2, 3)).topk(2).indices.sort().values.tolist()
    assert brightest == [3, 12]
    env = back.audio.abs().numpy()
    for f in (3, 12):
        lo = (f - 2) * 1600
        click = (lo + np.argmax(env[lo:lo + 4 * 1600])) / 16000
        assert abs(click - f / 10) < 0.1


def test_decode_bigbuckbunny_fixture():
    path = shared_file(FIXTURES / "bigbuckbunny.mp4")
    full = media.read_av(path, size=64)
    assert abs(full.duration - 5.312) < 1e-3
    assert full.video.shape == (53, 3, 64, 64) and full.video.dtype == torch.uint8  # 5.3 s at 10 fps
    assert abs(full.audio.numel() - 5.312 * 16000) <= 16 and full.audio.ndim == 1  # mono 16 kHz
    assert full.audio.abs().max() > 0.01 and full.video.float().std() > 10
    clip = media.read_av(path, start=1.0, frames=18, size=128)
    assert clip.video.shape == (18, 3, 128, 128) and clip.audio.shape == (28800,)
    # 25 fps -> 10 fps at the nearest timestamps: frame k of the clip is source frame round(2.5·(10 + k)).
    assert torch.equal(clip.video[0], media.read_av(path, start=1.0, frames=1, size=128).video[0])
    # Padding past the end: exact lengths, zeros for audio.
    tail = media.read_av(path, start=5.0, frames=10, size=64)
    assert tail.video.shape == (10, 3, 64, 64) and tail.audio[8000:].abs().max() == 0


def test_read_av_errors_name_the_file(tmp_path):
    with pytest.raises(media.BadInput, match="nope.mp4: no such file"):
        media.read_av(tmp_path / "nope.mp4")
    bikes = shared_file(FIXTURES / "bikes.mp4")
    with pytest.raises(media.BadInput, match="bikes.mp4: no audio stream"):
        media.read_av(bikes)
    assert media.read_av(bikes, frames=5, need_audio=False).video.shape == (5, 3, 64, 64)


def _faststart_copy(src, dst):
    """Remux with the index up front, so that a truncated copy still opens and fails while decoding."""
    import av
    with av.open(str(src)) as i, av.open(str(dst), "w", options={"movflags": "faststart"}) as o:
        streams = {s.index: o.add_stream_from_template(s) for s in i.streams}
        for pkt in i.demux():
            if pkt.dts is not None:
                pkt.stream = streams[pkt.stream.index]
                o.mux(pkt)


def test_prepare_skips_and_counts_bad_files(tmp_path, capsys):
    bunny = shared_file(FIXTURES / "bigbuckbunny.mp4")
    root = tmp_path / "videos"
    root.mkdir()
    (root / "good.mp4").write_bytes(bunny.read_bytes())
    (root / "bikes.mp4").write_bytes(shared_file(FIXTURES / "bikes.mp4").read_bytes())
    (root / "zero.mp4").write_bytes(b"")
    (root / "text.mp4").write_text("this is not a video\n")
    (root / "cut.mp4").write_bytes(bunny.read_bytes()[:400_000])
    _faststart_copy(bunny, tmp_path / "fs.mp4")
    (root / "cutfs.mp4").write_bytes((tmp_path / "fs.mp4").read_bytes()[:500_000])
    t = torch.linspace(0, 1, 16000)
    media.write_mp4(root / "short.mp4", torch.zeros(10, 3, 64, 64, dtype=torch.uint8), torch.sin(400 * t))
    # Every file lands in one split, so that the count is simple to check.
    counts = data.prepare("folder", tmp_path / "shards", clip=CLIP, root=root, progress=False)
    err = capsys.readouterr().err
    assert counts["clips"] == 2 and counts["shards"] == 1 and counts["skipped"] == 6
    for name, reason in [("bikes", "no audio stream"), ("zero", "empty file"), ("text", "not a readable"),
                         ("cut", "not a readable"), ("cutfs", "truncated"), ("short", "shorter than one clip")]:
        line = next(x for x in err.splitlines() if f"{name}.mp4" in x)
        assert line.startswith("warning: skipped") and reason in line
    assert "skipped 6 files" in err
    split = data.folder_split("good.mp4")
    item = data.ShardDataset(tmp_path / "shards", split)[1]
    assert item["video"].shape == (26, 3, 64, 64) and item["audio"].shape == (41600,)
    assert "mel" not in item  # training computes the mel from the audio; shards no longer store it


def test_synthetic_is_deterministic_and_event_times_are_heard():
    ds = data.SyntheticDataset(CLIP, "val", num_clips=40)
    a, b = ds[5], data.SyntheticDataset(CLIP, "val", num_clips=40)[5]
    assert all(torch.equal(a[k], b[k]) for k in ("video", "audio"))
    assert not torch.equal(ds[5]["audio"], data.SyntheticDataset(CLIP, "train", 40)[5]["audio"])
    hit = total = 0
    for i in range(len(ds)):
        item = ds[i]
        positive = item["audio"][CLIP.margin_samples:CLIP.margin_samples + CLIP.samples].numpy()
        onsets = librosa.onset.onset_detect(y=positive, sr=16000, hop_length=256, units="time")
        events = item["events"][~item["events"].isnan()].numpy()
        assert len(events) > 0
        total += len(events)
        hit += sum(np.abs(onsets - e).min(initial=1e9) <= 1 / CLIP.fps for e in events)
    assert hit / total >= 0.9, f"only {hit}/{total} events heard within one frame"


def test_synthetic_visual_events_are_at_the_event_frames():
    """Frame differences peak on the frames of the events (flashes and pose changes)."""
    ds = data.SyntheticDataset(CLIP, "val", num_clips=10)
    for i in range(10):
        item = ds[i]
        v = item["video"][CLIP.margin:CLIP.margin + CLIP.frames].float()  # (F, 3, H, W)
        motion = (v[1:] - v[:-1]).abs().mean((1, 2, 3))  # (F - 1,): change into frame k + 1
        events = item["events"][~item["events"].isnan()]
        frames = set(torch.ceil(events * CLIP.fps - 1e-6).long().tolist())  # first frame at or after
        top = set((motion.topk(min(len(frames), 3)).indices + 1).tolist())
        assert len(top & frames) >= len(top) - 1, (i, sorted(top), sorted(frames))


def test_shards_resume_after_interruption(tmp_path):
    clip = data.ClipConfig(frames=6, size=16, margin=2)
    calls = []

    def flaky(frames):  # stands in for the VAE encoder; dies during the second shard
        calls.append(1)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return frames[:, :1].float()

    with pytest.raises(KeyboardInterrupt):
        data.prepare("synthetic", tmp_path / "a", clip=clip, num_clips={"train": 12}, shard_size=4,
                     encoder=flaky, progress=False)
    assert [p.name for p in sorted((tmp_path / "a" / "train").iterdir())] == ["shard-00000.safetensors"]
    counts = data.prepare("synthetic", tmp_path / "a", clip=clip, num_clips={"train": 12}, shard_size=4,
                          encoder=flaky, progress=False)
    assert counts["resumed"] == 1 and counts["shards"] == 2
    data.prepare("synthetic", tmp_path / "b", clip=clip, num_clips={"train": 12}, shard_size=4,
                 encoder=lambda f: f[:, :1].float(), progress=False)
    resumed, fresh = data.ShardDataset(tmp_path / "a"), data.ShardDataset(tmp_path / "b")
    assert len(resumed) == len(fresh) == 12
    for i in range(12):
        assert all(torch.equal(resumed[i][k], fresh[i][k]) for k in ("video", "audio", "latents"))


def test_prepared_shards_refuse_another_clip_config(tmp_path):
    clip = data.ClipConfig(frames=6, size=16, margin=2)
    data.prepare("synthetic", tmp_path, clip=clip, num_clips={"train": 2}, progress=False)
    assert len(data.build_dataset(str(tmp_path), "train", clip)) == 2
    with pytest.raises(media.BadInput, match="shards were prepared for"):
        data.build_dataset(str(tmp_path), "train", data.ClipConfig(frames=6, size=32, margin=2))


def test_shards_with_an_old_mel_key_still_read(tmp_path):
    """Shards written before the mel was dropped from them carry a "mel" tensor, which is ignored."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file
    clip = data.ClipConfig(frames=6, size=16, margin=2)
    data.prepare("synthetic", tmp_path, clip=clip, num_clips={"train": 2}, progress=False)
    new = data.ShardDataset(tmp_path)[1]
    shard = next((tmp_path / "train").glob("*.safetensors"))
    with safe_open(str(shard), "pt") as h:
        metadata = h.metadata()
    tensors = load_file(str(shard))
    tensors["mel"] = melspec.wav_to_mel(tensors["audio"].float() / 32767)  # (2, M, Lw // HOP)
    save_file(tensors, str(shard), metadata=metadata)
    old = data.ShardDataset(tmp_path)[1]
    assert old.keys() == new.keys()
    for k in ("video", "audio", "events", "tempo"):
        torch.testing.assert_close(old[k], new[k], rtol=0, atol=0, equal_nan=True)
