"""Evaluation (CMMD §3.1): FVD, KVD, FAD and the alignment scores of generated mp4s, every setting stated.
`python metrics.py` runs it over two folders.

The MM-Diffusion evaluation could not be reproduced (its FAD scale was off by 10x, its audio was not
resampled to what the embedder expects). Here each number comes from a function with a test against a
reference or a closed form, and the settings below and in features.py and alignment.py are all the
settings there are.

Fréchet distance (Heusel et al. 2017), used by FVD and FAD:
    FD = ‖μ₁ − μ₂‖² + Tr(Σ₁ + Σ₂ − 2·(Σ₁^½ Σ₂ Σ₁^½)^½)
  μ, Σ: sample mean and covariance (ddof = 1) in float64. Tr((Σ₁^½ Σ₂ Σ₁^½)^½) = Tr((Σ₁Σ₂)^½) is computed
  from the eigenvalues of the symmetric PSD matrix Σ₁^½ Σ₂ Σ₁^½ (eigh; eigenvalues under the numerical
  rank cut λ_max·D·eps of numpy's matrix_rank count as 0), which stays real and stable where
  scipy.linalg.sqrtm(Σ₁Σ₂) can go complex on rank-deficient covariances (N < D, as with few clips).
  Values are raw squared distances: no ×1e4 or other scaling.

KVD (Bińkowski et al. 2018, "Demystifying MMD GANs", the KID estimator): unbiased MMD² with the
  polynomial kernel k(x, y) = (x·y/d + 1)³,
    MMD² = Σ_{i≠j} k(x_i, x_j) / (m(m−1)) + Σ_{i≠j} k(y_i, y_j) / (m(m−1)) − 2 Σ_{i,j} k(x_i, y_j) / m²,
  averaged over `n_subsets` random subsets of m = min(subset_size, N_gen, N_ref) drawn without
  replacement from each set (defaults 100 and 1000, those of KID); reported as mean and std over
  subsets, raw (no ×10³ scaling).

FVD / KVD (Unterthiner et al. 2018) on the 400-d I3D Kinetics-400 logits (features.py): clips are read by
  media.read_av (10 fps, centre square crop, resized to `size` px: the "resolution of the evaluated
  frames" of CMMD Table 1), optionally cut to their first `frames` frames (I3D needs >= 9).
  Protocol (CMMD §3.1): the generated set is all generations (5 per test clip), the reference set the
  ground-truth test clips, one Fréchet distance / one KVD between the two sets.

FAD (Kilgour et al. 2019), per set and per sample (Gui et al. 2024, "Adapting Frechet Audio Distance for
  generative music evaluation", fadtk), on the frames of an `AudioEmbedder` (features.py: VGGish; what
  CLAP would need): per set, FD between the pooled frames of all generated clips and the pooled frames of
  the reference set; per sample, FD between one clip's own frame statistics and the reference set's
  (fadtk `score_individual`); it needs >= 2 frames per clip (VGGish: clips >= 1.92 s), else it is NaN.

Beat hit rate and onset P/R/F1, of audio and of video: alignment.py.

Command line: `python metrics.py --gen DIR --ref DIR [--metrics fvd,kvd,fad,beat,onset] [--i3d PATH]
  [--vggish PATH] [--json OUT]`, one flag per field of `EvalConfig`. Both folders hold .mp4 files. A
  generated file NAME_k.mp4 (k = 0, 1, ..., the k-th generation) or NAME.mp4 pairs with the reference
  NAME.mp4 (an exact stem match wins); pairing is needed by beat and onset, not by the set metrics. Onset
  ground truth is a sidecar JSON next to each reference clip, NAME.json = {"events": [seconds from the
  clip start, ...], "tempo": bpm}.
"""
import argparse
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

import alignment
import checkpoint
import cli
import features
import media
import melspec

METRICS = ("fvd", "kvd", "fad", "beat", "onset")


class MetricsError(ValueError):
    """A missing folder or an unusable input; the message is one line naming the file and what is wrong."""


