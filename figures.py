"""What a person looks at: spectrogram figures, frame strips and the run's HTML page.

One place for every picture the project writes, shared by the demo, sample.py and train.py's previews:
- `mel_figure`: stacked log-mel panels ("generated", "truth", …) drawn with librosa.display.specshow, in
  dB against time (s) and mel frequency (Hz), with the true event times marked.
- `frame_strip`: video frames in a grid, one labelled row per video, each column labelled with its time,
  frames upscaled with nearest so 16 px frames stay visible, frames of true events outlined.
- `write_page`: one self-contained `index.html` (inline CSS, no scripts, no external resources) that
  opens from disk: the score table, then per clip the generated and true videos with sound side by side
  for each direction, and the figures.
Every file is written atomically (a temporary name, then `os.replace`); figures are drawn on matplotlib
`Figure` objects with the Agg renderer, never through pyplot, so no window opens.

Why, and which browsers play the page's mp4s: docs/evaluation.md.
"""
import html
import os
import urllib.parse
from collections.abc import Sequence
from pathlib import Path
from typing import TypedDict

import numpy as np
import torch

import checkpoint
import media
import melspec
from modalities import to_uint8

DPI = 100  # figure resolution: mel figures 600 px wide (about 80 kB), frame strips about 10 kB
MEL_WIDTH_IN, MEL_PANEL_IN = 6.0, 1.7  # figure width and height per panel, inches
EVENT_COLOUR = "#00d5ff"  # cyan: visible on magma's dark purple and on the white of a frame strip
FRAME_MIN_PX = 32  # frames are drawn at least this large (a 16 px frame: 2×2 pixels per source pixel)
VIDEO_WIDTH_PX = 256  # display width of a video on the page; 16 px clips are upscaled 16×, pixelated
DB_PER_LOG10 = 20.0  # the front end's log10 is of a magnitude (power 1), so 20·log10 is dB


def save_figure(fig, path) -> Path:
    """Write a matplotlib Figure as a PNG, atomically."""
    with checkpoint.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI)
    return Path(path)


def new_figure(width_in: float, height_in: float, **kw):
    """A Figure with the Agg renderer, outside pyplot (nothing to close, no global state)."""
    from matplotlib.figure import Figure
    return Figure(figsize=(width_in, height_in), dpi=DPI, **kw)


def _event_times(events) -> np.ndarray:
    """Event times in seconds as a 1-D float array, NaN padding (synthetic.EVENTS_MAX) dropped."""
    if events is None:
        return np.zeros(0)
    e = events.detach().cpu().double().numpy() if isinstance(events, torch.Tensor) else np.asarray(events, float)
    assert e.ndim == 1, f"events must be a 1-D array of seconds, got shape {e.shape}"
    return e[~np.isnan(e)]


# ----------------------------------------------------------------------------------------------------
# Figures
def mel_figure(path, mels: dict, *, events=None, title: str = "") -> Path:
    """Stacked log-mel panels, one per entry of `mels` {label: normalised log-mel (M, T)} (melspec.wav_to_mel's
    scale, about [-1, 1]), in dB on one fixed colour scale so panels compare; x time in s, y mel frequency
    in Hz; the true `events` (s, NaNs ignored) as dashed lines in every panel. Returns `path` (a PNG)."""
    import librosa.display
    assert mels, "mel_figure needs at least one mel"
    fig = new_figure(MEL_WIDTH_IN, MEL_PANEL_IN * len(mels) + (0.3 if title else 0), layout="constrained")
    axes = fig.subplots(len(mels), 1, sharex=True, squeeze=False)[:, 0]
    ev = _event_times(events)
    for i, (ax, (label, mel)) in enumerate(zip(axes, mels.items())):
        assert mel.ndim == 2 and mel.shape[0] == melspec.N_MELS, \
            f"mel {label!r} must be ({melspec.N_MELS}, T), got {tuple(mel.shape)}"
        db = DB_PER_LOG10 * melspec.denormalize_log_mel(mel.detach().float().cpu()).numpy()  # (M, T)
        # Mel frame j is centred on sample HOP·j + HOP/2 (melspec.mel_magnitude's padding), not on HOP·j as
        # specshow assumes, so its cell spans [HOP·j, HOP·(j + 1)) and the axis runs from 0 to the clip's end.
        centres = (np.arange(db.shape[1]) + 0.5) * melspec.HOP / melspec.SAMPLE_RATE
        img = librosa.display.specshow(db, x_coords=centres, x_axis="time", y_axis="mel", sr=melspec.SAMPLE_RATE,
                                       hop_length=melspec.HOP, fmin=melspec.MEL_FMIN, fmax=melspec.MEL_FMAX, ax=ax,
                                       cmap="magma", vmin=DB_PER_LOG10 * melspec.LOG_MEL_MIN,
                                       vmax=DB_PER_LOG10 * melspec.LOG_MEL_MAX)
        for k, t in enumerate(ev):
            ax.axvline(t, color=EVENT_COLOUR, lw=1, ls="--", label="true events" if k == 0 else None)
        ax.set_title(label, loc="left", fontsize=10)
        ax.set_ylabel("Hz")
        ax.set_xlabel("time (s)" if i == len(mels) - 1 else "")
        fig.colorbar(img, ax=ax, pad=0.01, aspect=12).set_label("dB", fontsize=8)
    if len(ev):
        axes[0].legend(loc="upper right", fontsize=7, framealpha=0.7)
    if title:
        fig.suptitle(title, fontsize=11)
    return save_figure(fig, path)


