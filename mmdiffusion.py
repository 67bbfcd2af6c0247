"""MM-Diffusion's released checkpoints (researchmm/MM-Diffusion: AIST++.pt, Landscape.pt, linked from the
official README), converted into a checkpoint of train.py that sample.py runs, for the baseline of CMMD's
Table 3 (Ruan et al. 2023, MM-Diffusion; the network is mmunet.py):
    python mmdiffusion.py convert AIST++.pt --out mmdiff-aist.safetensors
tests/test_mmdiffusion_official.py checks that the converted network's outputs equal the official code's.

A released file is `torch.save(state_dict)` of the official MultimodalUNet. Its widths, levels, residual
blocks, attention and RS-MMA rates and norm are read from the tensors (`infer_config`); the flags give the
rest (defaults: the released flags). Every official tensor maps to one of ours with the expected shape and
every one of ours is there, or the conversion stops with a one-line checkpoint.CheckpointError naming the
file. `official_kwargs` is the other direction: the official constructor call of one of our configs.
"""
import argparse
import sys
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn as nn

import checkpoint
from checkpoint import CheckpointError
from mmunet import MMDiffusion, MMDiffusionConfig, PathAttention, preset

# λ of the "mmdiffusion" guidance equal to the official classifier_scale 3.0
# (ssh_scripts/video2audio_sample.sh, batch 2, fp16 loss scale 2²⁰ left in the gradient; docs/mmdiffusion.md)
OFFICIAL_GUIDANCE = 3.0 * 2 ** 20 / 2

# A released file is `torch.save(state_dict)` of the official MultimodalUNet (multimodal_train_util.py save(),
# fp32 master weights). Our names differ from the official ones, and our 1×1 convolutions on tokens are
# Linear layers, our 2-D + 1-D video convolutions Conv3d with a kernel of size 1 in the other axes; the
# tensors are the same numbers, reshaped. Layout of a mapping, official shape from ours:
#   ""   the same shape            "2d"  Conv2d (o, i, kh, kw)   -> Conv3d (o, i, 1, kh, kw)
#   "1d" Conv1d (o, i, kf)         -> Conv3d (o, i, kf, 1, 1)      "c1"  Conv1d (o, i, 1) -> Linear (o, i)
#   "c3" Conv3d (o, i, 1, 1, 1)    -> Linear (o, i)
_TOP = {"time_embed.0": ("time_embed.0", ""), "time_embed.2": ("time_embed.2", ""),
        "inp.video.0": ("input_blocks.0.0.video_conv.video_conv_spatial", "2d"),
        "inp.video.1": ("input_blocks.0.0.video_conv.video_conv_temporal", "1d"),
        "inp.audio": ("input_blocks.0.0.audio_conv.audio_conv", ""),
        "out.video.0": ("video_out.0.GroupNorm", ""), "out.video.2": ("video_out.2.video_conv", ""),
        "out.audio.0": ("audio_out.0.GroupNorm", ""), "out.audio.2": ("audio_out.2.audio_conv", "")}
