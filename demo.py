"""The demo: train a small nCMMD on the synthetic benchmark on a CPU, then measure whether its
video→audio samples put sound onsets where the visual events are, and its audio→video samples put
visual events where the sounds are, against no-model baselines on the same held-out clips; and write
a page to watch and listen to (OUT/index.html).

    python demo.py                  # 3-8 minutes on 2 CPU cores: a fixed number of steps on any machine
    python demo.py --snr-gamma 0    # the paper's uniform loss weighting (README, Results)
    python demo.py --eval-only --split val --guidance-v2a 3 --guidance-a2v 30   # choose λ on validation clips
"""
import argparse
import dataclasses
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

import alignment
import checkpoint
import cli
import data
import figures
import generate
import media
import melspec
import pipeline
import sampling
import train
from modalities import to_uint8, to_unit

SHIFT_S = 0.4  # the no-model baseline: the true signal moved by 400 ms (the window's margin, real content)
# What the demo writes to sampling.json beside its checkpoints (pipeline.RUN_SETTINGS), which sample.py then
# uses: the sampler and λ of the reconstruction guidance (CMMD Eq. 3; 0: replacement) per direction, chosen on
# validation clips (docs/results.md). GUIDANCE and SAMPLER are views of it for the flags.
SAMPLING = {"v2a": {"sampler": "ddim", "steps": 25, "guidance": 3.0},
            "a2v": {"sampler": "ddim", "steps": 25, "guidance": 30.0}}
GUIDANCE = {d: s["guidance"] for d, s in SAMPLING.items()}
SAMPLER = {k: SAMPLING["v2a"][k] for k in ("sampler", "steps")}
REFERENCES = ("ground truth", "shifted 400 ms", "other clip")
DIRECTIONS = {"v2a": "video → audio", "a2v": "audio → video"}
# The demo's run: a tiny nCMMD on 16 px clips through the centred patch-2 pixel codec (pipeline.Centered), a fixed
# number of steps on any machine; the flags below override preset, batch, lr, the loss weighting and steps. [choice]
# Peak lr 4e-3: on validation clips (seeds 0, 2, the uniform loss) twice the earlier 2e-3 got further in both
# directions; 6e-3 did not. [choice] The loss weighted by Min-SNR-5 (diffusion.py; Hang et al. 2023): with the
# paper's uniform weighting the 1 200 steps end while the cross-modal alignment is still being learnt, and which
# seed falls short is chance; on validation clips Min-SNR-5 lifted video→audio F1 on three seeds of four, by
# 0.11-0.23, and left the fourth within 0.02 (README, Results).
DEMO_TRAIN = train.TrainConfig(preset="cpu", vae="pixel", patch=2, center=True, size=16, batch=8, steps=1200, lr=4e-3,
                               lr_min=1e-4, lr_schedule="cosine", warmup=100, ema=0.999, ckpt_every=500,
                               preview_every=0, workers=0, snr_gamma=5.0)


def event_scores(events: np.ndarray, found: np.ndarray) -> dict:
    prf = alignment.onset_prf(events, found, alignment.ONSET_TOLERANCE)
    return {"hits": alignment.hit_count(events, found, alignment.ONSET_TOLERANCE), "matched": prf.matched,
            "n_ref": prf.n_ref, "n_est": prf.n_est}


def audio_scores(truth: dict, wav: torch.Tensor, sample_rate: int) -> dict:
    """Beat hits at ±100 ms against the truth's beats (dance clips; CMMD Table 2) and the mel L1 distance to
    the truth; `truth` holds the true clip's mel and beats (None: no beat), computed once per clip."""
    out = {"mel_l1": (melspec.wav_to_mel(wav[None]) - truth["mel"]).abs().mean().item()}
    if truth["beats"] is not None:
        beats = truth["beats"]
        out.update(beat_hits=alignment.hit_count(beats, alignment.beat_times(wav.numpy(), sample_rate), 0.1),
                   beats=beats.size)
    return out


