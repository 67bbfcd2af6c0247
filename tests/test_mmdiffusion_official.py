"""mmunet.py and mmdiffusion.py against the official MM-Diffusion code (researchmm/MM-Diffusion's
MultimodalUNet, imported from ../shared/reference/mm-diffusion, never copied): converted random weights give
the official output, RS-MMA's shifted windows equal the official ones, and `mmdiffusion.py convert` writes a
checkpoint that pipeline.load and sample.py run. Skipped, with the reason, without that folder."""
import math
import random
import subprocess
import sys
from dataclasses import asdict

import pytest
import torch

import checkpoint
import media
import mmdiffusion as M
import mmunet
import pipeline
from conftest import ROOT, SHARED, shared_file

REF = SHARED / "reference" / "mm-diffusion"

# The released AIST++/Landscape constructor call (SOURCE.txt: create_model with MODEL_FLAGS of
# multimodal_sample_sr.sh / video2audio_sample.sh, 64 px -> channel_mult (1, 2, 3, 4)).
RELEASED = dict(video_size=[16, 3, 64, 64], audio_size=[1, 25600], model_channels=128, video_out_channels=3,
                audio_out_channels=1, num_res_blocks=2, cross_attention_resolutions=[2, 4, 8],
                cross_attention_windows=[1, 4, 8], cross_attention_shift=True, video_attention_resolutions=[2, 4, 8],
                audio_attention_resolutions=[-1], video_type="2d+1d", audio_type="1d", dropout=0.0,
                channel_mult=(1, 2, 3, 4), num_classes=None, use_checkpoint=False, use_fp16=False, num_heads=4,
                num_head_channels=64, num_heads_upsample=-1, use_scale_shift_norm=True, resblock_updown=True)
COMMON = {k: RELEASED[k] for k in ("video_out_channels", "audio_out_channels", "video_type", "audio_type",
                                   "dropout", "num_classes", "use_checkpoint", "use_fp16", "num_heads_upsample",
                                   "resblock_updown")}
# Small official configurations, each with the flags that `convert` cannot read from the tensors.
SMALL = {
    # every feature of the released model: resblock_updown, scale-shift norm, video attention and RS-MMA at
    # two levels (rates 2, 4; windows 1, 4), the middle RS-MMA (windows [1, 4, 8]), 2 residual blocks
    "features": (dict(COMMON, video_size=[8, 3, 16, 16], audio_size=[1, 256], model_channels=32, num_res_blocks=2,
                      cross_attention_resolutions=[2, 4, 8], cross_attention_windows=[1, 4, 8],
                      cross_attention_shift=False, video_attention_resolutions=[2, 4],
                      audio_attention_resolutions=[-1], channel_mult=(1, 2, 3), num_heads=4, num_head_channels=32,
                      use_scale_shift_norm=True),
                 dict(frames=8, image_size=16, audio_samples=256, head_channels=32, random_shift=False, dropout=0.0)),
    # the other flags: channel_mult[0] = 2, no scale-shift norm, audio self-attention, windows ≠ [1, 4, 8] (no
    # middle RS-MMA), audio lengths 200 and 50 that 6 frames do not divide, and a window of 8 > 6 frames
    "other-flags": (dict(COMMON, video_size=[6, 3, 16, 16], audio_size=[1, 200], model_channels=32, num_res_blocks=1,
                         cross_attention_resolutions=[1, 2], cross_attention_windows=[2, 8],
                         cross_attention_shift=False, video_attention_resolutions=[1],
                         audio_attention_resolutions=[2], channel_mult=(2, 3), num_heads=4, num_head_channels=32,
                         use_scale_shift_norm=False),
                    dict(frames=6, image_size=16, audio_samples=200, head_channels=32, random_shift=False,
                         cross_rates=(1, 2), cross_windows=(2, 8), official_windows=True, dropout=0.0)),
    # the middle block's official window is video_size[0] = 6, run here on 4 frames; 18 samples at the bottom
    "middle-window": (dict(COMMON, video_size=[6, 3, 16, 16], audio_size=[1, 72], model_channels=32, num_res_blocks=1,
                           cross_attention_resolutions=[2, 4, 8], cross_attention_windows=[1, 4, 8],
                           cross_attention_shift=False, video_attention_resolutions=[2],
                           audio_attention_resolutions=[-1], channel_mult=(1, 2), num_heads=4, num_head_channels=32,
                           use_scale_shift_norm=True),
                      dict(frames=6, image_size=16, audio_samples=72, head_channels=32, random_shift=False,
                           official_windows=True, dropout=0.0)),
}
INPUTS = {"features": (8, 256), "other-flags": (6, 200), "middle-window": (4, 72)}  # F, L of the test input


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