_LEAVES = {  # our submodule of a block -> the official one, per block type
    "MMResBlock": {"emb.1": ("emb_layers.1", ""),
                   "res.video.in_layers.0": ("video_in_layers.0.GroupNorm", ""),
                   "res.video.in_layers.2.0": ("video_in_layers.2.video_conv_spatial", "2d"),
                   "res.video.in_layers.2.1": ("video_in_layers.2.video_conv_temporal", "1d"),
                   "res.video.out_norm": ("video_out_layers.0.GroupNorm", ""),
                   "res.video.out_layers.2": ("video_out_layers.3.video_conv", ""),
                   "res.video.skip": ("video_skip_connection.video_conv", ""),
                   "res.audio.in_layers.0": ("audio_in_layers.0.GroupNorm", ""),
                   "res.audio.in_layers.2": ("audio_in_layers.2.audio_conv", ""),
                   "res.audio.out_norm": ("audio_out_layers.0.GroupNorm", ""),
                   "res.audio.out_layers.2": ("audio_out_layers.3.audio_conv", ""),
                   "res.audio.skip": ("audio_skip_connection.audio_conv", "")},
    # the official ResBlock holds the self-attention that follows it
    "PathAttention": {f"attn.{path}.{part}": (f"{block}.{theirs}", layout)
                      for path, block in (("video.space", "spatial_attention_block"),
                                          ("video.frames", "temporal_attention_block"),
                                          ("audio.time", "audio_attention_block"))
                      for part, theirs, layout in (("norm", "norm.GroupNorm", ""), ("qkv", "qkv", "c1"),
                                                   ("proj", "proj_out", "c1"))},
    "RSMMA": {"norm.video": ("v_norm.GroupNorm", ""), "norm.audio": ("a_norm.GroupNorm", ""),
              "qkv.video": ("v_qkv", "c1"), "qkv.audio": ("a_qkv", "c1"),
              "proj.video": ("video_proj_out.video_conv", "c3"), "proj.audio": ("audio_proj_out.audio_conv", "c1")},
}
OFFICIAL_CONSTANTS = dict(norm_groups=32, audio_rate=4, dilation_cycle=10)  # fixed in multimodal_unet.py / nn.py
# Read from the tensors by `infer_config`; every other field comes from the caller (default: the official preset).
INFERRED = ("base_channels", "channel_mult", "num_res_blocks", "video_channels", "audio_channels",
            "attention_rates", "audio_attention_rates", "scale_shift_norm", "middle_rs_mma")


def official_names(model: MMDiffusion) -> dict[str, tuple[str, str]]:
    """Our state-dict key -> (the official MultimodalUNet key of the same tensor, layout)."""
    modules = dict(_TOP)

    def walk(ours: str, layers: nn.ModuleList, theirs: str):
        j = -1  # the official layer index inside the block
        for i, layer in enumerate(layers):
            j += not isinstance(layer, PathAttention)
            for a, (b, layout) in _LEAVES[type(layer).__name__].items():
                modules[f"{ours}.{i}.{a}"] = (f"{theirs}.{j}.{b}", layout)

    for b, layers in enumerate(model.encoder):
        walk(f"encoder.{b}", layers, f"input_blocks.{b + 1}")  # input_blocks.0 is the input convolution
    walk("middle", model.middle, "middle_blocks")
    for b, layers in enumerate(model.decoder):
        walk(f"decoder.{b}", layers, f"output_blocks.{b}")
    names = {}
    for key in model.state_dict():
        module, param = key.rsplit(".", 1)
        theirs, layout = modules[module]
        names[key] = (f"{theirs}.{param}", layout if param == "weight" else "")
    return names


def official_shape(ours: tuple, layout: str) -> tuple:
    """The official tensor's shape for one of ours (layouts above)."""
    return {"": ours, "2d": ours[:2] + ours[3:], "1d": ours[:3], "c1": (*ours, 1), "c3": (*ours, 1, 1, 1)}[layout]


def _official_shape(state: dict, key: str, source: str) -> tuple:
    """The shape of tensor `key` of an official state dict; a missing one means the file is something else."""
    if key not in state:
        raise CheckpointError(f"{source}: no tensor {key!r}: not an official MultimodalUNet state dict")
    return tuple(state[key].shape)


def _decoder_levels(state: dict, source: str) -> tuple[int, int, int]:
    """(blocks, levels, blocks per level) of the official decoder, told apart by its upsampling ResBlocks."""
    # the decoder: levels·(num_res_blocks + 1) blocks, an upsampling ResBlock ending each level but the last
    blocks = 1 + max((int(k.split(".")[1]) for k in state if k.startswith("output_blocks.")), default=-1)
    ups = [i for i in range(blocks) if any(k.startswith(f"output_blocks.{i}.{j}.emb_layers.") for j in (1, 2)
                                           for k in state)]
    levels = len(ups) + 1
    per_level = blocks // levels
    if blocks % levels or per_level < 2 or ups != [per_level * (n + 1) - 1 for n in range(levels - 1)]:
        raise CheckpointError(f"{source}: output_blocks do not form a U-Net decoder with resblock_updown "
                              f"({blocks} blocks, upsampling in {ups})")
    return blocks, levels, per_level


