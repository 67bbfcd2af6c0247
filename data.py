"""The datasets: what a training example is, and where it comes from (CMMD §3, App. B).

A training example is a window: `ClipConfig.frames` video frames (18 at 10 fps = 1.8 s, CMMD §3) and the
matching audio, plus a margin of `ClipConfig.margin` frames of real neighbouring content on each side,
which the temporal-shift negatives (CMMD §2.2, App. B.2; negatives.py) read from. In samples and mel
steps: L = frames · sample_rate / fps (28 800), T = ⌊L / HOP⌋ (112, melspec.py), margin 6 400 samples = 25
steps. Windows come from
- `SyntheticDataset`: the synthetic benchmark (synthetic.py), generated on the fly from a seed;
- `--data folder`: every video with sound under a folder, split 90/5/5 % by a hash of its file name;
- `--data aist`: AIST++ with its official cross-modal split lists;
each cut into windows whose positive clips tile the file (media.py decodes), and decoded once into
safetensors shards that `ShardDataset` reads row by row: `python data.py prepare`.
"""
import argparse
import hashlib
import json
import math
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm import tqdm

import checkpoint
import cli
import media
import melspec
import synthetic
import vae
from media import BadInput
from modalities import to_unit

SPLITS = ("train", "val", "test")
SYNTHETIC_CLIPS = dict(zip(SPLITS, (2000, 100, 100)))  # synthetic clips per split, by default


@dataclass
class ClipConfig:
    """One training example: `frames` video frames at `fps` and the matching audio, plus a margin of
    `margin` frames on each side ([choice]: shift negatives come from real neighbours, CMMD §2.2)."""
    frames: int = 18  # 1.8 s, CMMD §3
    size: int = 64  # square side in pixels (128 in the paper, 64 for the MM-Diffusion comparison)
    fps: int = media.FPS
    sample_rate: int = melspec.SAMPLE_RATE
    margin: int = 4  # video frames each side: room for the 2-4 frame shifts of CMMD §2.2

    def __post_init__(self):  # the flags of the same names, checked before any work
        for name, low in (("frames", 1), ("size", 1), ("fps", 1), ("sample_rate", 1), ("margin", 0)):
            cli.check_range(name, getattr(self, name), low)

    @property
    def samples_per_frame(self) -> int:  # 1 600 audio samples per video frame
        return self.sample_rate // self.fps

    @property
    def samples(self) -> int:  # L of the positive clip
        return self.frames * self.sample_rate // self.fps

    @property
    def mel_steps(self) -> int:  # T of the positive clip: 28 800 // 256 = 112
        return self.samples // melspec.HOP

    @property
    def margin_samples(self) -> int:
        return self.margin * self.sample_rate // self.fps

    @property
    def margin_mel(self) -> int:  # 6 400 // 256 = 25 mel steps
        return self.margin_samples // melspec.HOP

    @property
    def window_frames(self) -> int:
        return self.frames + 2 * self.margin

    @property
    def window_samples(self) -> int:
        return self.samples + 2 * self.margin_samples

    @property
    def duration(self) -> float:
        return self.frames / self.fps


def _stable_int(*parts) -> int:
    """A hash of strings/ints that is the same in every process and Python version (unlike hash())."""
    return int.from_bytes(hashlib.sha1("/".join(map(str, parts)).encode()).digest()[:8], "little")


class SyntheticDataset(torch.utils.data.Dataset):
    """Clips of the synthetic benchmark, generated on the fly from (seed, split, index); the variants
    alternate. Splits draw from disjoint seed streams, so held-out clips are never trained on."""

    def __init__(self, clip: ClipConfig, split: str = "train", num_clips: int = SYNTHETIC_CLIPS["train"],
                 seed: int = 0, variants=synthetic.VARIANTS):
        assert split in SPLITS, f"split must be one of {SPLITS}, got {split!r}"
        self.clip, self.split, self.num_clips, self.seed, self.variants = clip, split, num_clips, seed, variants

    def __len__(self):
        return self.num_clips

    def __getitem__(self, i):
        variant = self.variants[i % len(self.variants)]
        item = synthetic.synthetic_clip(_stable_int("synthetic", self.seed, self.split, i), self.clip, variant,
                                        phrasing=self.phrasing(i, variant))
        return {**item, "name": f"synthetic-{self.split}-{self.seed}-{i:06d}-{variant}"}

    def phrasing(self, i: int, variant: str) -> int:
        """Clip i's caption phrasing: the last of its kind's for the test split (held out), else one of the others
        drawn from (seed, split, i)."""
        n = len(synthetic.PHRASINGS[variant])
        return n - 1 if self.split == "test" else _stable_int("phrasing", self.seed, self.split, i) % (n - 1)


