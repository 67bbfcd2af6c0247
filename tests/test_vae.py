"""vae.py against diffusers' AutoencoderKL (the reference), plus codec properties and checkpoint loading."""
import shutil

import huggingface_hub
import pytest
import torch
from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError
from safetensors.torch import load_file, save_file

import checkpoint
import vae

diffusers = pytest.importorskip("diffusers")

SD_PARAMS_M = 83.65  # AutoencoderKL of stabilityai/sd-vae-ft-mse, in millions
SMALL = dict(block_out_channels=(32, 64), layers_per_block=1)
SD = dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2)


def reference(block_out_channels, layers_per_block, seed=0):
    """diffusers' AutoencoderKL with its default (random) init, seeded."""
    torch.manual_seed(seed)
    n = len(block_out_channels)
    return diffusers.AutoencoderKL(
        block_out_channels=block_out_channels, layers_per_block=layers_per_block, latent_channels=4,
        norm_num_groups=32, down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n).eval()


def max_diff_to_reference(ref, ours, size):
    """Max |Δ| of the posterior mean and of the decoded image, one input through both models."""
    x = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(1)) * 2 - 1  # (1, 3, S, S)
    with torch.no_grad():
        mean_ref = ref.encode(x).latent_dist.mean
        mean, _ = ours.encode(x)
        image_ref, image = ref.decode(mean_ref).sample, ours.decode(mean_ref)
    return (mean - mean_ref).abs().max().item(), (image - image_ref).abs().max().item()


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """A small random reference VAE and its diffusers directory (config.json + safetensors)."""
    ref = reference(**SMALL)
    path = tmp_path_factory.mktemp("small_vae")
    ref.save_pretrained(path)
    return ref, path


def test_matches_diffusers_small(small):
    ref, path = small
    d_mean, d_image = max_diff_to_reference(ref, vae.load_vae(path), 32)
    print(f"small config: max |Δ| mean {d_mean:.2e}, image {d_image:.2e}")
    assert d_mean < 1e-4 and d_image < 1e-4


def test_matches_diffusers_sd_config(tmp_path):
    ref = reference(**SD)
    ref.save_pretrained(tmp_path)
    ours = vae.load_vae(tmp_path)
    n = sum(p.numel() for p in ours.parameters())
    print(f"SD config: {n / 1e6:.2f} M parameters")
    assert round(n / 1e6, 2) == SD_PARAMS_M
    assert ours.cfg.scaling_factor == 0.18215
    d_mean, d_image = max_diff_to_reference(ref, ours, 64)
    print(f"SD config: max |Δ| mean {d_mean:.2e}, image {d_image:.2e}")
    assert d_mean < 1e-4 and d_image < 1e-4


