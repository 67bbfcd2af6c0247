"""metrics.py, features.py and alignment.py against references: closed forms, scipy's sqrtm, brute-force
MMD and matching, the TF VGGish front end (numpy, below), the I3D reference outputs in ../shared, and exact
event times."""
import json
import math
import shutil

import librosa
import numpy as np
import pytest
import scipy.linalg
import scipy.optimize
import torch
import torch.nn as nn
import torch.nn.functional as F

import alignment
import checkpoint
import features
import metrics as M
from conftest import FIXTURES, I3D_DIR, shared_file

SR = 16000


@pytest.fixture(scope="module")
def vggish():
    """A randomly initialised VGGish (seeded): the offline stand-in for the released weights."""
    torch.manual_seed(0)
    return features.VGGish().eval()


@pytest.fixture(scope="module")
def i3d():
    return features.load_i3d(shared_file(I3D_DIR / features.I3D_WEIGHTS))


# ----------------------------------------------------------------------------------------------------
# Fréchet distance
def _random_spd(rng, d, scale=1.0):
    a = rng.standard_normal((d, d))
    return scale * (a @ a.T / d + 0.1 * np.eye(d))


def test_frechet_closed_form_commuting_gaussians():
    # Same eigenvectors: Tr((Σ₁Σ₂)^½) = Σ √(a_i b_i), so FD = ‖Δμ‖² + Σ (√a_i − √b_i)².
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.standard_normal((6, 6)))
    a, b = rng.uniform(0.1, 3, 6), rng.uniform(0.1, 3, 6)
    mu1, mu2 = rng.standard_normal(6), rng.standard_normal(6)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    got = M.frechet_distance(mu1, (q * a) @ q.T, mu2, (q * b) @ q.T)
    assert got == pytest.approx(expected, rel=1e-10)
    assert M.frechet_distance([0.0], [[4.0]], [3.0], [[1.0]]) == pytest.approx(9 + 1)  # 1-D: Δμ² + (σ₁ − σ₂)²


def test_frechet_matches_scipy_sqrtm():
    rng = np.random.default_rng(1)
    for d in (2, 16, 64):
        s1, s2 = _random_spd(rng, d), _random_spd(rng, d, 3.0)
        mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
        covmean = scipy.linalg.sqrtm(s1 @ s2).real
        expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean)
        assert M.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-9)
        assert M.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(M.frechet_distance(mu2, s2, mu1, s1), rel=1e-9)
    assert np.allclose(M.sqrtm_psd(s1), scipy.linalg.sqrtm(s1).real, atol=1e-10)


def test_frechet_from_samples_approaches_closed_form():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((200_000, 3)) * [1.0, 2.0, 0.5]
    y = rng.standard_normal((200_000, 3)) * [2.0, 1.0, 0.5] + [1.0, 0.0, 0.0]
    expected = 1.0 + (1 - 2) ** 2 + (2 - 1) ** 2  # ‖Δμ‖² + Σ(σ₁ − σ₂)²
    assert M.frechet_distance_features(x, y) == pytest.approx(expected, abs=0.03)


def test_frechet_rank_deficient_self_distance_is_zero():
    # Fewer samples than dimensions, as with a handful of clips in 400-d: FD(x, x) must still be ~0.
    rng = np.random.default_rng(3)
    x = rng.standard_normal((5, 400)) * 10
    mu, sigma = M.feature_stats(x)
    assert abs(M.frechet_distance_features(x, x)) < 1e-9 * np.trace(sigma)
    assert M.frechet_distance_features(x, x + 1.0) == pytest.approx(400.0, rel=1e-9)  # a pure mean shift


# ----------------------------------------------------------------------------------------------------
# KVD
def test_polynomial_mmd2_matches_brute_force():
    rng = np.random.default_rng(4)
    x, y = rng.standard_normal((7, 5)), rng.standard_normal((9, 5)) + 0.3
    k = lambda a, b: (a @ b / 5 + 1) ** 3  # noqa: E731
    xx = sum(k(x[i], x[j]) for i in range(7) for j in range(7) if i != j) / (7 * 6)
    yy = sum(k(y[i], y[j]) for i in range(9) for j in range(9) if i != j) / (9 * 8)
    xy = sum(k(x[i], y[j]) for i in range(7) for j in range(9)) / (7 * 9)
    assert M.polynomial_mmd2(x, y) == pytest.approx(xx + yy - 2 * xy, rel=1e-12)