# ----------------------------------------------------------------------------------------------------
# Real videos: folders and AIST++, cut into windows and stored as shards
FOLDER_SPLIT = {"train": (0, 90), "val": (90, 95), "test": (95, 100)}  # percent of hash(filename) % 100
CAPTIONS = "captions.tsv"  # --data folder: ROOT/captions.tsv, a line per video: its path under ROOT, a tab, its caption
# AIST++'s genre codes (its file names: gBR_sBM_c01_d04_mBR0_ch01 is a break dance to break music)
AIST_GENRES = {"BR": "break", "PO": "pop", "LO": "lock", "MH": "middle hip-hop", "LH": "LA-style hip-hop",
               "HO": "house", "WA": "waack", "KR": "krump", "JS": "street jazz", "JB": "ballet jazz"}


def folder_split(name: str) -> str:
    h = _stable_int("folder-split", name) % 100
    return next(s for s, (lo, hi) in FOLDER_SPLIT.items() if lo <= h < hi)


def list_videos(root) -> list[Path]:
    root = Path(root)
    if not root.is_dir():
        raise BadInput(f"{root}: no such directory")
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in media.VIDEO_EXTENSIONS and p.is_file())


def aist_split_files(root) -> dict[str, list[Path]]:
    """AIST++ videos under ROOT/videos, split by the official cross-modal lists in ROOT/splits
    (crossmodal_{train,val,test}.txt of the AIST++ release). The lists name sequences with camera
    'cAll'; every camera view of a listed sequence belongs to its split."""
    root = Path(root)
    out = {}
    for split in SPLITS:
        lst = root / "splits" / f"crossmodal_{split}.txt"
        if not lst.is_file():
            raise BadInput(f"{lst}: missing AIST++ split list (see the README, section 'AIST++')")
        names = {line.strip() for line in lst.read_text().splitlines() if line.strip()}
        out[split] = [p for p in list_videos(root / "videos")
                      if "_".join("cAll" if part.startswith("c") and part[1:].isdigit() else part
                                  for part in p.stem.split("_")) in names]
    return out


def folder_captions(root) -> dict[str, str]:
    """{path under ROOT (posix): caption} from ROOT/captions.tsv; {} without one (videos without a line are
    uncaptioned). A line without a tab is a one-line error naming the file and line."""
    path = Path(root) / CAPTIONS
    if not path.is_file():
        return {}
    out = {}
    for n, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), 1):  # -sig: a spreadsheet's BOM
        if not line.strip() or line.startswith("#"):
            continue
        name, tab, text = line.partition("\t")
        if not tab:
            raise BadInput(f"{path}:{n}: no tab between the video's path and its caption")
        out[Path(name.strip()).as_posix()] = text.strip()
    return out


def aist_caption(path: Path) -> str:
    """A caption from an AIST++ file name's dance and music genre codes ("" when the name has none)."""
    parts = {p[0]: p[1:3] for p in Path(path).stem.split("_") if len(p) >= 3 and p[0] in "gm"}
    dance, music = (AIST_GENRES.get(parts.get(k, "")) for k in "gm")
    if not (dance or music):
        return ""
    article = "An" if (dance or music).startswith(("LA", "a", "e", "i", "o", "u")) else "A"  # "An LA-style ..."
    if dance and music:
        return f"{article} {dance} dance to {'its' if dance == music else music} music."
    return f"{article} {dance or music} dance."


def caption_of(data: str, root, path: Path, captions: dict) -> str:
    """The caption of a source video: its line in a folder's captions.tsv, or its AIST++ genres."""
    if data == "aist":
        return aist_caption(path)
    return captions.get(Path(path).relative_to(root).as_posix(), "")