def test_codec_sample_matches_diffusers(small):
    """A posterior sample with a seeded generator is diffusers' sample times the scaling factor."""
    ref, path = small
    codec = vae.SDVAECodec(vae.load_vae(path), chunk=2)
    frames = torch.rand(2, 3, 3, 32, 32) * 2 - 1  # (B, F, 3, H, W)
    z = codec.encode(frames, sample=True, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        z_ref = ref.encode(frames.flatten(0, 1)).latent_dist.sample(torch.Generator().manual_seed(5))
    torch.testing.assert_close(z, 0.18215 * z_ref.reshape(z.shape), atol=1e-5, rtol=1e-5)


def test_codec_shapes_and_chunking():
    torch.manual_seed(0)
    cfg = vae.VAEConfig(block_out_channels=(32, 32, 32, 32), layers_per_block=1)
    model = vae.AutoencoderKL(cfg)
    codec = vae.SDVAECodec(model, chunk=2)
    assert (codec.channels, codec.factor) == (4, 8)
    frames = torch.rand(2, 3, 3, 32, 48) * 2 - 1  # (B, F, 3, H, W); B·F = 6 is not a multiple of 4
    z = codec.encode(frames)
    assert z.shape == (2, 3, 4, 4, 6) and z.dtype == torch.float32
    out = codec.decode(z)
    assert out.shape == frames.shape
    whole = vae.SDVAECodec(model, chunk=100)
    odd = vae.SDVAECodec(model, chunk=4)
    torch.testing.assert_close(odd.encode(frames), whole.encode(frames), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(odd.decode(z), whole.decode(z), atol=1e-5, rtol=1e-5)
    g = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    torch.testing.assert_close(odd.encode(frames, sample=True, generator=g()),
                               whole.encode(frames, sample=True, generator=g()), atol=1e-5, rtol=1e-5)
    assert not any(p.requires_grad for p in codec.parameters()), "the VAE must be frozen"
    with pytest.raises(AssertionError, match=r"\(B, F, 3, H, W\)"):
        codec.encode(frames[0])
    with pytest.raises(AssertionError, match="multiple of 8"):
        codec.encode(frames[..., :30])
    with pytest.raises(AssertionError, match=r"\(B, F, 4, H, W\)"):
        codec.decode(frames)


def test_pixel_codec_is_identity():
    codec = vae.make_codec("pixel")
    assert isinstance(codec, vae.PixelCodec) and (codec.channels, codec.factor) == (3, 1)
    frames = torch.rand(2, 5, 3, 8, 8) * 2 - 1  # (B, F, 3, H, W)
    assert torch.equal(codec.encode(frames), frames) and torch.equal(codec.decode(frames), frames)
    with pytest.raises(AssertionError, match="B, F"):
        codec.encode(frames[0])
    with pytest.raises(ValueError, match="unknown codec 'rgb'"):
        vae.make_codec("rgb")


def test_make_codec_sd_from_directory(small):
    _, path = small
    codec = vae.make_codec("sd", path, chunk=3)
    assert isinstance(codec, vae.SDVAECodec) and codec.chunk == 3 and codec.channels == 4


def fake_hub(monkeypatch, repo, cache, subfolder=None):
    """Serve `repo` (a diffusers directory, optionally under `subfolder`) through a patched hf_hub_download
    that copies the requested file into a cache dir and returns its path, as the real one does."""
    calls = []

    def download(repo_id, filename, *, subfolder=None, **kwargs):
        calls.append((repo_id, subfolder, filename))
        src = repo / (subfolder or "") / filename
        if not src.is_file():
            raise EntryNotFoundError(f"{filename} not in {repo_id}")
        dst = cache / "snapshots" / "0123abcd" / (subfolder or "") / filename
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src, dst)
        return str(dst)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    return calls


@pytest.mark.parametrize("layout", ["root", "vae"])
def test_hub_download_path(small, tmp_path, monkeypatch, layout):
    ref, path = small
    repo = tmp_path / "repo"
    shutil.copytree(path, repo / "vae" if layout == "vae" else repo)
    calls = fake_hub(monkeypatch, repo, tmp_path / "cache")
    ours = vae.load_vae(vae.HUB_ID)
    assert {c[0] for c in calls} == {"stabilityai/sd-vae-ft-mse"}
    assert (None if layout == "root" else "vae", vae.WEIGHTS_NAME) == calls[-1][1:]
    assert max(max_diff_to_reference(ref, ours, 32)) < 1e-4


@pytest.mark.parametrize("error", [LocalEntryNotFoundError("offline"), OSError("Name or service not known")])
def test_hub_offline_error_is_one_line(monkeypatch, error):
    def download(*args, **kwargs):
        raise error

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    with pytest.raises(checkpoint.CheckpointError) as info:
        vae.make_codec("sd")
    message = str(info.value)
    assert "\n" not in message and "stabilityai/sd-vae-ft-mse" in message
    assert "--local-dir" in message and "--vae-path" in message


def rewrite_weights(src, dst, edit):
    """Copy the diffusers directory `src` to `dst` with edit(state_dict) applied to its weights."""
    shutil.copytree(src, dst)
    state = load_file(dst / vae.WEIGHTS_NAME)
    edit(state)
    save_file(state, dst / vae.WEIGHTS_NAME)
    return dst


def test_mismatched_checkpoint_names_keys(small, tmp_path):
    _, path = small
    dropped = "decoder.conv_out.bias"
    bad = rewrite_weights(path, tmp_path / "missing", lambda s: s.pop(dropped))
    fit = r"weights do not fit the VAE of config\.json"
    with pytest.raises(checkpoint.CheckpointError,
                       match=rf"{fit} \(1 missing, e\.g\. \['{dropped}'\]; 0 unexpected") as info:
        vae.load_vae(bad)
    assert str(bad / vae.WEIGHTS_NAME) in str(info.value) and "\n" not in str(info.value)

    extra = "decoder.extra.weight"
    bad = rewrite_weights(path, tmp_path / "unexpected", lambda s: s.update({extra: torch.zeros(2)}))
    with pytest.raises(checkpoint.CheckpointError,
                       match=rf"{fit} \(0 missing, e\.g\. \[\]; 1 unexpected, e\.g\. \['{extra}'\]\)"):
        vae.load_vae(bad)

    key = "quant_conv.bias"
    bad = rewrite_weights(path, tmp_path / "shape", lambda s: s.update({key: torch.zeros(3)}))
    with pytest.raises(checkpoint.CheckpointError,
                       match=rf"{key} has shape \(3,\) where the VAE of config\.json has \(8,\)"):
        vae.load_vae(bad)


def test_legacy_attention_names_load(small, tmp_path):
    """query/key/value/proj_attn (older diffusers) load into to_q/to_k/to_v/to_out.0, conv shapes included."""
    ref, path = small
    new_to_old = {v: k for k, v in vae.LEGACY_ATTENTION_NAMES.items()}

    def to_legacy(state):
        for key in [k for k in state if ".mid_block.attentions.0." in k]:
            for new, old in new_to_old.items():
                if f".{new}." in key:
                    value = state.pop(key)
                    state[key.replace(f".{new}.", f".{old}.")] = value[..., None, None] if value.ndim == 2 else value

    legacy = rewrite_weights(path, tmp_path / "legacy", to_legacy)
    assert any(".proj_attn." in k for k in load_file(legacy / vae.WEIGHTS_NAME))
    assert max(max_diff_to_reference(ref, vae.load_vae(legacy), 32)) < 1e-4


def test_unsupported_config_and_bad_source(small, tmp_path):
    _, path = small
    shutil.copytree(path, tmp_path / "gelu")
    config = (tmp_path / "gelu" / vae.CONFIG_NAME)
    config.write_text(config.read_text().replace('"silu"', '"gelu"'))
    with pytest.raises(checkpoint.CheckpointError, match="act_fn='gelu' is not supported"):
        vae.load_vae(tmp_path / "gelu")
    with pytest.raises(checkpoint.CheckpointError, match="no config.json"):
        vae.load_vae(tmp_path)
    with pytest.raises(checkpoint.CheckpointError, match="not a VAE directory nor a Hub repo id"):
        vae.load_vae(tmp_path / "does" / "not-exist")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_codec_bf16_autocast_on_cuda():
    """On CUDA the codec runs under bf16 autocast, returns float32, and stays close to the fp32 CPU result."""
    torch.manual_seed(0)
    model = vae.AutoencoderKL(vae.VAEConfig(block_out_channels=(32, 32, 32, 32), layers_per_block=1))
    frames = torch.rand(1, 4, 3, 64, 64) * 2 - 1  # (B, F, 3, H, W)
    z_cpu = vae.SDVAECodec(model).encode(frames)
    codec = vae.SDVAECodec(model).to("cuda")
    z = codec.encode(frames.cuda())
    assert z.dtype == torch.float32 and z.device.type == "cuda"
    assert (z.cpu() - z_cpu).abs().max() < 0.05 * z_cpu.abs().max()
    assert codec.decode(z).shape == frames.shape