def test_kvd_near_zero_for_one_distribution_positive_for_shifted():
    rng = np.random.default_rng(5)
    x, y = rng.standard_normal((300, 16)), rng.standard_normal((300, 16))
    cfg = M.KVDConfig(n_subsets=20, subset_size=200, seed=0)
    same, same_std = M.kernel_distance(x, y, cfg)
    shifted, _ = M.kernel_distance(x, y + 0.5, cfg)
    assert abs(same) < 3 * same_std and shifted > 0.5 > 20 * abs(same)
    assert M.kernel_distance(x, y, cfg) == (same, same_std)  # seeded subsets
    mean, std = M.kernel_distance(x[:10], y[:10], M.KVDConfig(n_subsets=3))  # subset size capped to N = 10
    assert std == pytest.approx(0.0, abs=1e-15) and mean == pytest.approx(M.polynomial_mmd2(x[:10], y[:10]))


# ----------------------------------------------------------------------------------------------------
# Hit rate and onset matching: exact, including the tolerance edge
def test_hit_rate_exact_and_inclusive_edges():
    ref = [1.0, 2.0, 3.0, 4.0]
    est = [1.1, 1.9, 3.3]  # 1.1 − 1.0 = 0.10000000000000009 in binary: an edge hit only thanks to the slack
    assert alignment.hit_rate(ref, est, 0.1) == 0.5
    assert alignment.hit_rate(ref, est, 0.5) == 0.75
    assert alignment.hit_rate(ref, [1.0 + 0.1 + 1 / SR, 2.0 - 0.1], 0.1) == 0.25  # one sample past the edge: a miss
    grid = np.arange(0, 50) * 0.3 + 0.1  # round-off-laden reference times, 0.3 s apart
    for sign in (1, -1):
        assert alignment.hit_rate(grid, grid + sign * 0.1, 0.1) == 1.0  # exactly at the edge: hits
        assert alignment.hit_rate(grid, grid + sign * (0.1 + 1 / SR), 0.1) == 0.0  # a sample beyond: misses
    assert alignment.hit_rate([1.0, 1.05], [1.02], 0.1) == 1.0  # one estimate may serve several references
    assert alignment.hit_rate([1.0], [], 0.1) == 0.0 and math.isnan(alignment.hit_rate([], [1.0], 0.1))
    # NaN padding (synthetic.py) is ignored
    assert alignment.hit_rate(torch.tensor([1.0, 3.0, math.nan]), [1.05], 0.1) == 0.5


def test_onset_prf_exact_and_one_to_one():
    p = alignment.onset_prf([1.0, 1.05], [1.02], 0.1)  # one-to-one: the second reference stays unmatched
    assert (p.precision, p.recall, p.f1, p.matched) == (1.0, 0.5, pytest.approx(2 / 3), 1)
    p = alignment.onset_prf([0.5, 1.0, 2.0], [0.4, 1.1, 1.5, 2.6], 0.1)  # 0.4 and 1.1 on the edge, 1.5/2.6 spurious
    assert (p.matched, p.precision, p.recall) == (2, 0.5, 2 / 3)
    assert math.isnan(alignment.onset_prf([], [], 0.1).f1) and alignment.onset_prf([1.0], [], 0.1).recall == 0.0


def test_match_count_is_a_maximum_matching():
    rng = np.random.default_rng(6)
    for _ in range(200):
        ref, est = (np.round(rng.uniform(0, 3, rng.integers(0, 12)), 2) for _ in range(2))  # 10 ms grid: ties
        tol = rng.choice([0.05, 0.1, 0.3])
        ok = np.abs(ref[:, None] - est[None, :]) <= tol + alignment.EDGE_SLACK  # (R, E)
        best = 0
        if ok.size:
            r, c = scipy.optimize.linear_sum_assignment(-ok.astype(float))
            best = int(ok[r, c].sum())
        assert alignment.match_count(ref, est, tol) == best