def pooled(rows: list[dict]) -> dict:
    """Scores over all clips together: F1 and hit rate from the summed counts, mean mel L1, beat hit rate."""
    r = sum(x["n_ref"] for x in rows)
    out = {"f1": alignment.pooled_f1(rows), "hit": sum(x["hits"] for x in rows) / r if r else float("nan")}
    if any("mel_l1" in x for x in rows):
        out["mel_l1"] = float(np.mean([x["mel_l1"] for x in rows]))
    beats = sum(x.get("beats", 0) for x in rows)
    if beats:
        out["beat"] = sum(x.get("beat_hits", 0) for x in rows) / beats
    if any("roughness" in x for x in rows):
        out["roughness"] = float(np.mean([x["roughness"] for x in rows]))
    return out


def guidance_weights(pipe, guidance: dict) -> dict:
    """λ per direction for this model. MM-Diffusion's guidance form takes the mean squared error over the
    condition's elements where CMMD's sums it, so its λ is multiplied by that element count: the same weight
    on the same error."""
    if pipe.sampler().guidance_form != "mmdiffusion":
        return dict(guidance)
    shapes = pipe.shapes(1, pipe.clip.frames)
    n = {"v2a": math.prod(shapes["video"]), "a2v": math.prod(shapes["audio"])}  # elements of each condition
    return {d: lam * n[d] for d, lam in guidance.items()}


def evaluate(pipe, items, out: Path, sampler: dict, seed: int = 0, save_first: int = 4, batch: int = 32,
             guidance: dict | None = None) -> dict:
    """Video→audio and audio→video on held-out windows, scored at ±100 ms against the true event times,
    next to the same scores of the ground truth, the ground truth shifted by 400 ms, and another clip's.
    Samples `batch` clips at a time with `sampler` (SamplerConfig fields), from one generator seeded with
    `seed`, with guidance λ per direction ({"v2a": λ, "a2v": λ}; None: GUIDANCE). Returns {"scores":
    {"v2a model": pooled scores, ...}, "rows": the same per clip, "shown": the files of the first
    `save_first` clips}."""
    lam = guidance_weights(pipe, GUIDANCE if guidance is None else guidance)
    clip = pipe.clip
    m, ms = clip.margin, clip.margin_samples
    shift_f, shift_s = round(SHIFT_S * clip.fps), round(SHIFT_S * clip.sample_rate)
    audio = {"ground truth": [it["audio"][ms:ms + clip.samples] for it in items],
             "shifted 400 ms": [it["audio"][ms + shift_s:ms + shift_s + clip.samples] for it in items]}
    video = {"ground truth": [it["video"][m:m + clip.frames] for it in items],
             "shifted 400 ms": [it["video"][m + shift_f:m + shift_f + clip.frames] for it in items]}
    for signal in (audio, video):
        signal["other clip"] = signal["ground truth"][1:] + signal["ground truth"][:1]  # the next clip's
    device = pipe.device
    g = torch.Generator(device).manual_seed(seed)
    torch.manual_seed(seed)  # Griffin-Lim's initial phases: a score must not depend on what ran before it
    audio["model"], video["model"] = [], []
    shown = []
    for start in range(0, len(items), batch):
        sl = slice(start, start + batch)
        v = to_unit(torch.stack(video["ground truth"][sl]).to(device))  # (b, F, 3, H, W)
        a = torch.stack(audio["ground truth"][sl]).to(device)  # (b, L)
        v2a = generate.generate(pipe, pipe.sampler(**sampler, guidance=lam["v2a"]), cond={"video": v}, generator=g)
        a2v = generate.generate(pipe, pipe.sampler(**sampler, guidance=lam["a2v"]), cond={"audio": a}, generator=g)
        audio["model"] += list(v2a["audio"].cpu())
        video["model"] += list(to_uint8(a2v["video"].cpu()))
        for i in range(max(0, min(save_first - start, len(v)))):  # the first clips as files to look at
            shown.append(show_clip(out, start + i, items[start + i], v2a, a2v, i, clip))
    truths = [{"mel": melspec.wav_to_mel(a[None]),
               "beats": alignment.beat_times(a.numpy(), clip.sample_rate) if float(item["tempo"]) > 0 else None}
              for a, item in zip(audio["ground truth"], items)]
    rows = {}
    for name in ("model", *REFERENCES):
        for i, item in enumerate(items):
            events = item["events"][~item["events"].isnan()].double().numpy()
            wav = audio[name][i]
            rows.setdefault(f"v2a {name}", []).append({
                **event_scores(events, alignment.audio_onsets(wav.numpy(), clip.sample_rate)),
                **audio_scores(truths[i], wav, clip.sample_rate)})
            rows.setdefault(f"a2v {name}", []).append({
                **event_scores(events, alignment.visual_onsets(video[name][i], clip.fps)),
                "roughness": alignment.roughness(video[name][i])})
    noise = torch.randint(0, 256, (len(items), clip.frames, 3, clip.size, clip.size),
                          generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)
    names = [f"{d} {name}" for d in DIRECTIONS for name in ("model", *REFERENCES)]
    return {"scores": {k: pooled(rows[k]) for k in names}, "rows": rows, "shown": shown,
            "noise_roughness": float(np.mean([alignment.roughness(x) for x in noise]))}


