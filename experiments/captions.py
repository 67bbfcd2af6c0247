"""Text on the synthetic benchmark (issue 30): does a captioned DiT follow its caption, is seed 002's two-step
text→video→audio better synchronised than joint text→audio+video, and does a caption help video→audio? Each a
paired difference with a 95 % interval over seeds and held-out test clips (captions in the held-out phrasing).

    python experiments/captions.py --out runs/text
    python experiments/captions.py --out /tmp/smoke --smoke

Per seed: a DiT (`cpu` preset) with the offline caption encoder (text.py) trained with the demo's recipe on
captioned synthetic clips (--caption-drop 0.1), then, on the test clips, with the demo's sampler, one generator
and classifier-free guidance --cfg (fixed, not tuned on these clips):

- joint generation from each clip's caption, and from a shuffled caption (the next clip's of the same kind);
- two-step generation from each caption: the joint arm's video, then that video's sound from it and the caption
  (so the two arms share their video, and differ only in how its sound was made);
- video→audio of each clip's true video, with its caption and without one (the demo's λ).

Adherence is scored against the clip's own caption (parsed from its words): the tempo of the generated audio
(librosa's beat tracker) within TEMPO_TOLERANCE of the caption's bpm (dance clips), the dominant pitch of the
generated audio within half a semitone of one of the caption's notes (bounce clips), and the dominant saturated
colour of the generated frames among the caption's colours; the same scores of the true clip are the detectors'
ceiling (the thresholds are fixed here, not fitted to any clips; librosa's tracker has a prior near 120 bpm,
which the truth's row shows). Every arm samples each batch with its own generator seeded by (seed, batch), so
clip i draws the same noise in every arm. Synchronisation is the onset F1 of the generated audio against the
generated video's own visual events (±100 ms). OUT/captions.md holds the tables, OUT/captions.json every
number; every stage resumes.
"""
import argparse
import dataclasses
import json
import re
import sys
from pathlib import Path

import librosa
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

import alignment  # noqa: E402
import data  # noqa: E402
import demo  # noqa: E402
import generate  # noqa: E402
import pipeline  # noqa: E402
import synthetic  # noqa: E402
import text  # noqa: E402
import train  # noqa: E402
from modalities import to_uint8, to_unit  # noqa: E402

TEMPO_TOLERANCE = 0.08  # a tempo within 8 % of the caption's bpm is a hit
SEMITONE = 2 ** (1 / 12)
NOTE_HZ = {f"{n}{o}": f * 2.0 ** (o - 4) for n, f in (("C", 261.6), ("E", 329.6), ("G", 392.0)) for o in (3, 4, 5, 6)}
ARMS = ("joint", "joint, shuffled caption", "two-step", "v2a with caption", "v2a without caption", "ground truth")
COMPARISONS = [  # (claim, arm A, arm B, metric)
    *[("adherence: the caption against a shuffled one", "joint", "joint, shuffled caption", m)
      for m in ("tempo", "pitch", "colour")],
    ("synchronisation: two-step against joint (seed 002's claim)", "two-step", "joint", "sync"),
    *[("adherence: two-step against joint", "two-step", "joint", m) for m in ("tempo", "pitch")],
    *[("v2a: with the caption against without", "v2a with caption", "v2a without caption", m)
      for m in ("tempo", "pitch", "f1")]]
alignment.RATIOS.update({m: (lambda r, m=m: r.get(f"{m}_hit", 0), lambda r, m=m: r.get(f"{m}_n", 0))
                         for m in ("tempo", "pitch", "colour")})
alignment.RATIOS["sync"] = alignment.RATIOS["f1"]


def caption_facts(caption: str) -> dict:
    """What a synthetic caption says: {"bpm": int or None, "notes": [Hz], "colours": [palette index]}."""
    bpm = re.search(r"(\d+) (?:bpm|beats per minute)", caption)
    notes = [NOTE_HZ[w] for w in re.findall(r"\b([CEG]\d)\b", caption)]
    objects = re.sub(r"dark \w+", "", caption)  # the background's colour is no object's
    colours = [i for i, name in enumerate(synthetic.COLOUR_NAMES) if re.search(rf"\b{name}\b", objects)]
    return {"bpm": int(bpm.group(1)) if bpm else None, "notes": notes, "colours": colours}