# ----------------------------------------------------------------------------------------------------
# Detectors on constructed signals
def test_beat_hit_rate_on_click_tracks():
    beats = np.arange(0.25, 6.0, 0.5)  # 120 bpm
    ref = librosa.clicks(times=beats, sr=SR, length=6 * SR)
    half_beat_late = librosa.clicks(times=beats + 0.25, sr=SR, length=6 * SR)
    ref_beats = alignment.beat_times(ref)
    assert len(ref_beats) >= 8
    assert alignment.hit_rate(ref_beats, alignment.beat_times(ref), 0.1) == 1.0
    late = alignment.beat_times(half_beat_late)
    assert alignment.hit_rate(ref_beats, late, 0.1) == 0.0  # 250 ms off: outside ±100 ms ...
    assert alignment.hit_rate(ref_beats, late, 0.5) == 1.0  # ... inside ±500 ms, why the paper distrusts it


def test_audio_onsets_on_click_track():
    events = np.array([0.25, 0.7, 1.1, 1.9, 2.3, 3.05])
    wav = librosa.clicks(times=events, sr=SR, length=int(3.6 * SR), click_duration=0.02)
    p = alignment.onset_prf(events, alignment.audio_onsets(wav), 0.1)
    assert (p.precision, p.recall) == (1.0, 1.0)
    p = alignment.onset_prf(np.append(events, 3.4), alignment.audio_onsets(wav), 0.1)  # a stored event with no sound
    assert (p.precision, p.recall) == (1.0, 6 / 7)
    wav48 = librosa.clicks(times=events, sr=48000, length=int(3.6 * 48000), click_duration=0.02)
    assert alignment.onset_prf(events, alignment.audio_onsets(wav48, 48000), 0.1).f1 == 1.0  # resampled to 16 kHz first


def test_visual_onsets_on_jumping_square():
    g = torch.Generator().manual_seed(0)
    frames, fps, jumps = 30, 10, [6, 14, 23]
    base = torch.randint(0, 200, (3, 32, 32), generator=g)
    video = base.repeat(frames, 1, 1, 1) + torch.randint(0, 3, (frames, 3, 32, 32), generator=g)  # sensor noise
    pos = 0
    for f in range(frames):
        pos += 8 * (f in jumps)
        video[f, :, 4:12, pos:pos + 8] = 255  # the square moves only at the jump frames
    times = alignment.visual_onsets(video.to(torch.uint8), fps)
    assert np.allclose(times, np.array(jumps) / fps)
    assert alignment.onset_prf(np.array(jumps) / fps, times, 0.1).f1 == 1.0


# ----------------------------------------------------------------------------------------------------
# VGGish and FAD
def _tf_log_mel(wav):
    """The TF reference, vggish_input.waveform_to_examples' log-mel (mel_features.py), in numpy."""
    win, hop, n_fft = 400, 160, 512
    n = 1 + (len(wav) - win) // hop
    frames = np.stack([wav[i * hop:i * hop + win] for i in range(n)])
    window = 0.5 - 0.5 * np.cos(2 * np.pi / win * np.arange(win))  # periodic Hann
    spec = np.abs(np.fft.rfft(frames * window, n_fft))
    hz2mel = lambda f: 1127.0 * np.log(1.0 + f / 700.0)  # noqa: E731
    bins = hz2mel(np.linspace(0.0, 8000.0, 257))
    edges = np.linspace(hz2mel(125.0), hz2mel(7500.0), 66)
    mat = np.empty((257, 64))
    for i in range(64):
        lo, c, hi = edges[i:i + 3]
        mat[:, i] = np.maximum(0.0, np.minimum((bins - lo) / (c - lo), (hi - bins) / (hi - c)))
    mat[0, :] = 0.0
    return np.log(spec @ mat + 0.01)