def _decoder_widths_and_rates(state: dict, source: str, base: int, blocks: int, levels: int,
                              per_level: int) -> tuple[list[int], dict, bool]:
    """From each decoder block's tensors: the channel multiplier per level, the downsample rates with video
    attention, audio attention and RS-MMA, and whether the ResBlocks use scale-shift norm."""
    widths, rates = [set() for _ in range(levels)], {"video": set(), "audio": set(), "cross": set()}
    scale_shift = set()
    for i in range(blocks):
        level = levels - 1 - i // per_level
        width = _official_shape(state, f"output_blocks.{i}.0.video_out_layers.0.GroupNorm.weight", source)[0]
        if width % base:
            raise CheckpointError(f"{source}: output_blocks.{i} has {width} channels, not a multiple of "
                                  f"model_channels {base}")
        widths[level].add(width)
        emb = _official_shape(state, f"output_blocks.{i}.0.emb_layers.1.weight", source)[0]
        scale_shift.add(emb == 2 * width)
        for kind, key in (("video", f"output_blocks.{i}.0.spatial_attention_block.qkv.weight"),
                          ("audio", f"output_blocks.{i}.0.audio_attention_block.qkv.weight"),
                          ("cross", f"output_blocks.{i}.1.v_qkv.weight")):
            if key in state:
                rates[kind].add(2 ** level)
    if len(scale_shift) != 1:
        raise CheckpointError(f"{source}: some blocks use scale-shift norm and others not")
    if any(len(w) > 1 for w in widths):  # resblock_updown=False: no upsampling ResBlocks between the levels
        raise CheckpointError(f"{source}: output_blocks change width without upsampling blocks between the levels "
                              f"(resblock_updown=False, whose decoder never upsamples, is not supported)")
    return [w.pop() // base for w in widths], rates, scale_shift.pop()


def _cross_windows(cfg: dict, found: set, levels: int, source: str) -> tuple[tuple, tuple]:
    """RS-MMA's (rates, windows): the rates the tensors show, their windows from the flags' cross_rates/windows."""
    window_of = dict(zip(cfg["cross_rates"], cfg["cross_windows"]))
    missing = sorted(found - window_of.keys())
    if missing:
        raise CheckpointError(f"{source}: RS-MMA at downsample rates {missing}, but no window for them in "
                              f"cross_rates {tuple(cfg['cross_rates'])} / cross_windows {tuple(cfg['cross_windows'])}")
    # the tensors say where RS-MMA is; rates past the deepest level (none there) are kept from the flags
    cross = sorted(found | {r for r in window_of if r >= 2 ** levels})
    return tuple(cross), tuple(window_of[r] for r in cross)


def infer_config(state: dict, source: str = "state dict", **flags) -> MMDiffusionConfig:
    """Our config of an official MultimodalUNet state dict: the `INFERRED` fields from its tensors, the others
    from `flags` (MMDiffusionConfig fields; default: the official preset). RS-MMA's rates come from the
    tensors, their windows from flags' cross_rates/cross_windows."""
    bad = set(flags) - {f for f in MMDiffusionConfig.__dataclass_fields__ if f not in INFERRED}
    if bad:
        raise CheckpointError(f"{source}: {sorted(bad)} are read from the tensors or not config fields")
    base = _official_shape(state, "time_embed.0.weight", source)[0]
    video_channels = _official_shape(state, "input_blocks.0.0.video_conv.video_conv_spatial.weight", source)[1]
    audio_channels = _official_shape(state, "input_blocks.0.0.audio_conv.audio_conv.weight", source)[1]
    blocks, levels, per_level = _decoder_levels(state, source)
    mult, rates, scale_shift = _decoder_widths_and_rates(state, source, base, blocks, levels, per_level)
    cfg = asdict(preset("official"))
    cfg.update(flags)
    cross_rates, cross_windows = _cross_windows(cfg, rates["cross"], levels, source)
    cfg.update(base_channels=base, channel_mult=tuple(mult), num_res_blocks=per_level - 1,
               video_channels=video_channels, audio_channels=audio_channels,
               attention_rates=tuple(sorted(rates["video"])), audio_attention_rates=tuple(sorted(rates["audio"])),
               cross_rates=cross_rates, cross_windows=cross_windows,
               scale_shift_norm=scale_shift, middle_rs_mma="middle_blocks.1.v_qkv.weight" in state,
               **OFFICIAL_CONSTANTS)
    return MMDiffusionConfig(**cfg)


def convert_state_dict(state: dict, source: str = "state dict", **flags) -> tuple[MMDiffusionConfig, dict]:
    """(config, our state dict) of an official MultimodalUNet state dict, fp32; `flags` as `infer_config`.
    Every official tensor must map to one of ours with the expected shape, and every one of ours be there."""
    cfg = infer_config(state, source, **flags)
    with torch.device("meta"):  # names and shapes only
        model = MMDiffusion(cfg)
    names, ours = official_names(model), model.state_dict()
    missing = sorted(theirs for theirs, _ in names.values() if theirs not in state)
    if missing:
        raise CheckpointError(f"{source}: {len(missing)} weights of the inferred network are missing, "
                              f"e.g. {missing[0]!r}")
    unused = sorted(state.keys() - {theirs for theirs, _ in names.values()})
    if unused:
        raise CheckpointError(f"{source}: {len(unused)} tensors map to nothing in MMDiffusion, e.g. {unused[0]!r}")
    tensors = {}
    for key, (theirs, layout) in names.items():
        want = official_shape(tuple(ours[key].shape), layout)
        if tuple(state[theirs].shape) != want:
            raise CheckpointError(f"{source}: {theirs!r} has shape {tuple(state[theirs].shape)}, expected {want}")
        # a copy of its own: the official fp16 trainer saves views into one flat buffer
        tensors[key] = state[theirs].detach().reshape(ours[key].shape).to(torch.float32, copy=True).contiguous()
    return cfg, tensors


def official_kwargs(cfg: MMDiffusionConfig) -> dict:
    """The official MultimodalUNet(**kwargs) of the same network as `cfg` (its create_model with the released
    flags of multimodal_train.sh fills the same arguments). It equals ours with official_windows=True; with
    the default windows too wherever every level's audio length is a multiple of F ≥ S and F = frames."""
    for name, value in OFFICIAL_CONSTANTS.items():
        if getattr(cfg, name) != value:
            raise ValueError(f"mmdiffusion.py: the official code has {name}={value}, not {getattr(cfg, name)}")
    windows = list(cfg.cross_windows)
    if cfg.middle_rs_mma != (windows == [1, 4, 8]):  # multimodal_unet.py's condition for the middle RS-MMA
        raise ValueError(f"mmdiffusion.py: the official code has the middle RS-MMA iff the windows are [1, 4, 8], "
                         f"not with windows {windows} and middle_rs_mma={cfg.middle_rs_mma}")
    return dict(video_size=[cfg.frames, cfg.video_channels, cfg.image_size, cfg.image_size],
                audio_size=[cfg.audio_channels, cfg.audio_samples], model_channels=cfg.base_channels,
                video_out_channels=cfg.video_channels, audio_out_channels=cfg.audio_channels,
                num_res_blocks=cfg.num_res_blocks, cross_attention_resolutions=list(cfg.cross_rates),
                cross_attention_windows=windows, cross_attention_shift=cfg.random_shift,
                video_attention_resolutions=list(cfg.attention_rates) or [-1],
                audio_attention_resolutions=list(cfg.audio_attention_rates) or [-1],
                video_type="2d+1d", audio_type="1d", dropout=cfg.dropout, channel_mult=tuple(cfg.channel_mult),
                num_classes=None, use_checkpoint=False, use_fp16=False, num_heads=cfg.self_attention_heads,
                num_head_channels=cfg.head_channels, num_heads_upsample=-1,
                use_scale_shift_norm=cfg.scale_shift_norm, resblock_updown=True)


def load_official(path) -> dict:
    """The state dict of an official checkpoint file (torch.save of a dict of tensors), on the CPU."""
    state = checkpoint.torch_load(path, "PyTorch state dict")
    odd = next((k for k, v in state.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)), None)
    if not state or odd is not None:
        raise CheckpointError(f"{path}: not a state dict: " + (f"entry {odd!r} is not a named tensor" if state
                                                                 else "it is empty"))
    return state