def dominant_pitch(wav: np.ndarray, sr: int) -> float:
    """The frequency (Hz) of the strongest spectral peak between 100 and 1 100 Hz, over the whole clip."""
    spec = np.abs(np.fft.rfft(wav * np.hanning(len(wav))))
    freqs = np.fft.rfftfreq(len(wav), 1 / sr)
    band = (freqs > 100) & (freqs < 1100)
    return float(freqs[band][np.argmax(spec[band])])


def dominant_colour(video: torch.Tensor) -> int | None:
    """The palette colour most of the saturated pixels of uint8 frames (F, 3, H, W) are nearest to (None: none)."""
    px = video.permute(0, 2, 3, 1).reshape(-1, 3).float().numpy() / 255  # (F·H·W, 3)
    px = px[px.max(1) - px.min(1) > 0.3]  # saturated: the balls and the figure, not the dark background or a flash
    if not len(px):
        return None
    unit = px / px.max(1, keepdims=True)
    nearest = np.argmin(((unit[:, None] - synthetic.PALETTE[None]) ** 2).sum(-1), 1)
    return int(np.bincount(nearest, minlength=len(synthetic.PALETTE)).argmax())


def scores(caption: str, wav: torch.Tensor, video: torch.Tensor | None, clip, events=None) -> dict:
    """One output's row against a caption: tempo, pitch and colour hits with their counts, and the onset F1
    counts of the audio against `events` (given) or the video's own visual events (synchronisation)."""
    facts, row, sr = caption_facts(caption), {}, clip.sample_rate
    a = wav.numpy()
    if facts["bpm"]:
        tempo = float(np.atleast_1d(librosa.beat.beat_track(y=a, sr=sr, hop_length=256)[0])[0])
        row.update(tempo_hit=int(abs(tempo - facts["bpm"]) <= TEMPO_TOLERANCE * facts["bpm"]), tempo_n=1)
    if facts["notes"]:
        f0 = dominant_pitch(a, sr)
        row.update(pitch_hit=int(any(1 / SEMITONE ** 0.5 < f0 / f < SEMITONE ** 0.5 for f in facts["notes"])),
                   pitch_n=1)
    if video is not None and facts["colours"]:
        row.update(colour_hit=int(dominant_colour(video) in facts["colours"]), colour_n=1)
    reference = events if events is not None else (alignment.visual_onsets(video, clip.fps) if video is not None
                                                   else None)
    if reference is not None:
        row.update(demo.event_scores(reference, alignment.audio_onsets(a, sr)))
    return row


def truth(items: list, clip) -> tuple[torch.Tensor, torch.Tensor]:
    """The test clips' positive windows: video in [-1, 1] (B, F, 3, H, W) and audio (B, L)."""
    m, ms = clip.margin, clip.margin_samples
    return (to_unit(torch.stack([it["video"][m:m + clip.frames] for it in items])),
            torch.stack([it["audio"][ms:ms + clip.samples] for it in items]))


def shuffled_captions(items: list) -> list[str]:
    """Each clip's shuffled caption: the next clip's (cyclically) of the same kind (a dance clip has a tempo)."""
    kind = [float(it["tempo"]) > 0 for it in items]
    out = []
    for i in range(len(items)):
        j = next((k % len(items) for k in range(i + 1, i + len(items)) if kind[k % len(items)] == kind[i]), i)
        out.append(items[j]["caption"])
    return out


def outputs(pipe, items: list, a, seed: int) -> dict:
    """Every arm's (audio (B, L), video uint8 (B, F, 3, H, W) or None) on the test clips, 32 at a time, each arm's
    batch from a generator seeded by (seed, batch)."""
    clip = pipe.clip
    torch.manual_seed(seed)  # Griffin-Lim's phases
    out = {arm: ([], []) for arm in ARMS}
    sampler = pipe.sampler(**demo.SAMPLER, cfg=a.cfg)  # from noise: no reconstruction guidance
    v2a = dataclasses.replace(sampler, guidance=demo.GUIDANCE["v2a"])
    shuffled = shuffled_captions(items)
    for lo in range(0, len(items), 32):
        part = items[lo:lo + 32]
        v, wav = truth(part, clip)
        caps = [it["caption"] for it in part]

        def g():
            return torch.Generator().manual_seed(seed * 1000 + lo)

        for arm, caption in (("joint", caps), ("joint, shuffled caption", shuffled[lo:lo + 32])):
            r = generate.generate(pipe, sampler, frames=clip.frames, batch=len(part), generator=g(), text=caption)
            out[arm][0].extend(r["audio"][:, :clip.samples]), out[arm][1].extend(to_uint8(r["video"]))
            if arm == "joint":  # two-step: this video, then its sound from it and the caption
                video = r["video"].clamp(-1, 1)
                s = generate.generate(pipe, v2a, cond={"video": video}, generator=g(), text=caps)
                out["two-step"][0].extend(s["audio"][:, :clip.samples]), out["two-step"][1].extend(to_uint8(video))
        for arm, kw in (("v2a with caption", dict(text=caps)), ("v2a without caption", {})):
            r = generate.generate(pipe, v2a if kw else dataclasses.replace(v2a, cfg=1.0), cond={"video": v},
                                  generator=g(), **kw)
            out[arm][0].extend(r["audio"][:, :clip.samples]), out[arm][1].extend([None] * len(part))
        out["ground truth"][0].extend(wav), out["ground truth"][1].extend(to_uint8(v))
    return out