# ----------------------------------------------------------------------------------------------------
# Fréchet distance
def feature_stats(feats) -> tuple[np.ndarray, np.ndarray]:
    """Mean (D,) and covariance (D, D) (ddof = 1) of features (N, D), in float64."""
    x = np.asarray(feats, dtype=np.float64)
    assert x.ndim == 2 and x.shape[0] >= 2, f"features must be (N >= 2, D), got {x.shape}"
    return x.mean(axis=0), np.cov(x, rowvar=False).reshape(x.shape[1], x.shape[1])


def _psd_eigh(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigen-decomposition of a symmetric PSD matrix, eigenvalues below its numerical rank cut to 0.

    The cut is numpy.linalg.matrix_rank's: λ < λ_max · D · eps is round-off. Left in, a square root
    would lift such ~1e-16 values to ~1e-8 each, which is what breaks FD(x, x) = 0 for N < D samples."""
    w, v = np.linalg.eigh((a + a.T) / 2)
    w = np.where(w > w.max(initial=0.0) * a.shape[0] * np.finfo(np.float64).eps, w, 0.0)
    return w, v


def sqrtm_psd(a: np.ndarray) -> np.ndarray:
    """Symmetric square root of a symmetric positive semi-definite matrix by eigen-decomposition."""
    w, v = _psd_eigh(a)
    return (v * np.sqrt(w)) @ v.T


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """‖μ₁ − μ₂‖² + Tr(Σ₁ + Σ₂ − 2 (Σ₁^½ Σ₂ Σ₁^½)^½), in float64 (Fréchet / Wasserstein-2 between Gaussians)."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    assert mu1.shape == mu2.shape and sigma1.shape == sigma2.shape == mu1.shape * 2, \
        f"statistics disagree: {mu1.shape} {sigma1.shape} vs {mu2.shape} {sigma2.shape}"
    s1_half = sqrtm_psd(sigma1)
    inner = s1_half @ sigma2 @ s1_half  # Σ₁^½ Σ₂ Σ₁^½: symmetric PSD, same eigenvalues as Σ₁Σ₂
    tr_covmean = np.sqrt(_psd_eigh(inner)[0]).sum()  # Tr((Σ₁Σ₂)^½)
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * tr_covmean)


def frechet_distance_features(x, y) -> float:
    """Fréchet distance between the Gaussians fitted to features x (N, D) and y (N', D)."""
    return frechet_distance(*feature_stats(x), *feature_stats(y))


# ----------------------------------------------------------------------------------------------------
# Kernel distance (KID / KVD)
@dataclass
class KVDConfig:
    n_subsets: int = 100  # KID defaults (Bińkowski et al. 2018; torch-fidelity)
    subset_size: int = 1000
    seed: int = 0  # subsets are drawn with numpy's default_rng(seed): the result is deterministic