def convert_file(path, out, **flags) -> Path:
    """Convert an official checkpoint into one of train.py's (`model.`/`ema.` weights, run config in its
    metadata: pixel video, waveform audio, mmunet.diffusion_config()); `flags` as `infer_config`."""
    import data
    import pipeline
    import train
    path = Path(path)
    cfg, tensors = convert_state_dict(load_official(path), path.name, **flags)
    clip = data.ClipConfig(frames=cfg.frames, size=cfg.image_size)
    if clip.samples != cfg.audio_samples:
        raise CheckpointError(f"{path}: audio_samples {cfg.audio_samples} is not {cfg.frames} frames at {clip.fps} fps "
                              f"of {clip.sample_rate} Hz audio ({clip.samples}), as data.ClipConfig needs")
    run = train.TrainConfig(model="mmdiffusion", preset="paper", vae="pixel", frames=cfg.frames, size=cfg.image_size,
                            init=str(path))
    meta = {**pipeline.run_config(run), "net": asdict(cfg), "converted_from": path.name}
    # the released file is one set of weights (the EMA the authors sampled with): both prefixes hold it
    # clones, as safetensors stores no shared memory
    both = {f"{prefix}.{k}": t.clone() for prefix in ("model", "ema") for k, t in tensors.items()}
    return checkpoint.save(Path(out), both, meta, step=0)