def score_seed(a, seed: int, out: Path) -> dict:
    """Train (or resume) the seed's captioned DiT and score every arm on the test clips (OUT/seedS/text.json)."""
    path = out / f"seed{seed}" / "text.json"
    if path.exists():
        return json.loads(path.read_text())
    cfg = dataclasses.replace(demo.DEMO_TRAIN, model="dit", text_encoder="byt5-scratch", caption_drop=0.1,
                              data="synthetic", steps=a.steps, batch=a.batch, num_clips=a.train_clips, seed=seed,
                              ckpt_every=a.steps, out=str(out / f"seed{seed}" / "run"))
    ckpt = train.train(cfg, progress=not a.smoke)
    pipe = pipeline.load(ckpt)
    test = data.SyntheticDataset(pipe.clip, "test", num_clips=a.clips, seed=seed)
    items = [test[i] for i in range(len(test))]
    gen = outputs(pipe, items, a, seed)
    rows = {}
    for arm, (wavs, videos) in gen.items():
        rows[arm] = []
        for it, wav, video in zip(items, wavs, videos):
            events = it["events"][~it["events"].isnan()].double().numpy() if arm.startswith("v2a") else None
            rows[arm].append(scores(it["caption"], wav, video, pipe.clip, events))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"checkpoint": str(ckpt), "rows": rows}, default=float))
    return {"rows": rows}


def caption_sensitivity(pipe: pipeline.Pipeline, items: list, seed: int) -> dict:
    """Why a caption is followed or not, from the seed's loaded model on its test captions: `cosine`, the mean cosine
    between the pooled encodings of distinct captions (1: the encoder maps every caption alike), and `swap`, how
    far the network's output moves when each caption is swapped for another clip's of the same kind, relative to
    when it is removed (0: the network hears whether there is a caption, not which), at the first sampling step
    (n = N − 1, x pure noise)."""
    net, caps = pipe.net.eval(), [it["caption"] for it in items]
    distinct = sorted(set(caps))
    g = torch.Generator().manual_seed(seed)
    x = {k: torch.randn(shape, generator=g) for k, shape in pipe.net_shapes(len(items), pipe.clip.frames).items()}
    n = torch.full((len(items),), pipe.diffusion.cfg.num_steps - 1)
    with torch.no_grad():
        pooled = torch.nn.functional.normalize(text.masked_mean(*net.text_encoder(distinct)), dim=-1)  # (K, E)
        cos = pooled @ pooled.T  # (K, K)
        own, other, none = (net(x, n, text=t) for t in (caps, shuffled_captions(items), [""] * len(items)))
    moved = {w: sum((own[k] - o[k]).pow(2).sum() for k in own).sqrt() for w, o in (("swap", other), ("drop", none))}
    K = len(distinct)
    return {"cosine": float((cos.sum() - K) / max(K * (K - 1), 1)), "swap": float(moved["swap"] / moved["drop"])}


def sensitivity_seed(a, seed: int, out: Path) -> dict:
    """caption_sensitivity of the seed's trained checkpoint (OUT/seedS/sensitivity.json; resumes)."""
    path = out / f"seed{seed}" / "sensitivity.json"
    if not path.exists():
        made = json.loads((path.parent / "text.json").read_text())
        pipe = pipeline.load(path.parent / "run" / Path(made["checkpoint"]).name)
        test = data.SyntheticDataset(pipe.clip, "test", num_clips=a.clips, seed=seed)
        path.write_text(json.dumps(caption_sensitivity(pipe, [test[i] for i in range(len(test))], seed)))
    return json.loads(path.read_text())