@pytest.fixture(scope="module")
def MultimodalUNet():
    """The official class, imported from the reference folder."""
    shared_file(REF / "mm_diffusion" / "multimodal_unet.py")
    pytest.importorskip("einops", reason="the official MM-Diffusion code needs einops (requirements-test.txt)")
    sys.path.insert(0, str(REF))
    from mm_diffusion.multimodal_unet import MultimodalUNet
    return MultimodalUNet


def randomize_(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random weights, non-zero everywhere (the zero-initialised projections too): norm gains near 1, convs
    and linears at std 1/√fan-in so that 30-odd blocks neither vanish nor explode, biases at 0.1."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            x = torch.randn(p.shape, generator=g)
            x = torch.where(x == 0, 1.0, x)  # among 134 M draws a few are exactly 0
            if "GroupNorm" in name:
                p.copy_((1.0 if name.endswith("weight") else 0.0) + 0.2 * x)
            elif p.ndim > 1:
                p.copy_(x / math.sqrt(p[0].numel()))
            else:
                p.copy_(0.1 * x)
    assert all(p.ne(0).all() for p in model.parameters())
    return model


def inputs(batch: int, F_: int, size: int, L: int, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, F_, 3, size, size, generator=g), torch.randn(batch, 1, L, generator=g),
            torch.randint(0, 1000, (batch,), generator=g))


def converted(official: torch.nn.Module, **flags) -> mmunet.MMDiffusion:
    cfg, tensors = M.convert_state_dict(official.state_dict(), **flags)
    model = mmunet.MMDiffusion(cfg).eval()
    model.load_state_dict(tensors)
    return model


def max_diff(ours: dict, video: torch.Tensor, audio: torch.Tensor) -> dict:
    return {"video": (ours["video"] - video).abs().max().item(), "audio": (ours["audio"] - audio).abs().max().item()}


def record_shifts(monkeypatch) -> list:
    """Record every shift the official code draws (random.randint in CrossAttentionBlock.attention_index)."""
    drawn, randint = [], random.randint

    def recording(a, b):
        drawn.append(randint(a, b))
        return drawn[-1]
    monkeypatch.setattr(random, "randint", recording)
    return drawn


def replay_shifts(monkeypatch, model: mmunet.MMDiffusion, shifts: list):
    """Give our RS-MMA layers these shifts, in call order; the middle block (window None) is never shifted,
    in the official code neither."""
    it = iter(shifts)
    monkeypatch.setattr(model, "draw_shift", lambda window, frames: 0 if window is None else next(it))
    return it


# ---- the network, output for output ----------------------------------------------------------------------

@pytest.mark.parametrize("name", list(SMALL))
def test_small_configs_equal_official(MultimodalUNet, name):
    kwargs, flags = SMALL[name]
    official = randomize_(MultimodalUNet(**kwargs)).eval()
    ours = converted(official, **flags)
    assert M.official_kwargs(ours.cfg) == kwargs  # the inferred config is the official one
    F_, L = INPUTS[name]
    v, a, n = inputs(2, F_, kwargs["video_size"][-1], L)
    with torch.no_grad():
        video, audio = official(v, a, n)
        out = ours({"video": v, "audio": a}, n)
        diff = max_diff(out, video, audio)
        print(f"{name}: max |ours - official| {diff}, max |official| {video.abs().max():.2f}, {audio.abs().max():.2f}")
        assert max(diff.values()) < 1e-4, diff
        if flags.get("official_windows"):  # the flag is needed: our default windows differ here
            default = converted(official, **{**flags, "official_windows": False})
            assert min(max_diff(default({"video": v, "audio": a}, n), video, audio).values()) > 1e-2