def main(argv=None):
    p = argparse.ArgumentParser(description="Convert a released MM-Diffusion checkpoint (AIST++.pt, Landscape.pt "
                                            "of github.com/researchmm/MM-Diffusion) into a checkpoint of train.py.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("convert", help="official state dict (.pt) -> our .safetensors checkpoint",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                       description="Widths, levels, residual blocks, attention and RS-MMA rates and the norm are "
                                   "read from the tensors; the flags give the rest (defaults: the released flags).")
    c.add_argument("checkpoint", help="the official file, torch.save(model.state_dict())")
    c.add_argument("--out", required=True, help="the .safetensors checkpoint to write")
    d = MMDiffusionConfig()
    c.add_argument("--frames", type=int, default=d.frames, help="F of its clips (official --video_size F,3,H,W)")
    c.add_argument("--image-size", type=int, default=d.image_size, help="H = W (official --video_size)")
    c.add_argument("--audio-samples", type=int, default=d.audio_samples, help="L (official --audio_size 1,L)")
    c.add_argument("--cross-rates", type=int, nargs="+", default=list(d.cross_rates),
                   help="official --cross_attention_resolutions")
    c.add_argument("--cross-windows", type=int, nargs="+", default=list(d.cross_windows),
                   help="official --cross_attention_windows, one per rate")
    c.add_argument("--head-channels", type=int, default=d.head_channels, help="official --num_head_channels")
    c.add_argument("--self-attention-heads", type=int, default=d.self_attention_heads, help="official --num_heads")
    c.add_argument("--random-shift", action=argparse.BooleanOptionalAction, default=d.random_shift,
                   help="official --cross_attention_shift")
    c.add_argument("--shift-in-eval", action=argparse.BooleanOptionalAction, default=d.shift_in_eval,
                   help="redraw the RS-MMA shift when sampling too, as the official code")
    c.add_argument("--official-windows", action=argparse.BooleanOptionalAction, default=d.official_windows,
                   help="RS-MMA windows cut as the official code (differs only off the released shapes)")
    c.add_argument("--dropout", type=float, default=d.dropout, help="for fine-tuning (official --dropout)")
    a = p.parse_args(argv)
    flags = {k: getattr(a, k) for k in ("frames", "image_size", "audio_samples", "cross_rates", "cross_windows",
                                        "head_channels", "self_attention_heads", "random_shift", "shift_in_eval",
                                        "official_windows", "dropout")}
    try:
        out = convert_file(a.checkpoint, a.out, **flags)
    except (ValueError, OSError) as e:  # CheckpointError, a config that does not validate, an unwritable --out
        sys.exit(f"error: {e}")
    print(out)


if __name__ == "__main__":
    main()