def source_files(data: str, root) -> dict[str, list[Path]]:
    """{split: [video files]} for `--data folder` or `--data aist`."""
    if data in ("folder", "aist") and root is None:
        raise BadInput(f"--data {data} needs --data-root DIR")
    if data == "aist":
        return aist_split_files(root)
    if data == "folder":
        files = list_videos(root)
        if not files:
            raise BadInput(f"{root}: no video files ({', '.join(media.VIDEO_EXTENSIONS)}) in it or its subfolders")
        return {s: [p for p in files if folder_split(p.name) == s] for s in FOLDER_SPLIT}
    raise ValueError(f"--data {data!r} has no source files; choose folder or aist")


def video_windows(path, clip: ClipConfig) -> list[dict]:
    """Cut one video into windows of frames + 2·margin, with positive clips tiling the file. Raises
    BadInput for a file that cannot give one window."""
    info = media.probe(path)
    for kind in ("video", "audio"):
        if not info[kind]:
            raise BadInput(f"{path}: no {kind} stream")
    window_s = clip.window_frames / clip.fps
    n = int(math.floor((info["duration"] - window_s) / clip.duration + 1e-6)) + 1
    if info["duration"] + 1e-6 < window_s:
        raise BadInput(f"{path}: shorter than one clip ({info['duration']:.2f} s < {window_s:.2f} s with margins)")
    av_ = media.read_av(path, frames=(n - 1) * clip.frames + clip.window_frames, size=clip.size,
                        fps=clip.fps, sample_rate=clip.sample_rate)
    # Windows only where both streams have content: past a stream's end read_av pads with its last frame or
    # silence, which is no training example (a single still frame before seconds of sound, say). One frame of
    # slack absorbs encoders' rounding of the last frame's end.
    kind = min(av_.ends, key=av_.ends.get)
    n = min(n, int(math.floor((av_.ends[kind] + 1 / clip.fps - window_s) / clip.duration + 1e-6)) + 1)
    if n < 1:
        raise BadInput(f"{path}: {kind} shorter than one clip (it ends at {av_.ends[kind]:.2f} s < {window_s:.2f} s "
                       f"with margins)")
    out = []
    for k in range(n):
        f0, s0 = k * clip.frames, k * clip.samples
        out.append({"video": av_.video[f0:f0 + clip.window_frames],
                    "audio": av_.audio[s0:s0 + clip.window_samples],
                    "events": torch.full((synthetic.EVENTS_MAX,), float("nan")), "tempo": torch.tensor(0.0)})
    return out


def _save_shard(path: Path, items: list[dict], meta: dict):
    """Stack items into one safetensors file, written atomically (checkpoint.atomic_path): an interrupted
    run never leaves a half-written shard."""
    from safetensors.torch import save_file
    tensors = {k: torch.stack([it[k] for it in items]).contiguous()
               for k in ("video", "audio", "events", "tempo", "latents") if k in items[0]}
    tensors["audio"] = (tensors["audio"] * 32767).round().clamp(-32768, 32767).to(torch.int16)  # 16-bit PCM
    with checkpoint.atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"names": json.dumps([it["name"] for it in items]),
                                              "captions": json.dumps([it.get("caption", "") for it in items]),
                                              "meta": json.dumps(meta)})


def _count_skip(counts: dict, message: str):
    reason = message.split(": ", 1)[-1].split(" (")[0]  # "FILE: reason (detail)" -> "reason"
    counts["skipped"] += 1
    counts["reasons"][reason] = counts["reasons"].get(reason, 0) + 1


def _jobs(data: str, root, num_clips: dict | None, shard_size: int) -> list[tuple]:
    """prepare's work: (split, shard key, list of sources), a source a synthetic index or a file."""
    jobs = []
    if data == "synthetic":
        for split, n in (num_clips or SYNTHETIC_CLIPS).items():
            for s, lo in enumerate(range(0, n, shard_size)):
                jobs.append((split, f"shard-{s:05d}", list(range(lo, min(lo + shard_size, n)))))
        return jobs
    for split, files in source_files(data, root).items():
        for p in files:
            jobs.append((split, f"{p.stem[:60]}-{_stable_int(p.relative_to(root)) % 16 ** 8:08x}", [p]))
    return jobs


