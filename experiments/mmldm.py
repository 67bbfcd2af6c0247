"""MM-LDM (mmldm.py: its multi-modal autoencoder, then a DiT over the two content latents with trained
conditional modes) against CMMD's U-Net and the DiT on CMMD's codecs, on the synthetic benchmark: paired
differences with 95 % intervals over seeds and clips, the autoencoder's reconstruction quality, and the
sampling time per clip.

    python experiments/mmldm.py --out runs/study      # beside experiments/backbones.py in the same folder
    python experiments/mmldm.py --out /tmp/smoke --smoke

It shares experiments/study.py's folder, clips and machinery: the U-Net (nCMMD) and the DiT are
experiments/backbones.py's arms of the same name, reused when they exist. MM-LDM is trained with the demo's
recipe in both stages, in two arms: at equal training wall time (its generator the DiT's N steps, its
autoencoder the steps left of the U-Net's N steps' time on one CPU, from `python bench.py --backbones`), and at
the same steps (N of each stage). It is sampled with its trained conditions alone (λ 0, as MM-LDM samples).
OUT/mmldm.md holds the tables, OUT/mmldm.json every number.
"""
import dataclasses
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))

import backbones  # noqa: E402
import study  # noqa: E402
import torch  # noqa: E402

import data  # noqa: E402
import demo  # noqa: E402
import generate  # noqa: E402
import melspec  # noqa: E402
import pipeline  # noqa: E402
import train  # noqa: E402
from alignment import audio_onsets, visual_onsets  # noqa: E402
from modalities import to_uint8, to_unit  # noqa: E402

MMLDM = dict(model="mmldm", preset="cpu", cond_tasks=backbones.COND_TASKS)
# [choice] Equal training wall time is a fixed step count, never a time budget: the generator takes N steps (the
# recipe of every other arm) and the autoencoder the rest of the U-Net's N steps' time, from the per-step costs
# relative to the U-Net's that `python bench.py --backbones` measured side by side on the 2-core AVX-512 AMD EPYC
# that ran the study (docs/mmldm.md): N = 1200 gives 482 autoencoder steps.
AE_PER_UNET_STEP, GEN_PER_UNET_STEP = 1.353, 0.457
RECON_SAMPLER = {"sampler": "dpmsolver++", "steps": 25}  # the demo's sampler, for the decoder alone
TIMED_CLIPS = 4  # clips whose v2a and a2v sampling are timed per arm, one at a time


def ae_steps(a) -> int:
    """The autoencoder's steps at equal training wall time (the module docstring)."""
    return max(1, round(a.steps * (1 - GEN_PER_UNET_STEP) / AE_PER_UNET_STEP))


def design(a) -> study.Design:
    """The arms and comparisons of issue 29; the U-Net and the DiT are experiments/backbones.py's."""
    base = study.base_config(a)
    dit = dataclasses.replace(base, **backbones.DIT)
    wall = dataclasses.replace(base, **MMLDM, ae_steps=ae_steps(a))
    same = dataclasses.replace(base, **MMLDM, ae_steps=a.steps)
    names = ("MM-LDM, equal training wall time", "MM-LDM, the same steps", "DiT", "U-Net (nCMMD)")
    arms = [study.Arm(names[0], "mmldm", wall, guidance=backbones.UNGUIDED),
            study.Arm(names[1], "mmldm-steps", same, guidance=backbones.UNGUIDED),
            study.Arm(names[2], "dit", dit), study.Arm(names[3], "ncmmd", base)]
    comparisons = [(f"{m} against the {b}", m, b, {}) for m in names[:2] for b in names[2:]]
    return study.Design("mmldm", arms, comparisons, two_sided=True,
                        headline=("v2a onset F1", "dance beat hit ±100 ms", "a2v visual F1"))


def reconstruction(ckpt: Path, items: list, seed: int) -> dict:
    """The autoencoder of an MM-LDM checkpoint on the test clips: encode both modalities, decode both (the demo's
    sampler), and score the result as demo.evaluate scores a model: the mel L1 to the truth, and whether the
    events survive (the onset F1 of the reconstructed audio and frames against the true event times)."""
    pipe = pipeline.load(ckpt)
    clip, g = pipe.clip, torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # Griffin-Lim's phases
    m, ms = clip.margin, clip.margin_samples
    rows = {"v2a": [], "a2v": []}
    for lo in range(0, len(items), 32):
        part = items[lo:lo + 32]
        truth = {"video": to_unit(torch.stack([it["video"][m:m + clip.frames] for it in part])),
                 "audio": torch.stack([it["audio"][ms:ms + clip.samples] for it in part])}
        x = {k: pipe.codecs[k].encode(v) for k, v in truth.items()}
        with torch.no_grad():
            z = pipe.autoencoder.encode(x)
        out = pipe.autoencoder.decode(pipe.ae_diffusion, z, {k: tuple(v.shape) for k, v in x.items()},
                                      pipe.sampler(**RECON_SAMPLER), g, guidance=0.0)
        with torch.no_grad():
            signal = {k: pipe.codecs[k].decode(v).float() for k, v in out.items()}  # frames in [-1, 1], (b, L)
        for i, it in enumerate(part):
            events = it["events"][~it["events"].isnan()].double().numpy()
            wav = signal["audio"][i, :clip.samples]
            true_mel = {"mel": melspec.wav_to_mel(truth["audio"][i][None]), "beats": None}
            rows["v2a"].append({**demo.event_scores(events, audio_onsets(wav.numpy(), clip.sample_rate)),
                                **demo.audio_scores(true_mel, wav, clip.sample_rate)})
            rows["a2v"].append(demo.event_scores(events, visual_onsets(to_uint8(signal["video"][i]), clip.fps)))
    return {k: demo.pooled(v) for k, v in rows.items()}


