"""The DiT's mel steps per audio token, chosen on validation clips: the `cpu` DiT trained with each --patches
value (everything else the backbones comparison's recipe), scored on the seed's validation clips (never the test
clips) by the EMA network's denoising loss per modality at fixed noise and steps, and by v2a and a2v onset F1 with
the demo's sampler and λ.

    python experiments/dit_audio_patch.py --out runs/dit-audio-patch

OUT/audio_patch.md holds the table, OUT/audio_patch.json every number; runs resume (train.py's checkpoints).
"""
import argparse
import dataclasses
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import study  # noqa: E402

import data  # noqa: E402
import demo  # noqa: E402
import dit  # noqa: E402
import pipeline  # noqa: E402


def validation_loss(pipe, items: list, seed: int, passes: int = 4) -> dict:
    """The EMA network's L_jdiff terms (CMMD Eq. 2) per modality on the clips' centre windows, averaged over
    `passes` draws of (n, noise) from one generator seeded with `seed`: the same draws for every network."""
    clip, g = pipe.clip, torch.Generator().manual_seed(seed)
    m, ms = clip.margin, clip.margin_samples
    windows = {"video": torch.stack([it["video"][m:m + clip.frames] for it in items]),  # (B, F, 3, H, W) uint8
               "audio": torch.stack([it["audio"][ms:ms + clip.samples] for it in items])}  # (B, L)
    x0 = pipeline.encode_batch(windows, pipe.codecs, pipe.device)  # {"video": (B, F, C, H, W), "audio": (B, M, T)}
    with torch.no_grad():
        pipe.net.eval()
        terms = [pipe.diffusion.joint_loss(pipe.net, x0, generator=g)[1] for _ in range(passes)]
    return {k: float(sum(t[k] for t in terms) / passes) for k in x0}


def parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", default="runs/dit-audio-patch", help="folder of the runs and the table; resumes")
    p.add_argument("--patches", type=int, nargs="+", default=[1, 2, 4], help="mel steps per audio token")
    p.add_argument("--steps", type=int, default=400, help="training steps of each run (the demo's batch)")
    p.add_argument("--clips", type=int, default=32, help="validation clips")
    p.add_argument("--train-clips", type=int, default=512, help="training clips (the comparison's 512)")
    p.add_argument("--seed", type=int, default=0)
    return p


def run_patch(a, patch: int, cpu_preset: dict, shards: Path, items: list, out: Path) -> dict:
    """One arm: the cpu DiT with `patch` mel steps per audio token, trained (or resumed) and scored."""
    dit.PRESETS["cpu"] = {**cpu_preset, "audio_patch": patch}  # the one thing that differs between runs
    recipe = study.base_config(argparse.Namespace(steps=a.steps, batch=8, train_clips=a.train_clips))
    cfg = dataclasses.replace(recipe, model="dit", preset="cpu", data=str(shards), out=str(out / f"patch{patch}"),
                              seed=a.seed)
    pipe = pipeline.load(study.trained(cfg, True))
    scores = demo.evaluate(pipe, items, out / f"samples-patch{patch}",
                           {k: demo.SAMPLER[k] for k in ("sampler", "steps")}, a.seed, save_first=2)["scores"]
    row = {"params": sum(p.numel() for p in pipe.net.parameters()), "loss": validation_loss(pipe, items, a.seed),
           "v2a onset F1": scores["v2a model"]["f1"], "a2v visual F1": scores["a2v model"]["f1"],
           "a2v roughness": scores["a2v model"]["roughness"]}
    print(patch, row, file=sys.stderr)
    return row


def main(argv=None):
    a = parser().parse_args(argv)
    out = Path(a.out)
    clip = data.ClipConfig(size=demo.DEMO_TRAIN.size)
    shards = out / "shards"
    data.prepare("synthetic", shards, clip=clip, seed=a.seed, num_clips={"train": a.train_clips}, progress=False)
    val = data.SyntheticDataset(clip, "val", num_clips=a.clips, seed=a.seed)
    items = [val[i] for i in range(len(val))]
    cpu_preset, rows = dict(dit.PRESETS["cpu"]), {}
    try:
        for patch in a.patches:
            rows[patch] = run_patch(a, patch, cpu_preset, shards, items, out)
    finally:
        dit.PRESETS["cpu"] = cpu_preset  # restored even when a run fails
    head = ("mel steps per token", "parameters", "val. video loss", "val. audio loss", "v2a onset F1",
            "a2v visual F1", "a2v roughness")
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    lines += [f"| {p} | {r['params'] / 1e6:.2f} M | {r['loss']['video']:.4f} | {r['loss']['audio']:.4f} | "
              f"{r['v2a onset F1']:.3f} | {r['a2v visual F1']:.3f} | {r['a2v roughness']:.4f} |"
              for p, r in rows.items()]
    (out / "audio_patch.md").write_text("\n".join(lines) + "\n")
    (out / "audio_patch.json").write_text(json.dumps({"args": vars(a), "rows": rows}, indent=1))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