def show_clip(out: Path, k: int, item: dict, v2a: dict, a2v: dict, i: int, clip) -> dict:
    """Clip k's files for the page: truth, v2a (the true video with the generated sound) and a2v (the
    generated video with the true sound) mp4s, their mel figure and the a2v frame strip."""
    events = item["events"][~item["events"].isnan()].numpy()
    stem = out / f"clip{k}"
    truth = v2a["video"][i].cpu()  # v2a's condition: the true frames
    media.write_mp4(f"{stem}_truth.mp4", truth, a2v["audio"][i].cpu(), clip.fps, clip.sample_rate)
    generate.save(f"{stem}_v2a", v2a, i, clip, reference=a2v["audio"][i].cpu(), events=events,
                  title=f"clip {k}: video → audio")
    generate.save(f"{stem}_a2v", a2v, i, clip, reference=None, events=events, title=f"clip {k}: audio → video")
    figures.frame_strip(f"{stem}_frames.png", {"generated": a2v["video"][i].cpu(), "truth": truth}, fps=clip.fps,
                        events=events, title=f"clip {k}: audio → video frames")
    name = item["name"].rsplit("-", 1)[-1]
    return {"name": f"clip {k} ({name})", "caption": "true events at " + ", ".join(f"{t:.1f}" for t in events) + " s",
            "directions": [
                {"title": DIRECTIONS["v2a"],
                 "videos": [("generated sound", f"{stem}_v2a.mp4"), ("truth", f"{stem}_truth.mp4")],
                 "images": [("mel spectrograms", f"{stem}_v2a_mel.png")]},
                {"title": DIRECTIONS["a2v"],
                 "videos": [("generated video", f"{stem}_a2v.mp4"), ("truth", f"{stem}_truth.mp4")],
                 "images": [("frames", f"{stem}_frames.png")]}]}


def summary(result: dict, seed: int = 0) -> dict:
    """Per direction: the model's F1 minus the shifted truth's, with a 95 % paired bootstrap interval over clips."""
    rows = result["rows"]
    return {d: dict(zip(("delta", "lo", "hi"),
                        alignment.paired_bootstrap(rows[f"{d} model"], rows[f"{d} shifted 400 ms"], seed=seed)))
            for d in DIRECTIONS}


