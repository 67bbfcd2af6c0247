"""The run's HTML page in a real browser: a demo-shaped run folder opened from disk in headless Chromium,
driven over the DevTools protocol (no Python dependency beyond the standard library). Every video must
load its metadata with the clip's duration and decode frames and sound; every image must decode.

Skips only when no Chromium binary is found (`chromium`, `chromium-browser` or `google-chrome` on PATH,
or the CHROMIUM environment variable); `.ci/run` installs Debian's `chromium`.
"""
import base64
import fcntl
import json
import os
import queue
import shutil
import signal
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import data
import figures
import media
import melspec
from conftest import ROOT

CLIP = data.ClipConfig(size=16)
TIMEOUT_S = 20.0  # the whole page must settle within this; it takes about 2 s
# Flags for headless Chromium as root on a machine with no network (the machines' notes, env/python.md).
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--autoplay-policy=no-user-gesture-required", "--mute-audio", "--hide-scrollbars")


def chromium_binary() -> str:
    """The browser to drive: $CHROMIUM, else the first of chromium, chromium-browser, google-chrome on PATH."""
    if os.environ.get("CHROMIUM"):
        found = shutil.which(os.environ["CHROMIUM"])
        if found is None:
            pytest.fail(f"CHROMIUM={os.environ['CHROMIUM']}: not an executable")
        return found
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if found := shutil.which(name):
            return found
    pytest.skip("no Chromium found (chromium, chromium-browser or google-chrome on PATH, or $CHROMIUM); "
                "install it with `apt-get install -y chromium`")


class Chromium:
    """Headless Chromium driven over --remote-debugging-pipe: JSON messages ended by NUL, commands on the
    browser's fd 3, replies and events on its fd 4 (the DevTools protocol, flat sessions)."""

    def __init__(self, binary: str, user_dir: Path, width: int = 1440, height: int = 900):
        to_browser, from_browser = os.pipe(), os.pipe()  # (read, write) each
        # The browser's ends are moved to fds >= 10 so they cannot collide with 3 and 4, which bash then
        # assigns (dash, /bin/sh on Debian, refuses fds above 9).
        r = fcntl.fcntl(to_browser[0], fcntl.F_DUPFD, 10)
        w = fcntl.fcntl(from_browser[1], fcntl.F_DUPFD, 10)
        for fd in (to_browser[0], from_browser[1]):
            os.close(fd)
        self.stderr = user_dir / "chromium-stderr.log"
        args = [*FLAGS, f"--user-data-dir={user_dir}", f"--window-size={width},{height}", "--remote-debugging-pipe"]
        with open(self.stderr, "wb") as err:
            # A new session, so that the browser and all its helper processes can be killed as one group.
            self.proc = subprocess.Popen(["bash", "-c", f'exec "$0" "$@" 3<&{r} 4>&{w} {r}<&- {w}>&-', binary, *args],
                                         pass_fds=(r, w), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                         stderr=err, start_new_session=True)
        os.close(r), os.close(w)
        self.out, self.inp = to_browser[1], from_browser[0]
        self.messages: queue.Queue = queue.Queue()
        self.last_id = 0
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        buf = b""
        while chunk := os.read(self.inp, 1 << 16):
            *messages, buf = (buf + chunk).split(b"\0")
            for m in messages:
                self.messages.put(json.loads(m))
        self.messages.put(None)  # the browser closed its end

    def wait_for(self, match, timeout: float) -> dict:
        """The next message for which match(message) holds, its result or params; other events are dropped."""
        end = time.monotonic() + timeout
        while True:
            try:
                m = self.messages.get(timeout=max(end - time.monotonic(), 0.01))
            except queue.Empty:
                raise TimeoutError(f"no DevTools answer within {timeout} s; see {self.stderr}") from None
            if m is None:
                raise RuntimeError(f"Chromium exited ({self.proc.poll()}); see {self.stderr}")
            if match(m):
                if "error" in m:
                    raise RuntimeError(f"DevTools error: {m['error']}")
                return m.get("result", m.get("params", {}))

    def send(self, method: str, params: dict | None = None, session: str | None = None, timeout: float = 10.0) -> dict:
        self.last_id += 1
        msg_id = self.last_id
        msg = {"id": msg_id, "method": method, "params": params or {}, **({"sessionId": session} if session else {})}
        os.write(self.out, json.dumps(msg).encode() + b"\0")
        return self.wait_for(lambda m: m.get("id") == msg_id, timeout)

    def close(self):
        """Ask the browser to quit, then kill its process group whatever happened."""
        try:
            self.send("Browser.close", timeout=3)
        except (OSError, RuntimeError, TimeoutError):
            pass
        try:
            self.proc.wait(timeout=3)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # the helpers (renderer, GPU, zygote) share the group
        except ProcessLookupError:
            pass
        self.proc.wait()
        for fd in (self.out, self.inp):
            os.close(fd)


