"""negatives.py: every negative is checked against plain slicing of labelled windows."""
import pytest
import torch

from negatives import (
    KINDS,
    TIME_AXIS,
    NegativesConfig,
    crop,
    draw_negatives,
    negative,
    other_clip,
    positive,
    segment_swapped,
    shifted,
)

B, F, C, H, W, M, T = 4, 6, 2, 3, 3, 5, 20  # tiny clips; the margins are the real ones
CFG = NegativesConfig()


def labelled_windows(cfg=CFG, B=B, M=M, T=T):
    """Windows whose every value encodes (clip b, window step t): value = 1000·b + t (+ a per-channel fraction)."""
    m = cfg.margin
    video_t = torch.arange(F + 2 * m["video"]).view(1, -1, 1, 1, 1)
    audio_t = torch.arange(T + 2 * m["audio"]).view(1, 1, -1)
    b = torch.arange(B)
    video = (1000 * b.view(B, 1, 1, 1, 1) + video_t + 0.01 * torch.arange(C).view(1, 1, C, 1, 1)).expand(B, -1, C, H, W)
    audio = (1000 * b.view(B, 1, 1) + audio_t + 0.01 * torch.arange(M).view(1, M, 1)).expand(B, M, -1)
    return {"video": video.double().contiguous(), "audio": audio.double().contiguous()}


def labels(x, modality):
    """(clip, window step) of every time step of a clip: (B, T) each."""
    first = x.movedim(TIME_AXIS[modality], 1).flatten(2)[:, :, 0].round().long()  # (B, T): channel 0 of each step
    return first // 1000, first % 1000


def draws(cfg, seeds=range(20)):
    for seed in seeds:
        yield seed, {k: negative(labelled_windows(cfg), k, cfg, torch.Generator().manual_seed(seed))
                     for k in cfg.negate}


def test_crop_is_the_centre():
    w = labelled_windows()
    torch.testing.assert_close(crop(w["video"], 4, "video"), w["video"][:, 4:4 + F])
    torch.testing.assert_close(crop(w["audio"], 25, "audio"), w["audio"][..., 25:25 + T])
    assert positive(w, CFG)["audio"].shape == (B, M, T)


@pytest.mark.parametrize("modality", ["video", "audio"])
def test_shifted_equals_window_slicing(modality):
    w, m = labelled_windows()[modality], CFG.margin[modality]
    offset = torch.tensor([-m, -2, 3, m])
    out = shifted(w, m, offset, modality)
    for b, o in enumerate(offset.tolist()):
        ref = w[b, m + o:m + o + F] if modality == "video" else w[b, :, m + o:m + o + T]
        torch.testing.assert_close(out[b], ref)


@pytest.mark.parametrize("cfg", [NegativesConfig(kinds=("shift",)),
                                 NegativesConfig.waveform(samples_per_frame=4, kinds=("shift",))])
def test_shift_within_range_never_wraps(cfg):
    seen = set()
    for _, neg in draws(cfg):
        for k, x in neg.items():
            clip, step = labels(x, k)
            assert torch.equal(clip, torch.arange(B).view(B, 1).expand_as(clip)), "a shift must keep the clip"
            assert (step.diff(dim=1) == 1).all(), "shifted content must be contiguous (no wrap)"
            offset = step[:, 0] - cfg.margin[k]
            lo, hi = cfg.shift[k]
            assert ((offset.abs() >= lo) & (offset.abs() <= hi)).all(), (k, offset)
            assert step.min() >= 0 and step.max() < x.shape[TIME_AXIS[k]] + 2 * cfg.margin[k]
            seen |= {(k, s) for s in offset.sign().tolist()}
    assert seen == {(k, s) for k in cfg.negate for s in (-1, 1)}, "both directions must occur"


def test_waveform_config_scales_audio_to_samples():
    cfg = NegativesConfig.waveform()
    assert cfg.margin == {"video": 4, "audio": 6400} and cfg.shift["audio"] == (3200, 6400)


def test_swap_never_pairs_a_clip_with_itself():
    cfg = NegativesConfig(kinds=("swap",))
    for _, neg in draws(cfg):
        for k, x in neg.items():
            clip, step = labels(x, k)
            partner = clip[:, 0]
            assert (partner != torch.arange(B)).all()
            torch.testing.assert_close(x, crop(labelled_windows()[k], cfg.margin[k], k)[partner])
    idx = torch.stack([other_clip(2, torch.Generator().manual_seed(s)) for s in range(10)])
    assert (idx == torch.tensor([1, 0])).all(), "with B = 2 the other clip is forced"