def table_rows(result: dict, margin: dict) -> list[list]:
    s = result["scores"]
    rows = [["held-out clips", "onset F1 ±100 ms", "event hit rate ±100 ms", "model − shifted F1 [95 % CI]",
             "frame roughness"]]
    for d in DIRECTIONS:
        for name in ("model", *REFERENCES):
            x = s[f"{d} {name}"]
            ci = (f"{margin[d]['delta']:+.3f} [{margin[d]['lo']:+.3f}, {margin[d]['hi']:+.3f}]"
                  if name == "model" else "")
            rows.append([f"{d} {name}", f"{x['f1']:.3f}", f"{x['hit']:.3f}", ci,
                         f"{x['roughness']:.3f}" if d == "a2v" else ""])
    rows.append(["a2v uniform noise", "", "", "", f"{result['noise_roughness']:.3f}"])
    return rows


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", default="runs/demo", help="run directory")
    p.add_argument("--steps", type=int, default=DEMO_TRAIN.steps, help="training steps (the same on every machine)")
    p.add_argument("--minutes", type=float, default=0.0, help="optional cap on the training time (0: none); "
                   "a capped run's result depends on the machine's speed")
    p.add_argument("--preset", default=DEMO_TRAIN.preset, help="network preset",
                   choices=train.TrainConfig.__dataclass_fields__["preset"].metadata["choices"])
    p.add_argument("--train-clips", type=int, default=512, help="synthetic training clips, generated once")
    p.add_argument("--batch", type=int, default=DEMO_TRAIN.batch, help="clips per step")
    p.add_argument("--lr", type=float, default=DEMO_TRAIN.lr, help="peak Adam learning rate (cosine to lr-min)")
    p.add_argument("--snr-gamma", type=float, default=DEMO_TRAIN.snr_gamma,
                   help="γ of the Min-SNR-γ loss weighting (0: uniform, the paper's)")
    p.add_argument("--clips", type=int, default=64, help="held-out clips to evaluate")
    p.add_argument("--sampler", default=SAMPLER["sampler"], choices=list(sampling.SOLVERS), help="sampler")
    p.add_argument("--sample-steps", type=int, default=SAMPLER["steps"], help="sampling steps")
    for d, name in DIRECTIONS.items():
        p.add_argument(f"--guidance-{d}", type=float, default=GUIDANCE[d], help=f"λ of {name} (Eq. 3; 0: replacement)")
    p.add_argument("--split", default="test", choices=("val", "test"),
                   help="held-out clips to score (val: to choose λ)")
    p.add_argument("--eval-only", action="store_true", help="skip training: score the newest checkpoint in OUT/model")
    p.add_argument("--show", type=int, default=4, help="clips shown on the page")
    p.add_argument("--seed", type=int, default=0, help="seed of the data, the training and the sampling")
    return p.parse_args(argv)


def main(argv=None):
    a = parse_args(argv)
    cli.run(run, a)


