"""figures.py: the PNGs decode and have a plausible size, the page escapes text and links files relative
to itself, and writes are atomic (no temporary file left, an existing file kept when a write fails)."""
import html
from pathlib import Path

import matplotlib.figure
import matplotlib.image
import numpy as np
import pytest
import torch

import data
import figures
import media
import melspec

CLIP = data.ClipConfig(size=16)


@pytest.fixture(scope="module")
def item():
    it = data.SyntheticDataset(CLIP, "test", num_clips=1)[0]
    m, ms = CLIP.margin, CLIP.margin_samples
    return {"video": it["video"][m:m + CLIP.frames], "audio": it["audio"][ms:ms + CLIP.samples], "events": it["events"]}


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def test_mel_figure_is_a_small_decodable_png(tmp_path, item):
    mel = melspec.wav_to_mel(item["audio"][None])[0]  # (M, T)
    path = figures.mel_figure(tmp_path / "mel.png", {"generated": mel.flip(1), "truth": mel},
                              events=item["events"], title="clip 0")
    img = matplotlib.image.imread(path)  # (h, w, 4) float
    assert 300 <= img.shape[1] <= 1000 and 250 <= img.shape[0] <= 600, img.shape
    assert img[..., :3].std() > 0.1  # drawn, not blank
    assert path.stat().st_size < 200_000 and leftovers(tmp_path) == []
    taller = figures.mel_figure(tmp_path / "three.png", {"a": mel, "b": mel, "c": mel})  # no events: no legend
    assert matplotlib.image.imread(taller).shape[0] > img.shape[0]


def test_mel_figure_refuses_a_batch(tmp_path):
    with pytest.raises(AssertionError, match=r"must be \(80, T\)"):
        figures.mel_figure(tmp_path / "m.png", {"generated": torch.zeros(1, 80, 10)})


def test_frame_strip_grid_size_and_pixels(tmp_path, item):
    v = item["video"]  # (F, 3, 16, 16) uint8
    path = figures.frame_strip(tmp_path / "strip.png", {"generated": v.float() / 127.5 - 1, "truth": v},
                               events=item["events"], title="clip 0")
    img = matplotlib.image.imread(path)
    scale = -(-figures.FRAME_MIN_PX // CLIP.size)
    assert img.shape[1] >= CLIP.frames * CLIP.size * scale  # every frame, upscaled
    assert 2 * CLIP.size * scale < img.shape[0] < 400
    every = figures.frame_strip(tmp_path / "every.png", {"truth": v}, every=3)
    assert matplotlib.image.imread(every).shape[1] < img.shape[1]  # 6 columns, not 18
    assert path.stat().st_size < 100_000 and leftovers(tmp_path) == []


def test_frame_strip_upscales_with_nearest(tmp_path):
    """A red and blue checkerboard stays red, blue and the white of the gaps when enlarged: no pixel is
    interpolated between its neighbours."""
    red = (torch.arange(16)[:, None] + torch.arange(16)[None]) % 2  # (H, W), 1 on the red squares
    frame = torch.stack([red * 255, torch.zeros(16, 16, dtype=torch.long), (1 - red) * 255])  # (3, H, W)
    video = frame.to(torch.uint8).expand(2, 3, 16, 16)  # (F, 3, H, W)
    img = matplotlib.image.imread(figures.frame_strip(tmp_path / "s.png", {"x": video}))
    rgb = (img[..., :3] * 255).round().astype(int)  # (h, w, 3)
    board = (rgb == (255, 0, 0)).all(-1) | (rgb == (0, 0, 255)).all(-1)
    rows, cols = np.nonzero(board)
    box = rgb[rows.min():rows.max() + 1, cols.min():cols.max() + 1].reshape(-1, 3)  # the two frames and their gap
    assert {tuple(c) for c in np.unique(box, axis=0)} <= {(255, 0, 0), (0, 0, 255), (255, 255, 255)}
    assert rows.max() - rows.min() + 1 == 16 * -(-figures.FRAME_MIN_PX // 16)  # upscaled by an integer


def test_write_page_escapes_text_and_links_relative_to_itself(tmp_path, item):
    run = tmp_path / "run"
    mp4 = media.write_mp4(run / "samples" / "clip 0 #a.mp4", item["video"], item["audio"])
    png = figures.mel_figure(run / "samples" / "mel.png", {"truth": melspec.wav_to_mel(item["audio"][None])[0]})
    evil = '<script>alert("x")</script> & co'
    clips = [{"name": evil, "caption": evil, "directions": [
        {"title": evil, "videos": [(evil, mp4), ("truth", mp4)], "images": [(evil, png)]}]}]
    page = figures.write_page(run / "index.html", title=evil, intro=f"{evil}\n\nsecond paragraph",
                              table=[["name", "f1"], [evil, 0.12345], ["nan", float("nan")]], clips=clips)
    text = page.read_text()
    assert "<script>" not in text and "alert(&quot;x&quot;)" in text
    assert text.count(html.escape(evil)) >= 7  # title ×2, intro, table cell, heading, caption, labels
    assert 'src="samples/clip%200%20%23a.mp4"' in text and 'src="samples/mel.png"' in text
    assert '<video controls preload="metadata"' in text and "image-rendering: pixelated" in text
    assert "<td>0.123</td>" in text and text.count('<p class="intro">') == 2
    assert "http" not in text.replace('name="viewport"', "")  # no external resources
    assert leftovers(run) == []


def test_write_page_names_a_missing_file(tmp_path):
    clips = [{"name": "c", "caption": "", "directions": [
        {"title": "v2a", "videos": [("generated", tmp_path / "nope.mp4")], "images": []}]}]
    with pytest.raises(FileNotFoundError, match="nope.mp4: no such file"):
        figures.write_page(tmp_path / "index.html", title="t", clips=clips)
    assert not (tmp_path / "index.html").exists() and leftovers(tmp_path) == []


def test_a_figure_that_fails_mid_write_leaves_the_old_png(tmp_path, monkeypatch, item):
    target = tmp_path / "mel.png"
    target.write_bytes(b"old")

    def broken_savefig(self, fname, **kw):
        Path(fname).write_bytes(b"\x89PNG half")
        raise OSError("disk full")
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", broken_savefig)
    with pytest.raises(OSError, match="disk full"):
        figures.mel_figure(target, {"truth": melspec.wav_to_mel(item["audio"][None])[0]})
    assert target.read_bytes() == b"old" and leftovers(tmp_path) == []
