"""Text conditioning (issue 30): the offline byte-level encoder, a frozen encoder from a folder in the Hub's
format, the DiT reading captions, dropped captions as the unconditioned model, classifier-free guidance by
hand, and train.py / sample.py with captions end to end."""
import copy
import sys

import pytest
import torch
from test_sample import long_clip, sample_cli

import diffusion
import dit
import pipeline
import sampling
import text
import train
from conftest import ROOT

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py
TINY_TEXT = ["--model", "dit", "--preset", "tiny", "--patch", "2", "--center", "--size", "16", "--frames", "6",
             "--batch", "4", "--num-clips", "8", "--workers", "0", "--preview-every", "0", "--log-every", "1",
             "--text-encoder", "byt5-scratch"]


def shaken(net: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Noise on every weight, past the zero initialisations, so that outputs depend on their inputs."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return net.eval()


def test_the_byte_tokenizer_needs_no_files_and_masks_padding():
    enc = text.TextEncoder(text.TextConfig(width=16, layers=1, heads=2))
    tokens, mask = enc(["A red ball.", ""])
    assert tokens.shape == (2, 12, 16) and mask.tolist()[1] == [True] + [False] * 11  # "" is its EOS alone
    assert mask[0].all()  # 11 bytes and EOS
    again, _ = enc(["A red ball.", ""])
    assert torch.equal(tokens, again)


def test_eval_mode_reuses_a_captions_encoding_until_the_weights_change():
    enc = text.TextEncoder(text.TextConfig(width=16, layers=1, heads=2)).eval()
    calls = []
    enc.model.register_forward_hook(lambda *_: calls.append(1))
    first, _ = enc(["A red ball.", ""])
    again, _ = enc(["A red ball.", ""])
    assert len(calls) == 1 and again is first and not first.requires_grad  # sampling's steps: encoded once
    with torch.no_grad():
        next(enc.model.parameters()).mul_(2.0)  # an in-place update (EMA, load_state_dict)
    changed, _ = enc(["A red ball.", ""])
    assert len(calls) == 2 and not torch.equal(changed, first)
    enc.train()
    trained, _ = enc(["A red ball.", ""])
    assert len(calls) == 3 and trained.requires_grad and torch.allclose(trained, changed, atol=1e-6)


def test_a_frozen_encoder_from_a_folder_stays_out_of_the_state_dict(tmp_path):
    from transformers import ByT5Tokenizer, T5Config, T5EncoderModel
    T5EncoderModel(T5Config(vocab_size=384, d_model=32, d_ff=64, num_layers=1, num_heads=2, d_kv=16)) \
        .save_pretrained(tmp_path)
    ByT5Tokenizer().save_pretrained(tmp_path)
    net = dit.DiT(dit.preset("tiny", video_channels=3, text={"encoder": str(tmp_path)}))
    assert not any(k.startswith("text_encoder.") for k in net.state_dict())  # not in any checkpoint
    assert not any(p is q for p in net.parameters() for q in net.text_encoder.frozen.parameters())  # not trained
    assert net.text_encoder.width == 32 and net.text_embed.in_features == 32
    ema = copy.deepcopy(net)  # train.py's EMA network: its own trained weights, the frozen encoder shared
    assert ema.text_encoder.frozen is net.text_encoder.frozen
    assert not any(p is q for p in net.parameters() for q in ema.parameters())
    net.to(torch.float64)
    assert next(net.text_encoder.frozen.parameters()).dtype == torch.float64  # .to() reaches it
    with pytest.raises(ValueError, match="cannot load the text encoder"):
        text.TextEncoder(text.TextConfig(encoder=str(tmp_path / "missing")))


def test_the_dit_reads_captions_and_an_empty_one_is_no_caption():
    net = shaken(dit.DiT(dit.preset("tiny", video_channels=3, text={})))
    x, n = {"video": torch.randn(2, 4, 3, 8, 8), "audio": torch.randn(2, 80, 16)}, torch.tensor([5, 500])
    red, drums = net(x, n, text=["a red ball", "a red ball"]), net(x, n, text=["drums at 120 bpm", "a red ball"])
    for k in x:
        assert (red[k][0] - drums[k][0]).abs().max() > 1e-4  # the caption moves both streams
        torch.testing.assert_close(red[k][1], drums[k][1], atol=1e-5, rtol=0)  # padding is masked out
    none, empty = net(x, n), net(x, n, text=["", ""])
    assert all(torch.equal(none[k], empty[k]) for k in x)
    with pytest.raises(ValueError, match="1 captions for a batch of 2"):
        net(x, n, text=["one"])
    with pytest.raises(ValueError, match="without a text encoder"):
        dit.DiT(dit.preset("tiny", video_channels=3))(x, n, text=["a", "b"])


class Toy(torch.nn.Module):
    """A network whose output is 1 with a caption and 0 without: classifier-free guidance checked by hand."""

    def forward(self, x, n, text=None):
        on = torch.tensor([float(bool(t)) for t in (text or [""] * n.shape[0])])
        return {k: on.view(-1, *[1] * (v.ndim - 1)).expand_as(v) for k, v in x.items()}


def test_classifier_free_guidance_by_hand():
    diff = diffusion.Diffusion(diffusion.DiffusionConfig())
    shapes = {"video": (2, 2, 3, 4, 4), "audio": (2, 80, 8)}
    x = {k: torch.randn(s) for k, s in shapes.items()}
    for scale in (1.0, 3.0, 0.0):
        d = sampling.Denoiser(diff, Toy(), sampling.Known({}, {}, {}), sampling.SamplerConfig(cfg=scale, steps=2),
                              shapes, text=["a red ball", ""])
        out = d.network(x, torch.tensor([500, 500]))
        # out(∅) + s·(out(text) − out(∅)): 0 + s·(1 − 0) with a caption, 0 without one
        assert torch.equal(out["audio"][0], torch.full((80, 8), scale)) and not out["audio"][1].any()
        assert d.evaluations == (1 if scale == 1 else 2)
    with pytest.raises(ValueError, match="needs a caption"):
        sampling.Denoiser(diff, Toy(), sampling.Known({}, {}, {}), sampling.SamplerConfig(cfg=3.0), shapes)


def test_caption_drop_makes_the_unconditioned_examples():
    seen = []

    class Spy(torch.nn.Module):
        def forward(self, x, n, text=None):
            seen.extend(text)
            return {k: torch.zeros_like(v) for k, v in x.items()}

    cfg = train.parse_args([*TINY_TEXT, "--caption-drop", "0.5", "--out", "unused"])
    pipe = type("P", (), {"net": torch.nn.Identity(), "diffusion": diffusion.Diffusion(diffusion.DiffusionConfig()),
                          "autoencoder": None})()
    neg = train.negatives.NegativesConfig()
    m = neg.margin
    windows = {"video": torch.randn(400, 2 + 2 * m["video"], 3, 2, 2),
               "audio": torch.randn(400, 80, 8 + 2 * m["audio"])}
    train.step_loss(cfg, pipe, Spy(), {"caption": ["a caption"] * 400}, windows, neg,
                    torch.Generator().manual_seed(0), torch.autocast("cpu", enabled=False))
    dropped = sum(t == "" for t in seen) / len(seen)
    assert set(seen) == {"", "a caption"} and abs(dropped - 0.5) < 0.08


@pytest.fixture(scope="module")
def text_ckpt(tmp_path_factory):
    out = tmp_path_factory.mktemp("text")
    return train.train(train.parse_args([*TINY_TEXT, "--out", str(out), "--steps", "2"]), progress=False)


def test_a_text_checkpoint_records_its_encoder_and_round_trips(text_ckpt):
    a, b = pipeline.load(text_ckpt), pipeline.load(text_ckpt)
    assert a.net.cfg.text["encoder"] == "byt5-scratch"
    assert any(k.startswith("text_encoder.") for k in a.net.state_dict())  # the scratch encoder is trained, saved
    x, n = {"video": torch.randn(1, 6, 12, 8, 8), "audio": torch.randn(1, 80, 37)}, torch.tensor([300])
    assert all(torch.equal(u, v) for u, v in zip(a.net(x, n, text=["hi"]).values(), b.net(x, n, text=["hi"]).values()))


def test_sample_py_takes_a_caption_in_every_new_command(text_ckpt, tmp_path):
    src, _ = long_clip(tmp_path, seconds=1.2)
    runs = {"text": ["--text", "A big red ball bounces.", "--seconds", "1.2", "--cfg", "3"],
            "two-step": ["--text", "A big red ball bounces.", "--seconds", "1.2", "--two-step"],
            "v2a": ["--v2a", src, "--text", "Drums at 120 bpm.", "--cfg", "2"]}
    for mode, args in runs.items():
        proc = sample_cli("--ckpt", text_ckpt, *args, "--steps", "2", "--out", tmp_path / mode)
        assert proc.returncode == 0, (mode, proc.stderr[-2000:])
        assert list((tmp_path / mode).glob("*.mp4")) and list((tmp_path / mode).glob("*.wav")), mode
    assert {f.name for f in (tmp_path / "two-step").glob("*.mp4")} == {"text_two_step_a-big-red-ball-bounces_000.mp4"}
    for args, message in ((["--two-step"], "give --text"), (["--text", " "], "must not be empty"), ([], "is required"),
                          (["--joint", "1", "--cfg", "2"], "give --text"),
                          (["--text", "a ball", "--prefix", "1"], "--text alone starts from noise")):
        proc = sample_cli("--ckpt", text_ckpt, *args, "--out", tmp_path / "bad")
        assert proc.returncode != 0 and message in proc.stderr, (args, proc.stderr)


def test_training_on_clips_without_captions_is_one_line():
    cfg = train.parse_args([*TINY_TEXT, "--out", "unused"])
    with pytest.raises(ValueError, match="have no caption"):
        train.check_captions(cfg, [{"caption": ""}] * 5)
    train.check_captions(cfg, [{"caption": ""}, {"caption": "a ball"}])  # some captions: trains


def test_caption_sensitivity_hears_a_swap_only_when_the_captions_differ(text_ckpt):
    """experiments/captions.py's diagnostic on a tiny captioned model: swapping identical captions moves nothing,
    swapping different ones does, and the encoder's cosine is that of the captions' pooled encodings."""
    sys.path.insert(0, str(ROOT / "experiments"))
    import captions
    same = [{"caption": "A red ball.", "tempo": 0.0}] * 3
    differ = [{"caption": c, "tempo": 0.0} for c in ("A red ball.", "Two green balls hum G5.", "A blue ball.")]
    pipe = pipeline.load(text_ckpt)
    assert captions.caption_sensitivity(pipe, same, seed=0)["swap"] == 0
    got = captions.caption_sensitivity(pipe, differ, seed=0)
    enc = pipe.net.eval().text_encoder
    with torch.no_grad():
        p = torch.nn.functional.normalize(text.masked_mean(*enc(sorted(c["caption"] for c in differ))), dim=-1)
    pairs = (p[[0, 0, 1]] * p[[1, 2, 2]]).sum(-1)  # the three distinct pairs' cosines
    assert got["swap"] > 0 and got["cosine"] == pytest.approx(float(pairs.mean()), abs=1e-6)


@pytest.mark.slow  # a minute or more of compiling on a 2-core CPU
def test_compiled_captioned_dit_equals_eager():
    """pipeline.compile_net (the path of `sample.py --compile`) on a captioned DiT in eval mode, where the caption's
    encoding is cached: the compiled network computes what the eager one does, with captions and without."""
    net = shaken(dit.DiT(dit.preset("tiny", video_channels=3, text={}))).eval()
    x, n = {"video": torch.randn(2, 4, 3, 8, 8), "audio": torch.randn(2, 80, 16)}, torch.tensor([5, 500])
    compiled = pipeline.compile_net(net, torch.device("cpu"))
    with torch.no_grad():
        for captions in (["a red ball", "drums at 120 bpm"], ["", ""]):
            got, want = compiled(x, n, text=captions), net(x, n, text=captions)
            for k in x:
                torch.testing.assert_close(got[k], want[k], atol=1e-5, rtol=1e-4)