# Waits for every video's metadata or error and every image's load, then plays every video for a moment
# (so frames and sound are decoded, not only the container parsed), rewinds to the first frame, and reports.
CHECK_MEDIA = """
(async (timeoutMs) => {
  const sleep = ms => new Promise(r => setTimeout(r, ms));
  const t0 = performance.now(), late = () => performance.now() - t0 > timeoutMs;
  const videos = [...document.querySelectorAll("video")], images = [...document.querySelectorAll("img")];
  while (!(videos.every(v => v.readyState >= 1 || v.error) && images.every(i => i.complete)) && !late())
    await sleep(50);
  const ok = videos.filter(v => v.readyState >= 1 && !v.error);
  await Promise.all(ok.map(v => v.play().catch(() => null)));
  while (ok.some(v => v.currentTime < 0.3 && !v.ended && !v.error) && !late()) await sleep(50);
  for (const v of ok) { v.pause(); v.currentTime = 0; }  // the first frame, for the screenshot
  while (ok.some(v => v.seeking || v.readyState < 2) && !late()) await sleep(50);
  await new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)));  // painted
  return JSON.stringify({
    videos: videos.map(v => ({src: v.currentSrc, readyState: v.readyState, duration: v.duration,
      error: v.error && `${v.error.code} ${v.error.message}`, frames: v.getVideoPlaybackQuality().totalVideoFrames,
      audioBytes: v.webkitAudioDecodedByteCount, width: v.videoWidth})),
    images: images.map(i => ({src: i.currentSrc, complete: i.complete, naturalWidth: i.naturalWidth})),
    late: late()});
})
"""


def open_page(binary: str, page: Path, user_dir: Path, screenshot: Path, width: int = 1440) -> dict:
    """Open `page` from disk, check its media (CHECK_MEDIA's report) and save a full-page PNG screenshot."""
    browser = Chromium(binary, user_dir, width)
    try:
        target = browser.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = browser.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        browser.send("Page.enable", session=session)
        browser.send("Page.navigate", {"url": page.resolve().as_uri()}, session=session)
        browser.wait_for(lambda m: m.get("method") == "Page.loadEventFired" and m.get("sessionId") == session,
                         TIMEOUT_S)
        reply = browser.send("Runtime.evaluate", {"expression": f"{CHECK_MEDIA}({int(TIMEOUT_S * 1000)})",
                                                  "awaitPromise": True, "returnByValue": True},
                             session=session, timeout=TIMEOUT_S + 5)
        if "exceptionDetails" in reply:
            raise RuntimeError(f"the page's check script failed: {reply['exceptionDetails']}")
        report = json.loads(reply["result"]["value"])
        size = browser.send("Page.getLayoutMetrics", session=session)["cssContentSize"]
        shot = browser.send("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True,
                                                       "clip": {"x": 0, "y": 0, "width": width,
                                                                "height": size["height"], "scale": 1}},
                            session=session, timeout=TIMEOUT_S)
        screenshot.write_bytes(base64.b64decode(shot["data"]))
        return report
    finally:
        browser.close()