def prepare(data: str, out, *, clip: ClipConfig, root=None, num_clips: dict | None = None, seed: int = 0,
            shard_size: int = 256, encoder=None, progress: bool = True) -> dict:
    """Decode once into OUT/{split}/*.safetensors (uint8 frames, 16-bit audio, and latents when
    `encoder` is given). Resumable: finished shards and recorded failures are skipped.
    Returns counts; bad files are skipped with one warning line each."""
    out = Path(out)
    meta = {"data": data, "clip": asdict(clip), "seed": seed}
    cfg_path = out / "config.json"
    cli.check_writable_dir(out)
    if cfg_path.exists() and read_config(out)["clip"] != meta["clip"]:
        raise BadInput(f"{cfg_path}: prepared with another clip config; use a new --out")
    jobs = _jobs(data, root, num_clips, shard_size)
    captions = folder_captions(root) if data == "folder" else {}
    text = json.dumps(meta, indent=1)
    if not cfg_path.exists() or cfg_path.read_text() != text:  # once the sources are known; a rerun changes nothing
        checkpoint.write_text(cfg_path, text)
    counts = {"clips": 0, "shards": 0, "resumed": 0, "skipped": 0, "reasons": {}}
    bar = tqdm(jobs, desc=f"prepare {data}", unit="shard" if data == "synthetic" else "file", disable=not progress)
    for split, key, sources in bar:
        shard, skip = out / split / f"{key}.safetensors", out / split / f"{key}.skip"
        shard.parent.mkdir(exist_ok=True)
        if shard.exists() or skip.exists():
            counts["resumed"] += 1
            if skip.exists():
                _count_skip(counts, skip.read_text().strip())
            continue
        try:
            if data == "synthetic":
                ds = SyntheticDataset(clip, split, max(sources) + 1, seed)
                items = [ds[i] for i in sources]
            else:
                said = caption_of(data, root, sources[0], captions)
                items = [{**w, "name": f"{sources[0].stem}-{k:03d}", "caption": said}
                         for k, w in enumerate(video_windows(sources[0], clip))]
        except BadInput as e:
            _count_skip(counts, str(e))
            tqdm.write(f"warning: skipped {e}", file=sys.stderr)
            checkpoint.write_text(skip, str(e) + "\n")
            continue
        if encoder is not None:
            for it in items:
                it["latents"] = encoder(it["video"]).to(torch.float16)
        _save_shard(shard, items, meta)
        counts["clips"] += len(items)
        counts["shards"] += 1
    reasons = ", ".join(f"{r}: {n}" for r, n in counts["reasons"].items())
    print(f"prepared {counts['clips']} clips in {counts['shards']} new shards under {out}; "
          f"{counts['resumed']} already done; skipped {counts['skipped']} files" + (f" ({reasons})" if reasons else ""),
          file=sys.stderr)
    return counts


def read_config(root) -> dict:
    """ROOT/config.json of prepared shards, as `prepare` wrote it."""
    path = Path(root) / "config.json"
    try:
        meta = json.loads(path.read_text())
        ClipConfig(**meta["clip"])
        return meta
    except FileNotFoundError:
        raise BadInput(f"{path}: missing (not a folder prepared by `python data.py prepare`)") from None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise BadInput(f"{path}: unreadable or not a prepare config ({type(e).__name__}); delete it and prepare "
                       f"again") from None


class ShardDataset(torch.utils.data.Dataset):
    """Windows from prepared shards, read row by row through safetensors' memory-mapped slices, so a
    large set never has to fit in memory and DataLoader workers share the page cache."""

    def __init__(self, root, split: str = "train"):
        from safetensors import SafetensorError, safe_open
        self.clip = ClipConfig(**read_config(root)["clip"])
        self.files = sorted((Path(root) / split).glob("*.safetensors"))
        if not self.files:
            raise BadInput(f"{Path(root) / split}: no prepared shards (run `python data.py prepare`)")
        self.index, self.names, self.captions, self._open = [], [], [], {}
        for f in self.files:
            try:  # safetensors checks that the header covers the whole file: a cut or damaged shard fails here
                with safe_open(str(f), "pt") as h:
                    names = json.loads(h.metadata()["names"])
                    # shards written before captions have none: every row uncaptioned
                    self.captions += json.loads(h.metadata().get("captions", "null")) or [""] * len(names)
            except (SafetensorError, OSError, ValueError, KeyError, TypeError) as e:
                raise BadInput(f"{f}: not a readable shard ({type(e).__name__}); delete it and run `python data.py "
                               f"prepare` again") from None
            self.index += [(f, r) for r in range(len(names))]
            self.names += names

    def __len__(self):
        return len(self.index)

    def __getitem__(self, i):
        from safetensors import safe_open
        f, r = self.index[i]
        if f not in self._open:  # opened lazily, so each DataLoader worker has its own handles
            self._open[f] = safe_open(str(f), "pt")
        h = self._open[f]
        item = {k: h.get_slice(k)[r] for k in h.keys() if k != "mel"}  # shards of older versions also hold a mel
        item["audio"] = item["audio"].float() / 32767
        return {**item, "name": self.names[i], "caption": self.captions[i]}

    def __getstate__(self):
        return {**self.__dict__, "_open": {}}