def test_vggish_log_mel_matches_tf_reference():
    rng = np.random.default_rng(7)
    t = np.arange(int(1.3 * SR)) / SR
    wav = 0.3 * np.sin(2 * np.pi * 1000 * t) + 0.05 * rng.standard_normal(t.size)
    ours = features.vggish_log_mel(torch.from_numpy(wav)).numpy()
    assert ours.shape == (1 + (t.size - 400) // 160, 64)
    assert np.allclose(ours, _tf_log_mel(wav), atol=1e-9)
    loudest = ours.mean(0).argmax()  # the band whose centre is nearest 1 kHz
    edges_mel = np.linspace(1127 * np.log(1 + 125 / 700), 1127 * np.log(1 + 7500 / 700), 66)
    centres = 700 * (np.exp(edges_mel[1:-1] / 1127) - 1)  # Hz
    assert loudest == np.abs(centres - 1000).argmin()


def test_vggish_architecture_and_frames(vggish):
    v = vggish
    keys = {f"features.{i}.{p}" for i in (0, 3, 6, 8, 11, 13) for p in ("weight", "bias")} | {
        f"embeddings.{i}.{p}" for i in (0, 2, 4) for p in ("weight", "bias")}
    assert set(v.state_dict()) == keys  # torchvggish's layout
    assert sum(p.numel() for p in v.parameters()) == 72_141_184  # VGGish, Hershey et al. 2017
    assert (v.sample_rate, v.window, v.hop, v.dim) == (16000, pytest.approx(0.96), 0.96, 128)
    assert v.embed(np.zeros(int(3.6 * SR))).shape == (3, 128)  # 0.96 s windows, 0.96 s hop
    assert v.embed(np.zeros(SR // 2)).shape == (1, 128)  # shorter than a window: zero-padded to one
    v.hop = 0.48
    assert v.embed(np.zeros(int(3.6 * SR))).shape == (6, 128)  # overlapping windows
    v.hop = v.cfg.hop


def _tones(rng, freq, n, seconds=3.6, sr=SR):
    t = np.arange(int(seconds * sr)) / sr
    return [0.5 * np.sin(2 * np.pi * freq * t + rng.uniform(0, 2 * np.pi)) + 0.01 * rng.standard_normal(t.size)
            for _ in range(n)]


def test_fad_with_random_vggish_on_known_signals(vggish):
    v = vggish
    rng = np.random.default_rng(8)
    ref = [v.embed(w) for w in _tones(rng, 440, 4)]  # 4 clips × 3 frames per set
    same = [v.embed(w) for w in _tones(rng, 440, 4)]
    octave = [v.embed(w) for w in _tones(rng, 880, 4)]
    noise = [v.embed(0.3 * rng.standard_normal(int(3.6 * SR))) for _ in range(4)]
    assert abs(M.fad(ref, ref)) < 1e-9 * M.fad(noise, ref)
    assert 0 < M.fad(same, ref) < M.fad(octave, ref) < M.fad(noise, ref)
    per = M.fad_per_sample(same[:2] + noise[:2], ref)
    assert max(per[:2]) < min(per[2:])
    assert math.isnan(M.fad_per_sample([v.embed(np.zeros(SR))], ref)[0])  # one frame: no covariance


def test_embed_at_resamples_to_the_embedders_rate(vggish):
    v = vggish
    t16, t48 = np.arange(int(2 * SR)) / SR, np.arange(2 * 48000) / 48000
    a = v.embed(0.5 * np.sin(2 * np.pi * 440 * t16))
    b = v.embed_at(torch.from_numpy(0.5 * np.sin(2 * np.pi * 440 * t48)).float(), 48000)
    assert a.shape == b.shape and torch.allclose(a, b, atol=1e-3 * a.abs().max().item())


def test_vggish_weights_strict_load_and_errors(vggish, tmp_path, monkeypatch):
    path = tmp_path / "vggish-10086976.pth"
    torch.save(vggish.state_dict(), path)
    loaded = features.load_vggish(path)
    assert torch.equal(loaded.embeddings[4].weight, torch.load(path)["embeddings.4.weight"])
    with pytest.raises(checkpoint.CheckpointError,
                       match=r"missing\.pth: VGGish weights not found .*vggish-10086976\.pth"):
        features.load_vggish(tmp_path / "missing.pth")
    torch.save({"features.0.weight": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(checkpoint.CheckpointError,
                       match=r"bad\.pth: weights do not fit the torchvggish VGGish network \(17 missing, "
                             r"e\.g\. \['embeddings\.0\.bias', 'embeddings\.0\.weight'\]; 0 unexpected"):
        features.load_vggish(tmp_path / "bad.pth")
    (tmp_path / "text.pth").write_text("not a checkpoint")
    with pytest.raises(checkpoint.CheckpointError, match="text.pth: not a torchvggish VGGish state dict"):
        features.load_vggish(tmp_path / "text.pth")

    def offline(*args, **kwargs):
        raise OSError("no network")
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(checkpoint.CheckpointError) as e:
        features.load_vggish(None)
    assert features.VGGISH_URL in str(e.value) and "--vggish PATH" in str(e.value) and "\n" not in str(e.value)


# ----------------------------------------------------------------------------------------------------
# I3D
def test_same_pad_follows_tf_rule():
    for size in (7, 8, 9, 16, 31, 224):
        for kernel, stride in ((7, 2), (3, 1), (3, 2), (2, 2), (1, 1)):
            x = torch.zeros(1, 1, size, size, 1)
            y = features.same_pad(x, (kernel, kernel, 1), (stride, stride, 1))
            out = F.max_pool3d(y, (kernel, kernel, 1), (stride, stride, 1))
            assert out.shape[2:4] == (math.ceil(size / stride),) * 2
            before = (y.shape[2] - size) // 2
            assert torch.equal(y[0, 0, before:before + size, before:before + size], x[0, 0])  # extra pad at the end


def test_i3d_preprocess_range_and_layout():
    video = torch.zeros(2, 9, 3, 16, 16, dtype=torch.uint8)
    video[1] = 255
    x = features.i3d_preprocess(video)
    assert x.shape == (2, 3, 9, 224, 224)
    assert torch.allclose(x[0], torch.tensor(-1.0)) and torch.allclose(x[1], torch.tensor(1.0))


def _reference_input():
    """The input SOURCE.txt defines for reference_outputs.safetensors."""
    b, c, t, h, w = torch.meshgrid(torch.arange(2.), torch.arange(3.), torch.arange(16.), torch.arange(224.),
                                   torch.arange(224.), indexing="ij")
    return torch.sin(0.05 * h * (c + 1) + 0.3 * t + b) * torch.cos(0.07 * w + 0.2 * t)  # (2, 3, 16, 224, 224)


def test_i3d_reproduces_reference_outputs(i3d):
    from safetensors.torch import load_file
    expected = load_file(str(shared_file(I3D_DIR / "reference_outputs.safetensors")))
    with torch.no_grad():
        got = i3d.features(_reference_input())
    assert torch.allclose(got["logits"], expected["logits_mean_over_time"], atol=1e-3, rtol=0)
    assert torch.allclose(got["pool"], expected["mixed5c_avgpool"], atol=1e-3, rtol=0)


def test_i3d_load_errors(tmp_path):
    with pytest.raises(checkpoint.CheckpointError, match=r"nope\.pt: I3D weights not found .*--i3d PATH"):
        features.load_i3d(tmp_path / "nope.pt")
    state = features.I3D().state_dict()
    state.pop("logits.conv3d.bias")
    torch.save(state, tmp_path / "partial.pt")
    with pytest.raises(checkpoint.CheckpointError,
                       match=r"partial\.pt: weights do not fit the I3D Kinetics-400 network "
                             r"\(1 missing, e\.g\. \['logits\.conv3d\.bias'\]; 0 unexpected"):
        features.load_i3d(tmp_path / "partial.pt")


def _blur(video, sigma):
    """Separable Gaussian blur of uint8 (..., 3, H, W) frames."""
    r = int(3 * sigma)
    k = torch.exp(-torch.arange(-r, r + 1.0) ** 2 / (2 * sigma ** 2))
    k = k / k.sum()
    x = F.pad(video.flatten(0, -3).float()[:, None], (r, r, r, r), mode="replicate")  # (n, 1, H + 2r, W + 2r)
    x = F.conv2d(F.conv2d(x, k.view(1, 1, 1, -1)), k.view(1, 1, -1, 1))  # (n, 1, H, W)
    return x.round().clamp(0, 255).to(torch.uint8).view(video.shape)


def test_fvd_self_zero_and_rises_with_blur(i3d):
    media = pytest.importorskip("media")
    clip = shared_file(FIXTURES / "bigbuckbunny.mp4")
    video = media.read_av(clip, frames=3 * features.I3D_MIN_FRAMES, size=64, need_audio=False).video  # (27, 3, 64, 64)
    ref = video.unflatten(0, (3, features.I3D_MIN_FRAMES))  # (3, 9, 3, 64, 64): three short clips
    sigmas = (1.0, 2.0, 4.0)
    feats = features.i3d_logits(i3d, torch.cat([ref] + [_blur(ref, s) for s in sigmas])).numpy()  # one batch (12, 400)
    ref_feats = feats[:3]
    fvd = [M.frechet_distance_features(feats[3 * k:3 * k + 3], ref_feats) for k in range(1 + len(sigmas))]
    assert abs(fvd[0]) < 1e-6 * fvd[1]
    assert fvd[0] < fvd[1] < fvd[2] < fvd[3], fvd


# ----------------------------------------------------------------------------------------------------
# The command line
def test_pair_files_by_name(tmp_path):
    ref = [tmp_path / "r" / n for n in ("a.mp4", "a_b.mp4", "c.mp4")]
    gen = [tmp_path / "g" / n for n in ("a_0.mp4", "a_b.mp4", "a_b_3.mp4", "c.mp4", "c_x.mp4", "d_1.mp4")]
    got = {g.name: (r.name if r else None) for g, r in M.pair_files(gen, ref).items()}
    assert got == {"a_0.mp4": "a.mp4", "a_b.mp4": "a_b.mp4", "a_b_3.mp4": "a_b.mp4", "c.mp4": "c.mp4",
                   "c_x.mp4": None, "d_1.mp4": None}


class _StubI3D(nn.Module):
    """Stands in for I3D in the command-line test: per-channel, per-frame means as the feature."""

    def __init__(self):
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(1))

    def features(self, x):
        return {"logits": x.mean(dim=(3, 4)).flatten(1)}  # (B, 3·F)


def test_command_line_end_to_end(vggish, tmp_path, monkeypatch, capsys):
    media = pytest.importorskip("media")
    gen_dir, ref_dir = tmp_path / "gen", tmp_path / "ref"
    rng = np.random.default_rng(9)
    for name, gen_name in (("clipA", "clipA_0"), ("clipB", "clipB")):  # both ways of naming a generation
        events = np.array([0.3, 0.9, 1.6, 2.2, 3.0]) + (0.1 if name == "clipB" else 0.0)  # well apart
        wav = torch.from_numpy(librosa.clicks(times=events, sr=SR, length=int(3.6 * SR), click_duration=0.02) * 0.5)
        video = torch.from_numpy(rng.integers(0, 255, (36, 3, 32, 32), dtype=np.uint8))
        media.write_mp4(ref_dir / f"{name}.mp4", video, wav.float())
        (ref_dir / f"{name}.json").write_text(json.dumps({"events": events.tolist(), "tempo": 0}))
        gen_dir.mkdir(exist_ok=True)  # a perfect "generation": the same bytes (two encodes of one clip can differ)
        shutil.copyfile(ref_dir / f"{name}.mp4", gen_dir / f"{gen_name}.mp4")
    monkeypatch.setattr(features, "load_i3d", lambda path, device="cpu": _StubI3D())  # loading is tested above
    monkeypatch.setattr(features, "load_vggish", lambda path, cfg, device="cpu": vggish)
    out = tmp_path / "report.json"
    M.main(["--gen", str(gen_dir), "--ref", str(ref_dir), "--json", str(out), "--kvd-subsets", "3", "--device", "cpu"])
    table = capsys.readouterr().out
    assert table.startswith("| metric | value |") and "| fvd |" in table
    report = json.loads(out.read_text())
    res = report["results"]
    assert (res["n_gen"], res["n_ref"]) == (2, 2)
    assert abs(res["fvd"]) < 1e-6 and abs(res["fad_vggish"]) < 1e-9  # generations are copies of the references
    assert res["beat_hit_100ms"] == 1.0 and res["onset_audio_f1"] == 1.0
    assert len(report["per_file"]) == 2 and report["settings"]["embedder"]["sample_rate"] == 16000

    monkeypatch.undo()
    with pytest.raises(SystemExit) as e:  # missing weights: one line naming the file
        M.main(["--gen", str(gen_dir), "--ref", str(ref_dir), "--metrics", "fad", "--vggish", str(tmp_path / "x.pth")])
    assert "x.pth: VGGish weights not found" in str(e.value) and "\n" not in str(e.value)
    (ref_dir / "clipB.json").unlink()
    with pytest.raises(SystemExit, match=r"clipB\.json: onset ground truth missing"):
        M.main(["--gen", str(gen_dir), "--ref", str(ref_dir), "--metrics", "onset"])


def _study_rows(values: np.ndarray) -> list[list[dict]]:
    """Per seed, per clip, a row whose mel L1 is the given value (seeds × clips)."""
    return [[{"mel_l1": float(v)} for v in seed] for seed in values]


def test_seed_clip_bootstrap_of_a_constant_difference_is_exact():
    rng = np.random.default_rng(0)
    b = rng.normal(size=(3, 20))
    d = alignment.seed_clip_bootstrap(_study_rows(b + 0.25), _study_rows(b), "mel_l1", n=300)
    assert d["delta"] == pytest.approx(0.25) and d["lo"] == pytest.approx(0.25) and d["hi"] == pytest.approx(0.25)
    assert d["se"] < 1e-9 and (d["n_seeds"], d["n_clips"]) == (3, 60)


def test_seed_clip_bootstrap_resamples_seeds():
    """A difference that is constant within each seed but differs between seeds has spread only if the seeds
    themselves are resampled: a clip-only bootstrap would give a zero-width interval."""
    b = np.zeros((3, 16))
    a = b + np.array([0.0, 0.2, 0.4])[:, None]
    d = alignment.seed_clip_bootstrap(_study_rows(a), _study_rows(b), "mel_l1", n=2000)
    assert d["delta"] == pytest.approx(0.2) and d["lo"] < 0.1 and d["hi"] > 0.3
    assert d["mde"] == pytest.approx((alignment.Z_975 + alignment.Z_80) * d["se"])


def test_seed_clip_bootstrap_pools_ratios_and_pairs_clips():
    """F1 pools counts over clips (Σ 2·matched / Σ (n_ref + n_est)), and the pairing makes the shared clip
    effect cancel: the paired interval of a small shift is far narrower than the clips' own spread."""
    a = [[{"matched": 1, "n_ref": 2, "n_est": 2}, {"matched": 3, "n_ref": 4, "n_est": 2}]]
    b = [[{"matched": 0, "n_ref": 2, "n_est": 1}, {"matched": 1, "n_ref": 4, "n_est": 4}]]
    assert alignment.seed_clip_bootstrap(a, b, "f1", n=100)["delta"] == pytest.approx(8 / 10 - 2 / 11)
    clips = np.random.default_rng(1).normal(scale=1.0, size=(3, 64))
    noise = np.random.default_rng(2).normal(scale=0.01, size=(3, 64))
    d = alignment.seed_clip_bootstrap(_study_rows(clips + 0.05 + noise), _study_rows(clips), "mel_l1", n=1000)
    assert d["lo"] > 0.04 and d["hi"] < 0.06


def test_seed_clip_bootstrap_covers_the_truth():
    """Simulated studies (3 seeds × 64 clips, a seed effect and clip noise around a true gain of 0.1): the
    95 % interval holds the truth in most of them, and is no wider than it needs to be in all."""
    rng = np.random.default_rng(3)
    covered = 0
    for _ in range(60):
        gain = 0.1 + rng.normal(scale=0.02, size=(3, 1)) + rng.normal(scale=0.2, size=(3, 64))
        d = alignment.seed_clip_bootstrap(_study_rows(gain), _study_rows(np.zeros((3, 64))), "mel_l1", n=400,
                                          seed=int(rng.integers(1 << 30)))
        covered += d["lo"] <= 0.1 <= d["hi"]
        assert d["hi"] - d["lo"] < 0.3
    assert covered >= 45


@pytest.mark.parametrize("lo, hi, effect, expected", [
    (0.01, 0.05, 0.01, "held"), (-0.05, -0.01, None, "not held"), (-0.02, 0.005, 0.01, "not held"),
    (-0.02, 0.03, 0.01, "inconclusive"), (-0.02, 0.03, None, "inconclusive")])
def test_verdict(lo, hi, effect, expected):
    assert alignment.verdict(lo, hi, effect) == expected