def demo_run(root: Path, clips: int = 2) -> tuple[Path, float]:
    """A run folder shaped like the demo's: samples/ with each clip's v2a, a2v and true mp4s, a mel figure
    and a frame strip, and index.html at the top. The "generated" streams are the truth moved by 200 ms
    (half the margin: bounces recur every 400 ms or more), so generated and true differ visibly.
    Returns the page and the clips' duration in s."""
    ds = data.SyntheticDataset(CLIP, "test", num_clips=clips)
    m, ms = CLIP.margin, CLIP.margin_samples
    shift, shift_samples = m // 2, ms // 2  # 200 ms, inside the margin of real content
    samples = root / "samples"
    sections = []
    for i in range(clips):
        item = ds[i]
        video, audio = item["video"][m:m + CLIP.frames], item["audio"][ms:ms + CLIP.samples]  # (F, 3, H, W), (L,)
        gen_video = item["video"][m + shift:m + shift + CLIP.frames]
        gen_audio = item["audio"][ms + shift_samples:ms + shift_samples + CLIP.samples]
        truth = media.write_mp4(samples / f"clip{i}_truth.mp4", video, audio)
        v2a = media.write_mp4(samples / f"clip{i}_v2a.mp4", video, gen_audio)
        a2v = media.write_mp4(samples / f"clip{i}_a2v.mp4", gen_video, audio)
        mels = {"generated": melspec.wav_to_mel(gen_audio[None])[0], "truth": melspec.wav_to_mel(audio[None])[0]}
        mel = figures.mel_figure(samples / f"clip{i}_v2a_mel.png", mels, events=item["events"],
                                 title=f"clip {i}: video → audio")
        strip = figures.frame_strip(samples / f"clip{i} a2v frames.png", {"generated": gen_video, "truth": video},
                                    events=item["events"], title=f"clip {i}: audio → video")
        events = item["events"][~item["events"].isnan()].tolist()
        sections.append({
            "name": f"clip {i}: {item['name'].rsplit('-', 1)[-1]}",
            "caption": "true events at " + ", ".join(f"{t:.2f}" for t in events) + " s",
            "directions": [
                {"title": "video → audio", "videos": [("generated", v2a), ("truth", truth)],
                 "images": [("mel spectrograms", mel)]},
                {"title": "audio → video", "videos": [("generated", a2v), ("truth", truth)],
                 "images": [("frames", strip)]}]})
    table = [["held-out synthetic clips (test)", "onset F1 ±100 ms", "event hit rate ±100 ms"],
             ["v2a model", "0.747 [0.68, 0.81]", 0.889], ["v2a shifted 400 ms", "0.639 [0.57, 0.71]", 0.619],
             ["a2v model", "0.702 [0.63, 0.77]", 0.730], ["a2v shifted 400 ms", "0.592 [0.52, 0.66]", 0.587]]
    page = figures.write_page(root / "index.html", title="cmmd demo: test page",
                              intro="A page built by tests/test_page.py: the \"generated\" streams are the truth "
                                    "moved by 200 ms. Videos play with sound.",
                              table=table, clips=sections)
    return page, CLIP.duration


def png_size(path: Path) -> tuple[int, int]:
    raw = path.read_bytes()
    assert raw[:8] == b"\x89PNG\r\n\x1a\n" and raw[12:16] == b"IHDR", f"{path}: not a PNG"
    return struct.unpack(">II", raw[16:24])


def test_page_opens_from_disk_and_every_video_and_image_loads(tmp_path):
    binary = chromium_binary()
    page, duration = demo_run(tmp_path / "run #1")  # '#' in the folder: the file URL must encode it
    (tmp_path / "profile").mkdir()
    report = open_page(binary, page, tmp_path / "profile", tmp_path / "page.png")
    videos, images = report["videos"], report["images"]
    assert len(videos) == 8 and len(images) == 4, report
    for v in videos:
        assert v["error"] is None and v["readyState"] >= 1, f"video did not load: {v}"
        assert abs(v["duration"] - duration) < 0.1, f"video lasts {v['duration']} s, not {duration} s: {v}"
        assert v["width"] == CLIP.size and v["frames"] > 0, f"no video frames decoded: {v}"
        assert v["audioBytes"] > 0, f"no sound decoded: {v}"
    for i in images:
        assert i["complete"] and i["naturalWidth"] > 0, f"image did not decode: {i}"
    assert not report["late"], f"the page did not settle within {TIMEOUT_S} s"
    w, h = png_size(tmp_path / "page.png")
    assert w == 1440 and h > 600, (w, h)


def test_the_demos_own_page_in_a_browser(tmp_path):
    """`python demo.py` on a handful of steps and clips: its index.html opens from disk, every video (the
    generated and the true ones, both directions) plays with sound for the clip's length, every figure decodes."""
    binary = chromium_binary()
    run = tmp_path / "demo"
    proc = subprocess.run([sys.executable, "demo.py", "--out", str(run), "--steps", "2", "--train-clips", "8",
                           "--clips", "3", "--show", "2", "--sample-steps", "2", "--batch", "2"], cwd=ROOT,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (tmp_path / "profile").mkdir()
    report = open_page(binary, run / "index.html", tmp_path / "profile", tmp_path / "page.png")
    videos, images = report["videos"], report["images"]
    assert len(videos) == 2 * 4 and len(images) == 2 * 2, report  # per clip: 2 directions × (generated, truth)
    for v in videos:
        assert v["error"] is None and v["readyState"] >= 1, f"video did not load: {v}"
        assert abs(v["duration"] - CLIP.duration) < 0.1, f"video lasts {v['duration']} s, not {CLIP.duration} s: {v}"
        assert v["frames"] > 0 and v["audioBytes"] > 0, f"no frames or no sound decoded: {v}"
    for i in images:
        assert i["complete"] and i["naturalWidth"] > 0, f"image did not decode: {i}"
    assert png_size(tmp_path / "page.png")[1] > 600