def run(a):
    t0, out = time.time(), Path(a.out)
    for name in ("steps", "train_clips", "batch", "clips", "sample_steps"):
        if getattr(a, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(a, name)}")
    cli.check_range("show", a.show, 0)
    cli.check_range("minutes", a.minutes, 0)
    for d in DIRECTIONS:
        cli.check_range(f"guidance-{d}", getattr(a, f"guidance_{d}"), 0)
    if a.eval_only and train.latest_checkpoint(out / "model") is None:
        raise ValueError(f"{out / 'model'}: no checkpoint to evaluate (run without --eval-only first)")
    cli.check_writable_dir(out)
    cfg = dataclasses.replace(DEMO_TRAIN, preset=a.preset, batch=a.batch, lr=a.lr, snr_gamma=a.snr_gamma, steps=a.steps,
                              time_limit=a.minutes, seed=a.seed, data=str(out / "shards"), out=str(out / "model"))
    train.check_config(cfg)  # --lr, --minutes: before the clips are generated
    print(f"1/3 generating {a.train_clips} synthetic training clips once", file=sys.stderr)
    clip = data.ClipConfig(size=DEMO_TRAIN.size)
    data.prepare("synthetic", out / "shards", clip=clip, seed=a.seed, num_clips={"train": a.train_clips},
                 progress=False)
    if not a.eval_only:
        print(f"2/3 training a {a.preset} nCMMD on synthetic {clip.size} px clips for {a.steps} steps "
              f"(resumes if {cfg.out} has a checkpoint)", file=sys.stderr)
    ckpt = train.latest_checkpoint(out / "model") if a.eval_only else train.train(cfg)
    t_train = time.time() - t0
    pipe = pipeline.load(ckpt)
    guidance = {d: getattr(a, f"guidance_{d}") for d in DIRECTIONS}
    if not a.eval_only:  # sample.py on this run's checkpoints samples as the demo does (pipeline.RUN_SETTINGS)
        checkpoint.write_text(Path(cfg.out) / pipeline.RUN_SETTINGS, json.dumps(
            {d: {"sampler": a.sampler, "steps": a.sample_steps, "guidance": lam}
             for d, lam in guidance_weights(pipe, guidance).items()}, indent=1))
    print(f"3/3 sampling {a.clips} {a.split} clips both ways ({a.sampler}, {a.sample_steps} steps, guidance λ "
          f"v2a {guidance['v2a']:g}, a2v {guidance['a2v']:g})", file=sys.stderr)
    held_out = data.SyntheticDataset(pipe.clip, a.split, num_clips=a.clips, seed=a.seed)
    samples = out / ("samples" if a.split == "test" else f"samples-{a.split}")
    result = evaluate(pipe, [held_out[i] for i in range(len(held_out))], samples,
                      {"sampler": a.sampler, "steps": a.sample_steps}, a.seed, save_first=a.show, guidance=guidance)
    margin = summary(result, a.seed)
    step = int(ckpt.stem.split("-")[-1])
    rows = table_rows(result, margin)
    checkpoint.write_text(out / f"scores-{a.split}.json", json.dumps(
        {"guidance": guidance, "sampler": {"sampler": a.sampler, "steps": a.sample_steps}, "checkpoint": ckpt.name,
         "step": step, "clips": a.clips, "margin": margin, "noise_roughness": result["noise_roughness"],
         **result["scores"]},
        indent=1))
    page = figures.write_page(out / ("index.html" if a.split == "test" else f"index-{a.split}.html"),
                              title="cmmd demo: a tiny nCMMD on the synthetic benchmark",
                              intro=intro(a, pipe.config["train"], step, guidance),
                              table=rows, clips=result["shown"])
    done = f"scored {ckpt}" if a.eval_only else f"trained {ckpt.name} in {t_train / 60:.1f} min"
    print(f"\n{done}; total {(time.time() - t0) / 60:.1f} min\n")
    print("| " + " | ".join(rows[0]) + " |\n|" + "---|" * len(rows[0]))
    for r in rows[1:]:
        print("| " + " | ".join(map(str, r)) + " |")
    print(f"\nthe page to watch and listen to: {page}")
    beats = {d: margin[d]["lo"] > 0 for d in DIRECTIONS}
    print("model beats the 400 ms-shifted truth (95 % interval above 0): "
          + ", ".join(f"{d} {'yes' if b else 'NO'} ({margin[d]['delta']:+.3f})" for d, b in beats.items()))


def intro(a, trained: dict, step: int, guidance: dict) -> str:
    """The page's description: the network, batch and loss weighting from the checkpoint's training config
    (`trained`; an --eval-only run describes the model it scores), the sampling from this run's flags."""
    gamma = trained.get("snr_gamma", 0.0)  # absent from checkpoints older than the weighting: uniform
    weighting = f"the loss weighted by Min-SNR-{gamma:g}" if gamma > 0 else "the uniform loss of CMMD Eq. 2"
    return (f"A {trained['preset']} nCMMD trained {step} steps (batch {trained['batch']}, {weighting}) on synthetic "
            f"{trained['size']} px clips, sampled with "
            f"{a.sampler} at {a.sample_steps} steps and reconstruction guidance λ = {guidance['v2a']:g} "
            f"(video → audio), {guidance['a2v']:g} (audio → video), on {a.clips} held-out {a.split} clips. "
            f"Onset F1 and hit rate at ±100 ms against the true event times; the model's F1 minus the 400 ms-shifted "
            f"truth's, with a 95 % paired bootstrap interval over clips. Frame roughness (mean absolute difference of "
            f"neighbouring pixels) tells a rendered scene from noise.\n\nvideo → audio: the true video with the "
            f"generated sound. audio → video: the generated frames with the true sound.")


if __name__ == "__main__":
    main()