def frame_strip(path, rows: dict, *, fps: int = media.FPS, every: int = 1, events=None, title: str = "") -> Path:
    """Frames in a grid, one labelled row per entry of `rows` {label: video (F, 3, H, W), uint8 or float in
    [-1, 1]}, every `every`-th frame left to right, each column labelled with its time in s; the column
    nearest to each true event (s, NaNs ignored) is outlined. Returns `path` (a PNG)."""
    from matplotlib.patches import Patch, Rectangle
    assert rows and every >= 1, "frame_strip needs at least one row and every >= 1"
    videos = {}
    for label, v in rows.items():
        assert v.ndim == 4 and v.shape[1] == 3, f"row {label!r} must be (F, 3, H, W), got {tuple(v.shape)}"
        videos[label] = to_uint8(v.detach().cpu())[::every].permute(0, 2, 3, 1).numpy()  # (F', H, W, 3)
    H, W = next(iter(videos.values())).shape[1:3]
    assert all(v.shape[1:3] == (H, W) for v in videos.values()), "all rows must have frames of one size"
    cols = max(len(v) for v in videos.values())
    gap = max(1, H // 8)  # white space between frames, in source pixels; an outline is drawn in it
    canvas = np.full((len(videos) * (H + gap) + gap, cols * (W + gap) + gap, 3), 255, np.uint8)
    for r, v in enumerate(videos.values()):
        for c, frame in enumerate(v):
            y, x = gap + r * (H + gap), gap + c * (W + gap)
            canvas[y:y + H, x:x + W] = frame
    # Figure size in pixels: the canvas scaled by an integer (nearest, so pixels stay square and sharp)
    # plus margins for the row labels, the time labels and the title.
    scale = max(1, -(-FRAME_MIN_PX // H))
    left = 16 + 7 * max(len(k) for k in videos)
    bottom, top = 44, (40 if title else 14)
    w_px, h_px = canvas.shape[1] * scale, canvas.shape[0] * scale
    fig = new_figure((w_px + left + 12) / DPI, (h_px + bottom + top) / DPI)
    fw, fh = fig.get_size_inches() * DPI
    ax = fig.add_axes([left / fw, bottom / fh, w_px / fw, h_px / fh])
    ax.imshow(canvas, interpolation="nearest")
    centres = gap + np.arange(cols) * (W + gap) + (W - 1) / 2
    ax.set_xticks(centres, [f"{c * every / fps:.1f}" for c in range(cols)], fontsize=7)
    ax.set_yticks(gap + np.arange(len(videos)) * (H + gap) + (H - 1) / 2, list(videos), fontsize=9)
    ax.tick_params(length=0)
    ax.set_xlabel("time (s)", fontsize=8)
    for side in ax.spines.values():
        side.set_visible(False)
    marked = set()
    for t in _event_times(events):
        c = int(round(t * fps / every))  # the shown frame nearest to the event
        if 0 <= c < cols and c not in marked:
            marked.add(c)
            for r in range(len(videos)):
                x0, y0 = c * (W + gap) - 0.5 + gap / 2, r * (H + gap) - 0.5 + gap / 2
                ax.add_patch(Rectangle((x0, y0), W + gap, H + gap, fill=False, ec=EVENT_COLOUR, lw=2))
    if marked:
        fig.legend(handles=[Patch(fill=False, ec=EVENT_COLOUR, lw=2, label="true event")], loc="upper right",
                   fontsize=7, frameon=False, borderaxespad=0.2)
    if title:
        fig.text(left / fw, 1 - 8 / fh, title, fontsize=11, va="top")
    return save_figure(fig, path)


# ----------------------------------------------------------------------------------------------------
# The page
class Direction(TypedDict):
    """One generation direction of a clip, shown as a row: its videos side by side, then its figures.
    Paths are files on disk (absolute, or relative to the working directory, as Python opens them); the
    page links them relative to its own folder, so a run folder can be moved or copied whole."""
    title: str  # e.g. "video → audio"
    videos: list[tuple[str, str | os.PathLike]]  # [(label, mp4 with sound)]: [("generated", …), ("truth", …)]
    images: list[tuple[str, str | os.PathLike]]  # [(label, PNG)], e.g. [("mel spectrograms", …)]


class Clip(TypedDict):
    """One clip's section of the page."""
    name: str  # the heading, e.g. "clip 0: bounce"
    caption: str  # one line under the heading, e.g. the true event times
    directions: list[Direction]  # e.g. video → audio, then audio → video


_CSS = f"""
body {{ font: 15px/1.45 system-ui, sans-serif; color: #1d1d1f; background: #fafafa; margin: 0; }}
main {{ max-width: 1440px; margin: 0 auto; padding: 20px 28px 40px; }}
h1 {{ font-size: 26px; margin: 4px 0 8px; }}
h2 {{ font-size: 20px; margin: 0 0 2px; }}
h3 {{ font-size: 15px; margin: 0 0 8px; color: #444; }}
p.intro {{ max-width: 820px; margin: 6px 0; }}
table {{ border-collapse: collapse; margin: 14px 0 24px; background: #fff; font-variant-numeric: tabular-nums; }}
th, td {{ border: 1px solid #ddd; padding: 4px 12px; text-align: right; }}
th:first-child, td:first-child {{ text-align: left; }}
th {{ background: #f0f0f0; }}
section.clip {{ background: #fff; border: 1px solid #e2e2e2; border-radius: 8px; padding: 16px 18px;
  margin: 0 0 20px; }}
p.caption {{ margin: 0 0 12px; color: #555; }}
div.direction {{ display: flex; flex-wrap: wrap; gap: 14px 22px; align-items: flex-start; padding: 12px 0;
  border-top: 1px solid #eee; }}
div.direction > h3 {{ flex-basis: 100%; }}
div.videos, div.images {{ display: flex; flex-wrap: wrap; gap: 12px; align-items: flex-start; }}
figure {{ margin: 0; }}
figcaption {{ font-size: 13px; color: #444; text-align: center; margin-top: 2px; }}
video {{ width: {VIDEO_WIDTH_PX}px; height: {VIDEO_WIDTH_PX}px; background: #000; image-rendering: pixelated; }}
img {{ max-width: 100%; height: auto; display: block; }}
"""


def _href(path, page_dir: Path, page: Path) -> str:
    """A file's URL relative to the page's folder, percent-encoded (spaces, '#', '?') and escaped."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file (linked from {page})")
    rel = Path(os.path.relpath(path.resolve(), page_dir.resolve())).as_posix()
    return html.escape(urllib.parse.quote(rel))


def _cell(x) -> str:
    if isinstance(x, float):
        return "–" if np.isnan(x) else f"{x:.3f}"
    return html.escape(str(x))


def _table(rows: Sequence[Sequence]) -> str:
    """An HTML table from rows of cells (str, int or float, floats shown to 3 decimals); the first row
    is the header."""
    if not rows:
        return ""
    head = "".join(f"<th>{_cell(c)}</th>" for c in rows[0])
    body = "\n".join("<tr>" + "".join(f"<td>{_cell(c)}</td>" for c in r) + "</tr>" for r in rows[1:])
    return f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n</tbody>\n</table>"


def _direction(d: Direction, page_dir: Path, page: Path) -> str:
    assert set(d) == set(Direction.__annotations__), \
        f"a direction has the keys {sorted(Direction.__annotations__)}, got {sorted(d)}"
    videos = "\n".join(
        f'<figure><video controls preload="metadata" src="{_href(p, page_dir, page)}"></video>'
        f"<figcaption>{html.escape(label)}</figcaption></figure>" for label, p in d["videos"])
    images = "\n".join(
        f'<figure><img src="{_href(p, page_dir, page)}" alt="{html.escape(label)}">'
        f"<figcaption>{html.escape(label)}</figcaption></figure>" for label, p in d["images"])
    return (f'<div class="direction">\n<h3>{html.escape(d["title"])}</h3>\n<div class="videos">\n{videos}\n</div>\n'
            f'<div class="images">\n{images}\n</div>\n</div>')


def write_page(path, *, title: str, intro: str = "", table: Sequence[Sequence] = (),
               clips: Sequence[Clip] = ()) -> Path:
    """Write a self-contained HTML page (inline CSS, no scripts, no external resources; it opens from
    disk): a heading, `intro` (plain text, blank lines separate paragraphs), the score `table` (rows of
    cells, the first row the header), then a section per clip (see `Clip` and `Direction`). All text is
    escaped. Raises FileNotFoundError naming a linked file that does not exist. Returns `path`."""
    path = Path(path)
    page_dir = path.parent
    sections = []
    for c in clips:
        assert set(c) == set(Clip.__annotations__), \
            f"a clip has the keys {sorted(Clip.__annotations__)}, got {sorted(c)}"
        dirs = "\n".join(_direction(d, page_dir, path) for d in c["directions"])
        caption = f'<p class="caption">{html.escape(c["caption"])}</p>\n' if c["caption"] else ""
        sections.append(f'<section class="clip">\n<h2>{html.escape(c["name"])}</h2>\n{caption}{dirs}\n</section>')
    paragraphs = "\n".join(f'<p class="intro">{html.escape(p.strip())}</p>' for p in intro.split("\n\n") if p.strip())
    doc = (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
           f'<meta name="viewport" content="width=device-width, initial-scale=1">\n'
           f"<title>{html.escape(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n<main>\n"
           f"<h1>{html.escape(title)}</h1>\n{paragraphs}\n{_table(table)}\n" + "\n".join(sections)
           + "\n</main>\n</body>\n</html>\n")
    with checkpoint.atomic_path(path) as tmp:
        tmp.write_text(doc, encoding="utf-8")
    return path
