"""The demo: train a small nCMMD on the synthetic benchmark on a CPU, then measure whether its
video→audio samples put sound onsets where the visual events are, and its audio→video samples put
visual events where the sounds are, against no-model baselines on the same held-out clips.

    python demo.py                  # about 10 minutes on 2 CPU cores
    python demo.py --minutes 30     # longer training, better samples
    python demo.py --eval-only --split val --guidance-v2a 3 --guidance-a2v 30   # choose λ on validation clips
"""
import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

import data
import metrics
import pipeline
import sample
import train

SHIFT_S = 0.4  # the no-model baseline: the true signal moved by 400 ms (the window's margin, real content)
# λ of the reconstruction guidance (CMMD Eq. 3) per direction, chosen on the validation split for the demo's
# model (README, "Quickstart"); λ = 0 is the replacement method.
GUIDANCE = {"v2a": 10.0, "a2v": 300.0}


def event_scores(events: np.ndarray, found: np.ndarray) -> dict:
    prf = metrics.onset_prf(events, found, metrics.ONSET_TOLERANCE)
    return {"f1": prf.f1, "hit": metrics.hit_rate(events, found, metrics.ONSET_TOLERANCE), "matched": prf.matched,
            "n_ref": prf.n_ref, "n_est": prf.n_est}


def audio_scores(truth: torch.Tensor, wav: torch.Tensor, tempo: float, sample_rate: int) -> dict:
    """Beat hits at ±100 ms against the truth's beats (dance clips: tempo > 0; CMMD Table 2) and the mel
    L1 distance to the truth."""
    out = {"mel_l1": (data.wav_to_mel(wav[None]) - data.wav_to_mel(truth[None])).abs().mean().item()}
    if tempo > 0:
        beats = metrics.beat_times(truth.numpy(), sample_rate)
        out.update(beat_hits=metrics.hit_count(beats, metrics.beat_times(wav.numpy(), sample_rate), 0.1), beats=beats.size)
    return out


def pooled(rows: list[dict]) -> dict:
    """Scores over all clips together: F1, hit rates from the summed counts, mean mel L1."""
    m, r, e = (sum(x[k] for x in rows) for k in ("matched", "n_ref", "n_est"))
    hits = sum(x["hit"] * x["n_ref"] for x in rows)
    out = {"f1": 2 * m / (r + e) if r + e else float("nan"), "hit": hits / r if r else float("nan")}
    if any("mel_l1" in x for x in rows):
        out["mel_l1"] = float(np.mean([x["mel_l1"] for x in rows]))
    beats = sum(x.get("beats", 0) for x in rows)
    if beats:
        out["beat"] = sum(x.get("beat_hits", 0) for x in rows) / beats
    return out


def guidance_weights(pipe, guidance: dict) -> dict:
    """λ per direction for this model. MM-Diffusion's guidance form takes the mean squared error over the
    condition's elements where CMMD's sums it, so its λ is multiplied by that element count: the same weight
    on the same error."""
    if pipe.sampler().guidance_form != "mmdiffusion":
        return dict(guidance)
    clip, codecs = pipe.clip, pipe.codecs
    side = clip.size // codecs["video"].factor
    n = {"v2a": clip.frames * codecs["video"].channels * side * side,  # elements of the video condition
         "a2v": codecs["audio"].channels * codecs["audio"].steps(clip.samples)}  # of the audio condition
    return {d: lam * n[d] for d, lam in guidance.items()}