def test_segment_swap_halves_come_from_the_right_clips():
    cfg = NegativesConfig(kinds=("segment_swap",))
    orders = set()
    for _, neg in draws(cfg):
        for k, x in neg.items():
            n_steps = x.shape[TIME_AXIS[k]]
            clip, step = labels(x, k)
            centre = cfg.margin[k] + torch.arange(n_steps).expand(B, -1)
            assert torch.equal(step, centre), "both parts are centre crops, in place"
            for b in range(B):
                changes = (clip[b].diff() != 0).nonzero().flatten()
                assert len(changes) == 1, "exactly one split point"
                s = changes.item() + 1
                assert round(cfg.split[0] * n_steps) <= s <= round(cfg.split[1] * n_steps)
                left, right = clip[b, 0].item(), clip[b, -1].item()
                assert b in (left, right) and left != right, "one part is the clip, the other another clip"
                orders.add(left == b)
    assert orders == {True, False}, "both concat(a[:s], d[s:]) and concat(d[:s], a[s:]) occur"


def test_segment_swapped_by_hand():
    x, d = torch.arange(10.).view(1, 1, 10), -torch.arange(10.).view(1, 1, 10)
    out = segment_swapped(x, d, torch.tensor([3]), torch.tensor([True]), "audio")
    torch.testing.assert_close(out[0, 0], torch.cat([d[0, 0, :3], x[0, 0, 3:]]))
    out = segment_swapped(x, d, torch.tensor([3]), torch.tensor([False]), "audio")
    torch.testing.assert_close(out[0, 0], torch.cat([x[0, 0, :3], d[0, 0, 3:]]))


def test_draw_negatives_pairs_and_mixed_kinds():
    cfg = NegativesConfig(num_per_modality=2)
    w = labelled_windows()
    pos = positive(w, cfg)
    negs = draw_negatives(w, cfg, torch.Generator().manual_seed(0))
    assert len(negs) == 4
    for pair, k in zip(negs, ["audio", "video"] * 2):
        other = "video" if k == "audio" else "audio"
        assert torch.equal(pair[other], pos[other]), "the other modality stays positive"
        assert pair[k].shape == pos[k].shape and not torch.equal(pair[k], pos[k])
    kinds_seen = set()
    for _, neg in draws(cfg, range(10)):
        for k, x in neg.items():
            clip, step = labels(x, k)
            for b in range(B):
                if (clip[b] == b).all():
                    kinds_seen.add("shift")
                elif (clip[b] != b).all():
                    kinds_seen.add("swap")
                else:
                    kinds_seen.add("segment_swap")
    assert kinds_seen == set(KINDS)


def test_deterministic_under_generator():
    w = labelled_windows()
    a = draw_negatives(w, CFG, torch.Generator().manual_seed(3))
    b = draw_negatives(w, CFG, torch.Generator().manual_seed(3))
    c = draw_negatives(w, CFG, torch.Generator().manual_seed(4))
    assert all(torch.equal(p[k], q[k]) for p, q in zip(a, b) for k in p)
    assert not all(torch.equal(p[k], q[k]) for p, q in zip(a, c) for k in p)


def test_batch_of_one_uses_shift_only():
    w = labelled_windows(B=1)
    for seed in range(5):
        for pair in draw_negatives(w, CFG, torch.Generator().manual_seed(seed)):
            for k, x in pair.items():
                assert (labels(x, k)[0] == 0).all()


def test_bad_config_is_one_line_error():
    with pytest.raises(ValueError, match="negatives.py: audio shift"):
        NegativesConfig(shift={"video": (2, 4), "audio": (12, 30)})
    with pytest.raises(ValueError, match="negatives.py: kinds"):
        NegativesConfig(kinds=("roll",))


def test_feeds_contrastive_loss():
    from diffusion import Diffusion, DiffusionConfig
    w = {k: x.float() / 1000 for k, x in labelled_windows().items()}

    def model(x, n):
        return {k: 0.5 * v for k, v in x.items()}

    d = Diffusion(DiffusionConfig())
    loss, terms = d.contrastive_loss(model, positive(w, CFG), draw_negatives(w, CFG, torch.Generator().manual_seed(0)),
                                     eta=5e-5, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(loss) and set(terms) == {"jdiff", "video", "audio", "neg0", "neg1"}