def report(a, per_seed: list[dict], out: Path) -> str:
    """OUT/captions.md: each arm's rates pooled over seeds and clips, and the paired differences."""
    metrics = ("tempo", "pitch", "colour", "sync", "f1")
    lines = ["| arm | " + " | ".join(metrics) + " |", "|---|" + "---|" * len(metrics)]
    for arm in ARMS:
        rows = [r for s in per_seed for r in s["rows"][arm]]
        cells = []
        for m in metrics:
            num, den = alignment.RATIOS[m]
            if (m == "sync" and arm.startswith("v2a")) or (m == "f1" and not arm.startswith("v2a")):
                cells.append("")  # sync is the joint arms' (own video), f1 the v2a arms' (the true events)
                continue
            usable = rows
            total = sum(den(r) for r in usable)
            cells.append(f"{sum(num(r) for r in usable) / total:.3f}" if total else "–")
        lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    lines += ["", "| claim | A | B | metric | A − B [95 % CI] | MDE 80 % |", "|---|---|---|---|---|---|"]
    found = []
    for claim, arm_a, arm_b, metric in COMPARISONS:
        ra, rb = ([s["rows"][arm] for s in per_seed] for arm in (arm_a, arm_b))
        if not any(alignment.RATIOS[metric][1](r) for rows in ra for r in rows):
            continue
        ci = alignment.seed_clip_bootstrap(ra, rb, metric, n=a.bootstrap, seed=0)
        found.append({"claim": claim, "a": arm_a, "b": arm_b, "metric": metric, **ci})
        lines.append(f"| {claim} | {arm_a} | {arm_b} | {metric} | {ci['delta']:+.3f} [{ci['lo']:+.3f}, "
                     f"{ci['hi']:+.3f}] | {ci['mde']:.3f} |")
    head = (f"Seeds {a.seeds}, {a.clips} test clips each (held-out phrasings); cfg {a.cfg:g}; "
            f"{demo.SAMPLER['sampler']} {demo.SAMPLER['steps']}; tempo within {TEMPO_TOLERANCE:.0%}, pitch within "
            "half a semitone. Columns: hit rates (tempo: dance clips; pitch: bounce clips; colour: frames), sync "
            "= onset F1 of the generated audio against the generated video's events, f1 = v2a onset F1 against "
            "the true events.")
    sens = [sensitivity_seed(a, seed, out) for seed in a.seeds]
    lines += ["", "Why (caption_sensitivity): the mean cosine of distinct test captions' pooled encodings (1: all "
              "alike), and the output's move when a caption is swapped for another of its kind, relative to when it "
              "is removed (0: only whether there is a caption is heard), at the first sampling step.", "",
              "| seed | encoder cosine | swap / drop |", "|---|---|---|",
              *[f"| {seed} | {x['cosine']:.3f} | {x['swap']:.3f} |" for seed, x in zip(a.seeds, sens)]]
    report_text = "\n".join([head, "", *lines])
    (out / "captions.md").write_text(report_text + "\n")
    (out / "captions.json").write_text(json.dumps({"args": vars(a), "differences": found,
                                                   "sensitivity": dict(zip(a.seeds, sens))}, indent=1))
    return report_text


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", default="runs/text", help="study folder (resumes)")
    p.add_argument("--seeds", type=int, nargs="+", help="default 0 1 2")
    p.add_argument("--steps", type=int, default=demo.DEMO_TRAIN.steps, help="training steps (the demo's)")
    p.add_argument("--batch", type=int, default=demo.DEMO_TRAIN.batch)
    p.add_argument("--train-clips", type=int, default=512)
    p.add_argument("--clips", type=int, default=64, help="held-out test clips per seed")
    p.add_argument("--cfg", type=float, default=3.0, help="classifier-free guidance scale ([choice], not tuned)")
    p.add_argument("--bootstrap", type=int, default=4000)
    p.add_argument("--smoke", action="store_true", help="a few steps and clips: checks the script runs")
    a = p.parse_args(argv)
    if a.smoke:
        a.steps, a.batch, a.train_clips, a.clips, a.bootstrap = 2, 2, 8, 4, 200
    a.seeds = a.seeds or ([0] if a.smoke else [0, 1, 2])
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    print(report(a, [score_seed(a, s, out) for s in a.seeds], out))


if __name__ == "__main__":
    main()