def sampling_seconds(ckpt: Path, items: list, arm: study.Arm) -> float:
    """Median wall seconds to sample one clip's v2a and a2v as demo.evaluate samples the arm (its sampler and λ),
    at batch 1."""
    pipe = pipeline.load(ckpt)
    clip, lam = pipe.clip, demo.guidance_weights(pipe, arm.guidance or demo.GUIDANCE)
    times = []
    for it in items[:TIMED_CLIPS]:
        v = to_unit(it["video"][None, clip.margin:clip.margin + clip.frames])
        a = it["audio"][None, clip.margin_samples:clip.margin_samples + clip.samples]
        t = time.perf_counter()
        for direction, cond in (("v2a", {"video": v}), ("a2v", {"audio": a})):
            generate.generate(pipe, pipe.sampler(**demo.SAMPLER, guidance=lam[direction]), cond=cond,
                              generator=torch.Generator().manual_seed(0))
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def extra(a, out: Path) -> tuple[list[str], dict]:
    """The step counts, sizes, the autoencoder's reconstruction per seed, and the sampling time per clip."""
    clip = data.ClipConfig(size=demo.DEMO_TRAIN.size)
    d, recon, seconds, sizes = design(a), {}, {}, {}
    for arm in d.arms:
        ckpts = [train.latest_checkpoint(out / f"seed{s}" / arm.slug) for s in a.seeds]
        test = data.SyntheticDataset(clip, "test", num_clips=a.clips, seed=a.seeds[0])
        items = [test[i] for i in range(len(test))]
        seconds[arm.name] = sampling_seconds(ckpts[0], items, arm)
        pipe = pipeline.load(ckpts[0])
        sizes[arm.name] = {"network": sum(p.numel() for p in pipe.net.parameters()),
                           "autoencoder": sum(p.numel() for p in pipe.autoencoder.parameters())
                           if pipe.autoencoder is not None else 0}
        if arm.cfg.model == "mmldm":
            per_seed = []
            for s, ckpt in zip(a.seeds, ckpts):
                test = data.SyntheticDataset(clip, "test", num_clips=a.clips, seed=s)
                per_seed.append(reconstruction(ckpt, [test[i] for i in range(len(test))], s))
            recon[arm.name] = per_seed
    lines = [f"N = {a.steps} steps at batch {a.batch}; MM-LDM at equal training wall time: {ae_steps(a)} autoencoder "
             f"steps, then {a.steps} generator steps; at the same steps: {a.steps} of each; trained conditional "
             f"modes on {backbones.COND_TASKS:g} of the generator's examples.",
             "Sizes (the network; MM-LDM's frozen autoencoder beside it): " + "; ".join(
                 f"{k}: {v['network'] / 1e6:.2f} M" + (f" + {v['autoencoder'] / 1e6:.2f} M" if v["autoencoder"] else "")
                 for k, v in sizes.items()),
             "The autoencoder's reconstruction of the test clips (decoded with the demo's sampler), per seed: "
             + "; ".join(f"{k}: " + ", ".join(f"mel L1 {r['v2a']['mel_l1']:.3f}, audio onset F1 {r['v2a']['f1']:.3f}, "
                                              f"visual onset F1 {r['a2v']['f1']:.3f}" for r in v)
                         for k, v in recon.items()),
             f"Sampling time per clip, v2a and a2v together with each arm's λ, batch 1, {demo.SAMPLER['steps']} "
             f"{demo.SAMPLER['sampler']} steps (median of {TIMED_CLIPS} clips, seed {a.seeds[0]}'s checkpoints): "
             + "; ".join(f"{k}: {v:.2f} s" for k, v in seconds.items()) + f"; {study.cpu_name()}."]
    return lines, {"reconstruction": recon, "sampling_seconds": seconds, "sizes": sizes, "ae_steps": ae_steps(a)}


def main(argv=None):
    p = backbones.parser()
    p.description = __doc__.split("\n\n")[0]
    a = p.parse_args(argv)
    if a.smoke:
        study.smoke(a)
    a.seeds = a.seeds or ([0] if a.smoke else [0, 1, 2])
    study.run(a, design(a), extra)


if __name__ == "__main__":
    main()