def polynomial_mmd2(x, y) -> float:
    """Unbiased MMD² with k(a, b) = (a·b/d + 1)³ (Bińkowski et al. 2018, Eq. for KID)."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    m, n, d = x.shape[0], y.shape[0], x.shape[1]
    assert m >= 2 and n >= 2 and y.shape[1] == d, f"need (m >= 2, d) and (n >= 2, d), got {x.shape}, {y.shape}"
    k_xx = (x @ x.T / d + 1) ** 3  # (m, m)
    k_yy = (y @ y.T / d + 1) ** 3  # (n, n)
    k_xy = (x @ y.T / d + 1) ** 3  # (m, n)
    within_x = (k_xx.sum() - np.trace(k_xx)) / (m * (m - 1))  # i ≠ j terms only: the unbiased part
    within_y = (k_yy.sum() - np.trace(k_yy)) / (n * (n - 1))
    return float(within_x + within_y - 2 * k_xy.mean())


def kernel_distance(x, y, cfg: KVDConfig = KVDConfig()) -> tuple[float, float]:
    """KID/KVD: mean and std of `polynomial_mmd2` over random equal-size subsets of x (N, D) and y (N', D)."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    m = min(cfg.subset_size, x.shape[0], y.shape[0])
    rng = np.random.default_rng(cfg.seed)
    vals = [polynomial_mmd2(x[rng.choice(x.shape[0], m, replace=False)], y[rng.choice(y.shape[0], m, replace=False)])
            for _ in range(cfg.n_subsets)]
    return float(np.mean(vals)), float(np.std(vals))


# ----------------------------------------------------------------------------------------------------
# FAD, per set and per sample
def fad(gen_embeds: list, ref_embeds: list) -> float:
    """Per-set FAD: Fréchet distance between the pooled frames of two lists of (frames, D) embeddings."""
    return frechet_distance_features(torch.cat(list(gen_embeds)).numpy(), torch.cat(list(ref_embeds)).numpy())


def fad_per_sample(gen_embeds: list, ref_embeds: list) -> list[float]:
    """Per-sample FAD (Gui et al. 2024): each clip's own frame statistics against the reference set's; NaN
    for a clip with fewer than 2 frames (no covariance)."""
    mu_ref, sigma_ref = feature_stats(torch.cat(list(ref_embeds)).numpy())
    return [frechet_distance(*feature_stats(e.numpy()), mu_ref, sigma_ref) if e.shape[0] >= 2 else math.nan
            for e in gen_embeds]



# ----------------------------------------------------------------------------------------------------
# Folders of mp4s -> every metric
@dataclass
class EvalConfig:
    """Every setting of an evaluation; `python metrics.py` has one flag per field."""
    gen: str = field(default="", metadata={"help": "folder of generated .mp4 (NAME.mp4 or NAME_k.mp4)"})
    ref: str = field(default="", metadata={"help": "folder of reference .mp4, with NAME.json sidecars for onset"})
    metrics: str = field(default=",".join(METRICS), metadata={"help": f"comma-separated subset of {','.join(METRICS)}"})
    i3d: str = field(default=str(features.I3D_DEFAULT_PATH),
                     metadata={"help": f"I3D Kinetics-400 weights ({features.I3D_WEIGHTS})"})
    vggish: str = field(default="", metadata={"help": f"VGGish weights (empty: download {features.VGGISH_URL})"})
    vggish_hop: float = field(default=features.VGGishConfig.hop, metadata={"help": "seconds between VGGish windows"})
    # frames are compared at `size` px (CMMD Table 1 uses 64 and 128), cut to their first `frames` (16-36 there)
    size: int = field(default=64, metadata={"help": "frame resolution compared (Table 1: 64, 128)"})
    frames: int = field(default=0, metadata={"help": "first N frames (and their audio) of each clip (0: all)"})
    fps: int = field(default=media.FPS, metadata={"help": "frame rate clips are read at"})
    batch_size: int = field(default=4, metadata={"help": "clips per I3D forward"})
    kvd_subsets: int = field(default=KVDConfig.n_subsets, metadata={"help": "KVD random subsets"})
    kvd_subset_size: int = field(default=KVDConfig.subset_size, metadata={"help": "KVD subset size (capped by N)"})
    seed: int = field(default=KVDConfig.seed, metadata={"help": "seed of the KVD subsets"})
    json: str = field(default="", metadata={"help": "write settings, results and per-file scores here"})
    device: str = field(default="cuda" if torch.cuda.is_available() else "cpu",
                        metadata={"help": "torch device for I3D and VGGish"})

    @property
    def kvd(self) -> KVDConfig:
        return KVDConfig(self.kvd_subsets, self.kvd_subset_size, self.seed)

    @property
    def vggish_cfg(self) -> features.VGGishConfig:
        return features.VGGishConfig(self.vggish_hop)


def list_mp4(folder) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise MetricsError(f"{folder}: not a folder")
    files = sorted(folder.glob("*.mp4"))
    if not files:
        raise MetricsError(f"{folder}: no .mp4 files")
    return files


def pair_files(gen: list[Path], ref: list[Path]) -> dict[Path, Path | None]:
    """gen NAME.mp4 or NAME_k.mp4 (k an integer) -> ref NAME.mp4; an exact stem match wins; None if none."""
    by_stem = {r.stem: r for r in ref}
    pairs = {}
    for g in gen:
        base, _, k = g.stem.rpartition("_")
        pairs[g] = by_stem.get(g.stem) or (by_stem.get(base) if base and k.isdigit() else None)
    return pairs


def read_events(ref_mp4: Path) -> np.ndarray:
    """Event times (s) from the sidecar NAME.json {"events": [...], "tempo": bpm} next to NAME.mp4."""
    side = ref_mp4.with_suffix(".json")
    if not side.is_file():
        raise MetricsError(f"{side}: onset ground truth missing (want {{\"events\": [s, ...], \"tempo\": bpm}})")
    try:
        return np.asarray(json.loads(side.read_text())["events"], np.float64)
    except (ValueError, KeyError, TypeError) as e:
        raise MetricsError(f"{side}: not a {{\"events\": [...]}} JSON ({type(e).__name__})") from None


def streams_needed(wanted: set) -> tuple[bool, bool]:
    """(video, audio): the streams `scan` reads for these wants."""
    return bool(wanted & {"fvd", "kvd", "visual"}), bool(wanted & {"embed", "beats", "onsets"})


def scan(files: list[Path], cfg: EvalConfig, wanted: set, i3d=None, embedder=None, desc="") -> dict[Path, dict]:
    """Read each clip once and compute what the metrics need: {"i3d", "embed", "beats", "onsets", "visual"}."""
    from tqdm import tqdm
    need_video, need_audio = streams_needed(wanted)
    out, pending = {}, []

    def flush():
        if pending:
            feats = features.i3d_logits(i3d, torch.stack([v for _, v in pending]))  # (b, 400)
            for (p, _), f in zip(pending, feats):
                out[p]["i3d"] = f
            pending.clear()

    for path in tqdm(files, desc=desc, unit="clip"):
        av = media.read_av(path, size=cfg.size, frames=cfg.frames or None, fps=cfg.fps,
                           sample_rate=melspec.SAMPLE_RATE, need_video=need_video, need_audio=need_audio)
        rec = out[path] = {}
        if "embed" in wanted:
            rec["embed"] = embedder.embed_at(av.audio, melspec.SAMPLE_RATE)  # (frames, D)
        if "beats" in wanted:
            rec["beats"] = alignment.beat_times(av.audio, melspec.SAMPLE_RATE)
        if "onsets" in wanted:
            rec["onsets"] = alignment.audio_onsets(av.audio, melspec.SAMPLE_RATE)
        if "visual" in wanted:
            rec["visual"] = alignment.visual_onsets(av.video, cfg.fps)
        if need_video and wanted & {"fvd", "kvd"}:
            if av.video.shape[0] < features.I3D_MIN_FRAMES:
                raise MetricsError(f"{path}: {av.video.shape[0]} frames at {cfg.fps} fps; "
                                   f"I3D needs >= {features.I3D_MIN_FRAMES}")
            if pending and pending[0][1].shape != av.video.shape:
                flush()  # a batch holds clips of one shape
            pending.append((path, av.video))  # (F, 3, size, size)
            if len(pending) == cfg.batch_size:
                flush()
    flush()
    return out


def check_config(cfg: EvalConfig) -> list[str]:
    """Every setting's range and the device, before any file is read; returns the metrics asked for."""
    metrics = [m.strip() for m in cfg.metrics.split(",") if m.strip()]
    bad = [m for m in metrics if m not in METRICS]
    if bad or not metrics:
        raise MetricsError(f"--metrics: {'unknown ' + ', '.join(bad) if bad else 'none given'} "
                           f"(choose from {','.join(METRICS)})")
    for flag, value, low in (("size", cfg.size, 1), ("frames", cfg.frames, 0), ("fps", cfg.fps, 1),
                             ("batch_size", cfg.batch_size, 1), ("kvd_subsets", cfg.kvd_subsets, 1),
                             ("kvd_subset_size", cfg.kvd_subset_size, 2)):  # the unbiased MMD² needs m >= 2
        cli.check_range(flag, value, low)
    cli.check_range("vggish_hop", cfg.vggish_hop, 0, above=True)
    if cfg.frames and {"fvd", "kvd"} & set(metrics) and cfg.frames < features.I3D_MIN_FRAMES:
        raise MetricsError(f"--frames {cfg.frames}: fvd and kvd need >= {features.I3D_MIN_FRAMES} (I3D)")
    cli.device(cfg.device)
    if cfg.json:
        if Path(cfg.json).is_dir():
            raise MetricsError(f"{cfg.json}: a directory (--json names the file to write)")
        cli.check_writable_dir(Path(cfg.json).parent, "--json")
    return metrics


def _paired_events(cfg: EvalConfig, metrics: list[str], gen_files, ref_files, pairs: dict) -> dict:
    """Check the folders fit the metrics asked for (pairs, clip counts), before any model loads; returns
    {reference: its event times} for "onset", cut to the first `frames` frames."""
    if {"beat", "onset"} & set(metrics):
        unpaired = [g for g, r in pairs.items() if r is None]
        if unpaired:
            raise MetricsError(f"{unpaired[0]}: no reference NAME.mp4 in {cfg.ref} for beat/onset "
                               f"(generated files are NAME.mp4 or NAME_k.mp4)")
    if {"fvd", "kvd", "fad"} & set(metrics) and min(len(gen_files), len(ref_files)) < 2:
        raise MetricsError(f"{cfg.gen} / {cfg.ref}: fvd, kvd and fad need >= 2 clips in each folder")
    events = {r: read_events(r) for r in set(pairs.values())} if "onset" in metrics else {}
    if cfg.frames:  # clips are cut to their first `frames` frames: events after that cannot be found
        events = {r: e[e < cfg.frames / cfg.fps] for r, e in events.items()}
    return events


def _check_streams(metrics: list[str], files, wanted: set):
    """Probe every file, a truncated one included (by its packets, without decoding), before a model loads,
    so a file lacking a stream the metrics read stops the run at once."""
    for f in files:
        info = media.probe(f, complete=True)
        for kind, needed in zip(("video", "audio"), streams_needed(wanted)):
            if needed and not info[kind]:
                raise MetricsError(f"{f}: no {kind} stream (--metrics {','.join(metrics)} reads it)")


def _video_and_fad_results(cfg: EvalConfig, metrics, gen, ref, gen_files, ref_files, embedder, results, per_file):
    """FVD, KVD (I3D features) and FAD (embeddings, pooled and per clip), added to results and per_file."""
    if {"fvd", "kvd"} & set(metrics):
        x = torch.stack([gen[g]["i3d"] for g in gen_files]).numpy()  # (N_gen, 400)
        y = torch.stack([ref[r]["i3d"] for r in ref_files]).numpy()  # (N_ref, 400)
        if "fvd" in metrics:
            results["fvd"] = frechet_distance_features(x, y)
        if "kvd" in metrics:
            results["kvd"], results["kvd_std"] = kernel_distance(x, y, cfg.kvd)
    if "fad" in metrics:
        gen_e, ref_e = [gen[g]["embed"] for g in gen_files], [ref[r]["embed"] for r in ref_files]
        results[f"fad_{embedder.name}"] = fad(gen_e, ref_e)
        per_sample = fad_per_sample(gen_e, ref_e)
        valid = [v for v in per_sample if not math.isnan(v)]  # clips with >= 2 embedding frames
        results[f"fad_{embedder.name}_per_sample_mean"] = float(np.mean(valid)) if valid else math.nan
        results[f"fad_{embedder.name}_per_sample_median"] = float(np.median(valid)) if valid else math.nan
        for g, v in zip(gen_files, per_sample):
            per_file[str(g)]["fad_per_sample"] = v


def _alignment_results(metrics, gen, ref, gen_files, pairs, events, results, per_file):
    """Beat hit rates and audio/visual onset P/R/F1 against each clip's reference, added to results and per_file."""
    if "beat" in metrics:
        n_ref_beats = sum(ref[pairs[g]]["beats"].size for g in gen_files)
        for tol in alignment.BEAT_TOLERANCES:
            hits = [alignment.hit_count(ref[pairs[g]]["beats"], gen[g]["beats"], tol) for g in gen_files]
            results[f"beat_hit_{round(tol * 1000)}ms"] = sum(hits) / n_ref_beats if n_ref_beats else math.nan
            for g, h in zip(gen_files, hits):
                per_file[str(g)][f"beat_hit_{round(tol * 1000)}ms"] = h / max(ref[pairs[g]]["beats"].size, 1)
    if "onset" in metrics:
        for kind in ("onsets", "visual"):
            prfs = [alignment.onset_prf(events[pairs[g]], gen[g][kind]) for g in gen_files]
            counts = (sum(getattr(p, k) for p in prfs) for k in ("matched", "n_ref", "n_est"))
            total = alignment.prf_from_counts(*counts)
            name = "onset_audio" if kind == "onsets" else "onset_visual"
            results.update({f"{name}_{k}": getattr(total, k) for k in ("precision", "recall", "f1")})
            for g, p in zip(gen_files, prfs):
                per_file[str(g)][name] = p._asdict()


def _settings(cfg: EvalConfig, metrics: list[str], embedder) -> dict:
    """Every setting the numbers depend on, stored with them so results from different runs can be compared."""
    return {**asdict(cfg), "metrics": metrics, "i3d_resize": "bilinear antialias 224x224, x/127.5-1",
            "embedder": {"name": embedder.name, "sample_rate": embedder.sample_rate, "window": embedder.window,
                         "hop": embedder.hop} if embedder else None,
            "beat": {"sr": alignment.ALIGN_SAMPLE_RATE, "hop": alignment.ALIGN_HOP,
                     "tolerances": alignment.BEAT_TOLERANCES},
            "onset": {"sr": alignment.ALIGN_SAMPLE_RATE, "hop": alignment.ALIGN_HOP,
                      "tolerance": alignment.ONSET_TOLERANCE, "visual_peak_pick": alignment.VISUAL_PEAK_PICK},
            "edge_slack": alignment.EDGE_SLACK}


def evaluate(cfg: EvalConfig, embedder: features.AudioEmbedder | None = None) -> dict:
    """Every requested metric from two folders of mp4s; returns {"settings", "results", "per_file"}."""
    metrics = check_config(cfg)
    gen_files, ref_files = list_mp4(cfg.gen), list_mp4(cfg.ref)
    pairs = pair_files(gen_files, ref_files)
    events = _paired_events(cfg, metrics, gen_files, ref_files, pairs)
    video_wants = {"fvd", "kvd"} & set(metrics)
    gen_wants = video_wants | ({"embed"} if "fad" in metrics else set()) | (
        {"beats"} if "beat" in metrics else set()) | ({"onsets", "visual"} if "onset" in metrics else set())
    ref_wants = video_wants | ({"embed"} if "fad" in metrics else set()) | ({"beats"} if "beat" in metrics else set())
    for files, wanted in ((gen_files, gen_wants), (ref_files, ref_wants)):
        _check_streams(metrics, files, wanted)

    i3d = features.load_i3d(cfg.i3d, cfg.device) if video_wants else None
    if "fad" in metrics and embedder is None:
        embedder = features.load_vggish(cfg.vggish, cfg.vggish_cfg, cfg.device)
    gen = scan(gen_files, cfg, gen_wants, i3d, embedder, desc="generated")
    ref = scan(ref_files, cfg, ref_wants, i3d, embedder, desc="reference")

    results, per_file = {"n_gen": len(gen_files), "n_ref": len(ref_files)}, {str(g): {} for g in gen_files}
    _video_and_fad_results(cfg, metrics, gen, ref, gen_files, ref_files, embedder, results, per_file)
    _alignment_results(metrics, gen, ref, gen_files, pairs, events, results, per_file)
    return {"settings": _settings(cfg, metrics, embedder), "results": results, "per_file": per_file}


def markdown_table(results: dict) -> str:
    rows = ["| metric | value |", "|---|---|"]
    for k, v in results.items():
        rows.append(f"| {k} | {v:.4g} |" if isinstance(v, float) else f"| {k} | {v} |")
    return "\n".join(rows)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    for name in ("gen", "ref"):  # the two folders have no default
        p.add_argument(f"--{name}", required=True, help=EvalConfig.__dataclass_fields__[name].metadata["help"])
    cli.add_dataclass_args(p, EvalConfig, skip=("gen", "ref"))
    return cli.run(report, EvalConfig(**cli.dataclass_fields(p.parse_args(argv), EvalConfig)))


def report(cfg: EvalConfig) -> dict:
    """evaluate, then the table on stdout and, with --json, the whole report written atomically."""
    result = evaluate(cfg)
    print(markdown_table(result["results"]))
    if cfg.json:
        checkpoint.write_text(cfg.json, json.dumps(result, indent=2, default=float))
    return result


if __name__ == "__main__":
    main()