def test_shifted_windows_equal_official(MultimodalUNet, monkeypatch):
    """With the shift on, the official code draws R from Python's `random` at every call (sampling too): the
    same R per layer gives the same output; all-zero shifts do not."""
    kwargs, flags = SMALL["features"]
    official = randomize_(MultimodalUNet(**{**kwargs, "cross_attention_shift": True})).eval()
    ours = converted(official, **{**flags, "random_shift": True})
    v, a, n = inputs(2, 8, 16, 256)
    drawn = record_shifts(monkeypatch)
    random.seed(3)
    with torch.no_grad():
        video, audio = official(v, a, n)
        assert len(drawn) == 10 and len(set(drawn)) > 2, drawn  # 4 encoder + 6 decoder RS-MMA calls
        left = replay_shifts(monkeypatch, ours, drawn)
        diff = max_diff(ours({"video": v, "audio": a}, n), video, audio)
        assert next(left, None) is None, "our network called RS-MMA fewer times than the official one"
        print(f"shifts {drawn}: max |ours - official| {diff}")
        assert max(diff.values()) < 1e-4, diff
        replay_shifts(monkeypatch, ours, [0] * len(drawn))
        assert min(max_diff(ours({"video": v, "audio": a}, n), video, audio).values()) > 1e-2


@pytest.mark.slow
def test_released_aist_config_equals_official(MultimodalUNet, monkeypatch):
    """The released AIST++ network itself (133.68 M), batch 1, with the official random shifts; about a
    minute on one thread of this project's CPU (53-67 s measured, 3 GB)."""
    official = randomize_(MultimodalUNet(**RELEASED)).eval()
    total = sum(p.numel() for p in official.parameters())
    ours = converted(official)  # the default flags are the released ones
    assert ours.cfg == mmunet.preset("official")
    assert sum(p.numel() for p in ours.parameters()) == total and abs(total / mmunet.OFFICIAL_PARAMS - 1) < 1e-3
    v, a, n = inputs(1, 16, 64, 25600)
    drawn = record_shifts(monkeypatch)
    random.seed(0)
    with torch.no_grad():
        video, audio = official(v, a, n)
        left = replay_shifts(monkeypatch, ours, drawn)
        diff = max_diff(ours({"video": v, "audio": a}, n), video, audio)
    assert next(left, None) is None and len(drawn) == 15 and any(drawn), drawn
    print(f"AIST++: shifts {drawn}, max |ours - official| {diff}, "
          f"max |official| {video.abs().max():.2f}, {audio.abs().max():.2f}")
    assert max(diff.values()) < 1e-3, diff


# ---- the released files in our scripts -------------------------------------------------------------------

# A tiny official model that sample.py can run: 4 frames of 16 px at 10 fps and their 6 400 samples (0.4 s).
TINY = (dict(COMMON, video_size=[4, 3, 16, 16], audio_size=[1, 6400], model_channels=32, num_res_blocks=1,
             cross_attention_resolutions=[1, 2], cross_attention_windows=[1, 2], cross_attention_shift=True,
             video_attention_resolutions=[2], audio_attention_resolutions=[-1], channel_mult=(1, 2), num_heads=4,
             num_head_channels=32, use_scale_shift_norm=True),
        ["--frames", "4", "--image-size", "16", "--audio-samples", "6400", "--cross-rates", "1", "2",
         "--cross-windows", "1", "2", "--head-channels", "32", "--dropout", "0"])


def cli(*args, script="mmdiffusion.py"):
    return subprocess.run([sys.executable, script, *map(str, args)], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)


def test_convert_cli_runs_in_train_and_sample(MultimodalUNet, tmp_path):
    """`convert` on a file saved as the official training saves it (multimodal_train_util.py save():
    th.save(state_dict)); the result loads with pipeline.load, gives the official output, and samples."""
    kwargs, flags = TINY
    official = randomize_(MultimodalUNet(**kwargs)).eval()
    torch.save(official.state_dict(), tmp_path / "AIST++.pt")
    proc = cli("convert", tmp_path / "AIST++.pt", "--out", tmp_path / "mmdiff.safetensors", *flags)
    assert proc.returncode == 0, proc.stderr[-2000:]
    ckpt = tmp_path / "mmdiff.safetensors"
    pipe = pipeline.load(ckpt)
    model, diff, codecs, clip, meta = pipe.net, pipe.diffusion, pipe.codecs, pipe.clip, pipe.config
    assert meta["model"] == "mmdiffusion" and meta["format"] == "cmmd-1" and meta["converted_from"] == "AIST++.pt"
    assert meta["codec"] == {"video": "pixel", "audio": "wave"} and isinstance(codecs["audio"], pipeline.WaveCodec)
    assert meta["diffusion"] == asdict(mmunet.diffusion_config()) and diff.cfg == mmunet.diffusion_config()
    assert M.official_kwargs(model.cfg) == kwargs and (clip.frames, clip.size) == (4, 16)
    v, a, n = inputs(1, 4, 16, 6400)
    with torch.no_grad():  # eval mode: our shift is 0, so the official one is switched off to compare
        official.cross_attention_shift = False
        for block in official.modules():
            if hasattr(block, "window_shift"):
                block.window_shift = False
        video, audio = official(v, a, n)
        assert max(max_diff(model({"video": v, "audio": a}, n), video, audio).values()) < 1e-4
    _, tensors = checkpoint.read(ckpt)
    assert all(torch.equal(tensors[f"model.{k}"], tensors[f"ema.{k}"]) for k in model.state_dict())

    g = torch.Generator().manual_seed(0)
    clip_mp4 = media.write_mp4(tmp_path / "clip.mp4", torch.rand(4, 3, 16, 16, generator=g) * 2 - 1,
                              0.3 * torch.randn(6400, generator=g))
    proc = cli("--ckpt", ckpt, "--v2a", clip_mp4, "--steps", "2", "--out", tmp_path / "out", script="sample.py")
    assert proc.returncode == 0, proc.stderr[-2000:]
    back = media.read_av(tmp_path / "out" / "clip_v2a.mp4", size=16)
    assert back.video.shape[0] == 4 and back.audio.abs().max() > 0