def evaluate(pipe, items, out: Path, sampler: dict, seed: int = 0, save_first: int = 4,
             batch: int = 16, guidance: dict | None = None) -> dict:
    """Video→audio and audio→video on held-out windows, scored at ±100 ms against the true event times,
    next to the same scores of the ground truth, the ground truth shifted by 400 ms, and another clip's.
    Samples `batch` clips at a time, from one generator seeded with `seed`, with guidance λ per direction
    ({"v2a": λ, "a2v": λ}; None: GUIDANCE)."""
    lam = guidance_weights(pipe, GUIDANCE if guidance is None else guidance)
    clip = pipe.clip
    m, ms, shift_f, shift_s = clip.margin, clip.margin_samples, round(SHIFT_S * clip.fps), round(SHIFT_S * clip.sample_rate)
    refs = ("ground truth", "shifted 400 ms", "other clip")
    audio = {"ground truth": [it["audio"][ms:ms + clip.samples] for it in items],
             "shifted 400 ms": [it["audio"][ms + shift_s:ms + shift_s + clip.samples] for it in items]}
    video = {"ground truth": [it["video"][m:m + clip.frames] for it in items],
             "shifted 400 ms": [it["video"][m + shift_f:m + shift_f + clip.frames] for it in items]}
    for signal in (audio, video):
        signal["other clip"] = signal["ground truth"][1:] + signal["ground truth"][:1]  # the next clip's
    device = pipe.device
    g = torch.Generator(device).manual_seed(seed)
    audio["model"], video["model"] = [], []
    for start in range(0, len(items), batch):
        sl = slice(start, start + batch)
        v = torch.stack(video["ground truth"][sl]).float().to(device) / 127.5 - 1  # (b, F, 3, H, W)
        a = torch.stack(audio["ground truth"][sl]).to(device)  # (b, L)
        v2a = sample.generate(pipe, pipe.sampler(**sampler, guidance=lam["v2a"]), cond={"video": v}, generator=g)
        a2v = sample.generate(pipe, pipe.sampler(**sampler, guidance=lam["a2v"]), cond={"audio": a}, generator=g)
        audio["model"] += list(v2a["audio"].cpu())
        video["model"] += list(data.to_uint8(a2v["video"].cpu()))
        for i in range(max(0, min(save_first - start, len(v)))):  # the first clips as files to look at
            sample.save(out / f"clip{start + i}_v2a", v2a, i, clip, reference=a[i])
            sample.save(out / f"clip{start + i}_a2v", a2v, i, clip, reference=a[i])
            data.write_mp4(out / f"clip{start + i}_truth.mp4", video["ground truth"][start + i], a[i].cpu(), clip.fps,
                           clip.sample_rate)
    rows = {}
    for name in ("model", *refs):
        for i, item in enumerate(items):
            events = item["events"][~item["events"].isnan()].double().numpy()
            truth, wav = audio["ground truth"][i], audio[name][i]
            rows.setdefault(f"v2a {name}", []).append({
                **event_scores(events, metrics.audio_onsets(wav.numpy(), clip.sample_rate)),
                **audio_scores(truth, wav, float(item["tempo"]), clip.sample_rate)})
            rows.setdefault(f"a2v {name}", []).append(event_scores(events, metrics.visual_onsets(video[name][i], clip.fps)))
    return {k: pooled(rows[k]) for k in (f"{d} {name}" for d in ("v2a", "a2v") for name in ("model", *refs))}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", default="runs/demo", help="run directory")
    p.add_argument("--minutes", type=float, default=8.0, help="training time budget")
    p.add_argument("--steps", type=int, default=100_000, help="training steps (the time budget usually ends it first)")
    p.add_argument("--preset", default="tiny", help="network preset")
    p.add_argument("--size", type=int, default=16, help="frame side in pixels")
    p.add_argument("--train-clips", type=int, default=512, help="synthetic training clips, generated once")
    p.add_argument("--batch", type=int, default=8, help="clips per step")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (higher than the paper's for a short run)")
    p.add_argument("--clips", type=int, default=16, help="held-out clips to evaluate")
    p.add_argument("--sample-steps", type=int, default=50, help="DDIM steps when sampling")
    for d, name in (("v2a", "video→audio"), ("a2v", "audio→video")):
        p.add_argument(f"--guidance-{d}", type=float, default=GUIDANCE[d], help=f"λ of {name} (Eq. 3; 0: replacement)")
    p.add_argument("--split", default="test", choices=("val", "test"), help="held-out clips to score (val: to choose λ)")
    p.add_argument("--eval-only", action="store_true", help="skip training: score the newest checkpoint in OUT/model")
    p.add_argument("--seed", type=int, default=0, help="seed")
    a = p.parse_args(argv)
    t0, out = time.time(), Path(a.out)
    if a.eval_only and train.latest_checkpoint(out / "model") is None:
        sys.exit(f"error: {out / 'model'}: no checkpoint to evaluate (run without --eval-only first)")
    print(f"0/2 generating {a.train_clips} synthetic training clips once", file=sys.stderr)
    data.prepare("synthetic", out / "shards", clip=data.ClipConfig(size=a.size), seed=a.seed,
                 num_clips={"train": a.train_clips})
    cfg = train.parse_args(["--data", str(out / "shards"), "--out", str(out / "model"), "--preset", a.preset, "--vae", "pixel",
                            "--size", str(a.size), "--batch", str(a.batch), "--steps", str(a.steps), "--lr", str(a.lr),
                            "--lr-min", str(a.lr), "--ema", "0.999", "--time-limit", str(a.minutes), "--ckpt-every", "500",
                            "--preview-every", "0", "--seed", str(a.seed), "--workers", "0"])
    if not a.eval_only:
        print(f"1/2 training a {a.preset} nCMMD on synthetic {a.size} px clips for up to {a.minutes:g} min "
              f"(resumes if {cfg.out} has a checkpoint)", file=sys.stderr)
    ckpt = train.latest_checkpoint(out / "model") if a.eval_only else train.train(cfg)
    t_train = time.time() - t0
    pipe = pipeline.load(ckpt)
    guidance = {"v2a": a.guidance_v2a, "a2v": a.guidance_a2v}
    print(f"2/2 sampling {a.clips} {a.split} clips both ways ({a.sample_steps} DDIM steps each, guidance λ "
          f"v2a {a.guidance_v2a:g}, a2v {a.guidance_a2v:g})", file=sys.stderr)
    test = data.SyntheticDataset(pipe.clip, a.split, num_clips=a.clips, seed=a.seed)
    samples = out / ("samples" if a.split == "test" else f"samples-{a.split}")
    scores = evaluate(pipe, [test[i] for i in range(len(test))], samples, {"sampler": "ddim", "steps": a.sample_steps},
                      a.seed, guidance=guidance)
    (out / f"scores-{a.split}.json").write_text(json.dumps({"guidance": guidance, "checkpoint": ckpt.name, **scores}, indent=1))
    done = f"scored {ckpt}" if a.eval_only else f"trained {ckpt.name} in {t_train / 60:.1f} min"
    print(f"\n{done}; total {(time.time() - t0) / 60:.1f} min\n")
    print(f"| held-out synthetic clips ({a.split}) | onset F1 ±100 ms | event hit rate ±100 ms |\n|---|---|---|")
    for name, s in scores.items():
        print(f"| {name} | {s['f1']:.3f} | {s['hit']:.3f} |")
    print(f"\nsamples (mp4 with sound, mel PNGs: generated above, truth below): {samples}")
    for f in sorted(samples.glob("clip0_*")):
        print(f"  {f}")
    better = {d: scores[f"{d} model"]["f1"] > scores[f"{d} shifted 400 ms"]["f1"] for d in ("v2a", "a2v")}
    print("\nmodel beats the 400 ms-shifted baseline: " + ", ".join(f"{d} {'yes' if b else 'NO'}" for d, b in better.items()))


if __name__ == "__main__":
    main()