def build_dataset(data: str, split: str, clip: ClipConfig, *, root=None, cache=None, num_clips: int | None = None,
                  seed: int = 0, encoder=None):
    """The dataset behind `--data NAME`: synthetic clips on the fly, or shards under `cache` prepared
    from ROOT on first use (folder, aist)."""
    if data == "synthetic":
        return SyntheticDataset(clip, split, num_clips or SYNTHETIC_CLIPS[split], seed)
    if data in ("folder", "aist"):
        if root is None:
            raise BadInput(f"--data {data} needs --data-root DIR")
        cache = Path(cache or Path(root) / ".cmmd_shards" / f"{clip.size}px-{clip.frames}f")
        prepare(data, cache, clip=clip, root=root, encoder=encoder)
        return ShardDataset(cache, split)
    if Path(data).is_dir() and (Path(data) / "config.json").exists():  # a prepared folder
        ds = ShardDataset(data, split)
        if ds.clip != clip:
            raise BadInput(f"{data}: shards were prepared for {ds.clip}, not the requested {clip}")
        return ds
    raise BadInput(f"--data {data}: unknown; choose synthetic, folder, aist, or a prepared shard directory")


def main(argv=None):
    p = argparse.ArgumentParser(description="Data tools for cmmd.")
    sub = p.add_subparsers(dest="cmd", required=True)
    q = sub.add_parser("prepare", help="decode once into training-ready safetensors shards")
    q.add_argument("--data", required=True, choices=["synthetic", "folder", "aist"], help="which dataset")
    q.add_argument("--data-root", help="folder of videos (folder) or the AIST++ root (aist)")
    q.add_argument("--out", required=True, help="output directory of shards")
    for f in ("frames", "size", "margin"):
        q.add_argument(f"--{f}", type=int, default=getattr(ClipConfig, f), help=f"ClipConfig.{f}")
    q.add_argument("--clips", type=int, nargs=3, default=list(SYNTHETIC_CLIPS.values()),
                   metavar=tuple(s.upper() for s in SPLITS), help="number of synthetic clips per split")
    q.add_argument("--seed", type=int, default=0, help="synthetic generator seed")
    q.add_argument("--vae", choices=["none", "sd"], default="none", help="also store SD-VAE latents")
    q.add_argument("--vae-path", default=vae.HUB_ID, help="local VAE directory or hub id")
    cli.run(run_prepare, p.parse_args(argv))


def run_prepare(a):
    clip = ClipConfig(frames=a.frames, size=a.size, margin=a.margin)
    for split, n in zip(SPLITS, a.clips):
        cli.check_range(f"clips ({split})", n, 0)
    # the folder and the sources before the VAE loads (prepare checks them again, at no cost)
    cli.check_writable_dir(a.out)
    if a.data != "synthetic":
        source_files(a.data, a.data_root)
    encoder = None
    if a.vae == "sd":
        codec = vae.make_codec("sd", a.vae_path)

        def encoder(frames):  # (Fw, 3, H, W) uint8 -> (Fw, 4, h, w)
            with torch.inference_mode():
                return codec.encode(to_unit(frames[None]))[0]
    prepare(a.data, a.out, clip=clip, root=a.data_root, seed=a.seed, encoder=encoder,
            num_clips=dict(zip(SPLITS, a.clips)))


if __name__ == "__main__":
    main()