def test_convert_bad_input_one_line(MultimodalUNet, tmp_path, capsys):
    kwargs, flags = TINY
    state = randomize_(MultimodalUNet(**kwargs)).state_dict()
    (tmp_path / "notes.pt").write_text("not a checkpoint")
    torch.save([1, 2, 3], tmp_path / "list.pt")
    torch.save({"model": state, "step": 10}, tmp_path / "wrapped.pt")
    torch.save({**state, "label_emb.weight": torch.zeros(10, 32)}, tmp_path / "classes.pt")
    torch.save({**state, "time_embed.2.bias": torch.zeros(33)}, tmp_path / "shape.pt")
    torch.save({k: v for k, v in state.items() if "middle_blocks.0.audio_attention" not in k}, tmp_path / "short.pt")
    torch.save(MultimodalUNet(**{**kwargs, "resblock_updown": False}).state_dict(), tmp_path / "no-updown.pt")
    torch.save(MultimodalUNet(**{**kwargs, "video_out_channels": 6, "audio_out_channels": 2}).state_dict(),
               tmp_path / "sigma.pt")  # learn_sigma
    cases = [("missing.pt", "missing.pt: no such PyTorch state dict"),
             ("notes.pt", "notes.pt: not a PyTorch state dict"),
             ("list.pt", "list.pt: not a PyTorch state dict (a list, not a dict)"),
             ("wrapped.pt", "wrapped.pt: not a state dict: entry 'model' is not a named tensor"),
             ("classes.pt", "classes.pt: 1 tensors map to nothing in MMDiffusion, e.g. 'label_emb.weight'"),
             ("shape.pt", "shape.pt: 'time_embed.2.bias' has shape (33,), expected (32,)"),
             ("short.pt", "short.pt: 6 weights of the inferred network are missing, e.g. "
                          "'middle_blocks.0.audio_attention_block.norm.GroupNorm.bias'"),
             ("no-updown.pt", "no-updown.pt: output_blocks change width without upsampling blocks"),
             ("sigma.pt", "sigma.pt: 'video_out.2.video_conv.weight' has shape (6, 32, 3, 3, 3), "
                          "expected (3, 32, 3, 3, 3)")]
    for name, message in cases:
        with pytest.raises(SystemExit) as e:
            M.main(["convert", str(tmp_path / name), "--out", str(tmp_path / "x.safetensors"), *flags])
        text = str(e.value.code)
        assert text.startswith("error: ") and message in text and "\n" not in text, (name, text)
    assert not (tmp_path / "x.safetensors").exists()
    proc = cli("convert", tmp_path / "list.pt", "--out", tmp_path / "x.safetensors")  # as a user runs it
    assert proc.returncode == 1 and "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_official_preset_is_the_released_flags():
    """official_kwargs of the official preset is the released constructor call (dropout: 0.1 of the training
    flags, multimodal_train.sh, against the sampling scripts' default 0)."""
    assert M.official_kwargs(mmunet.preset("official")) == {**RELEASED, "dropout": 0.1}
    with pytest.raises(ValueError, match="middle RS-MMA iff"):
        M.official_kwargs(mmunet.preset("official", middle_rs_mma=False))
