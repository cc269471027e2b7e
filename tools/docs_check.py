"""Check the built documentation site as a reader sees it, in headless Chromium.

Opens four pages of ``docs/_build/html`` (the front page, the mathematics, a notebook and an API
page) in Debian's ``chromium``, driven over the DevTools protocol on a pipe
(``--remote-debugging-pipe``: no network port, no Python dependency beyond the standard
library). For each page it waits for the load event, saves a screenshot under
``docs/_build/screenshots/``, and checks, in the rendered DOM:

- the page's title heading and a few phrases it must show (so an empty or broken page fails);
- no element of Sphinx's error output (``system-message``, ``problematic``);
- on the notebook page: at least as many images as the notebook draws figures, each one an
  ``<img>`` whose PNG file exists in the site, is non-empty and has a PNG header with a
  positive size, and which the browser decoded (``complete`` and ``naturalWidth > 0``);
- every page loads its scripts and stylesheets from the site itself (no ``http(s)://`` URL:
  the site works offline, MathJax included);
- on the math page: the equations typeset, as MathJax's rendered markup (``mjx-container``
  elements, at least ``min_math``; no ``$$`` or ``\\operatorname`` left in the visible text), and
  no table wider than its box (``scrollWidth`` within ``clientWidth``) or past the text column;
- on the notebook page: no code or output line cut at the cell's edge (every ``pre`` in a cell
  as wide as its box).

Usage: ``python tools/docs_check.py [--site DIR] [--out DIR] [--chromium PATH]`` (``make
docs-check`` runs it after ``make docs``). Exit code 0 when every check passes, 1 otherwise,
with one line per failure.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import select
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

ROOT = Path(__file__).resolve().parents[1]
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--remote-debugging-pipe",
]
WIDTH, HEIGHT = 1280, 1600
SLACK_PX = 8  # a table's border and its wrapper's padding may pass the text column by this


@dataclass
class Page:
    """One page to open: its path in the site and what it must show."""

    name: str
    path: str
    heading: str
    phrases: list[str] = field(default_factory=list)
    min_images: int = 0
    figure_screenshot: bool = False
    min_math: int = 0  # rendered equations (mjx-container) the page must show
    tables_fit: bool = False  # every table within its box and the text column
    code_fits: bool = False  # every notebook <pre> within its box (long lines wrap)


PAGES = [
    Page("front", "docs/index.html", "namex-ref",
         ["The mathematics", "API reference", "Momentum on linear dynamics", "Solver benchmark"]),
    Page("math", "docs/math.html", "The mathematics of namex-ref",
         ["S19 — Step matrix and spectral radius", "§7 — Tolerances", "Map of the tags"],
         min_math=10, tables_fit=True),
    Page("notebook", "notebooks/training.html", "Training: the tiny-preset comparison",
         ["α per layer", "Expert cosine similarity", "notebook ran in"], min_images=2,
         figure_screenshot=True, code_fits=True),
    Page("api", "docs/api/namex_ref.nash.solvers.html", "namex_ref.nash.solvers",
         ["solve_nash", "Solve Kα = 1/α", "NashSolution"]),
]

# Collected in the page: headings, text, Sphinx error markers and every image with its state.
PROBE = r"""(() => {
  const main = document.querySelector('article') || document.body;
  const imgs = Array.from(main.querySelectorAll('img')).map(im => ({
    src: im.getAttribute('src'), url: im.src, complete: im.complete,
    naturalWidth: im.naturalWidth, naturalHeight: im.naturalHeight,
    width: im.getBoundingClientRect().width, height: im.getBoundingClientRect().height,
    top: im.getBoundingClientRect().top + window.scrollY}));
  const box = el => ({scroll: el.scrollWidth, client: el.clientWidth,
                      right: el.getBoundingClientRect().right});
  const remote = Array.from(document.querySelectorAll('script[src], link[href]'))
    .map(el => el.getAttribute('src') || el.getAttribute('href'))
    .filter(u => /^(https?:)?\/\//.test(u) && !/^https?:\/\/(localhost|127\.)/.test(u));
  return {
    title: document.title,
    math: main.querySelectorAll('mjx-container').length,
    remote: remote,
    column: box(main),
    tables: Array.from(main.querySelectorAll('table')).map(box),
    pres: Array.from(main.querySelectorAll('div.cell pre')).map(box),
    h1: Array.from(document.querySelectorAll('h1')).map(h => h.textContent),
    text: main.innerText,
    errors: document.querySelectorAll('.system-message, .problematic').length,
    height: document.documentElement.scrollHeight,
    images: imgs,
  };
})()"""


# Resolves once MathJax (when the page loads it) has typeset the page.
MATH_READY = """(async () => {
  for (let i = 0; i < 100 && !(window.MathJax && MathJax.startup && MathJax.startup.promise)
       && document.querySelector('script[src*="mathjax"]'); i++) {
    await new Promise(r => setTimeout(r, 100));
  }
  if (window.MathJax && MathJax.startup && MathJax.startup.promise) {
    await MathJax.startup.promise;
  }
  return true;
})()"""


class Chromium:
    """A headless Chromium driven over the DevTools protocol on a pipe (fds 3 and 4)."""

    def __init__(self, binary: str, profile: Path) -> None:
        to_chrome_r, self._to_chrome = os.pipe()
        self._from_chrome, from_chrome_w = os.pipe()

        def wire() -> None:  # in the child: fd 3 reads our commands, fd 4 carries its replies
            read_end, write_end = os.dup(to_chrome_r), os.dup(from_chrome_w)  # above 4
            os.dup2(read_end, 3)  # dup2 makes 3 and 4 inheritable; every other fd of ours
            os.dup2(write_end, 4)  # is non-inheritable and closes at exec

        self.proc = subprocess.Popen(
            [binary, *FLAGS, f"--user-data-dir={profile}", f"--window-size={WIDTH},{HEIGHT}",
             "about:blank"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=wire,
            close_fds=False,
        )
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self._buffer = b""
        self._next_id = 0
        self.events: list[dict[str, Any]] = []

    def send(self, method: str, params: dict[str, Any] | None = None,
             session: str | None = None, timeout: float = 60.0) -> dict[str, Any]:
        self._next_id += 1
        msg: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._to_chrome, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._read(deadline)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return dict(reply.get("result", {}))
            self.events.append(reply)

    def wait_event(self, method: str, session: str, timeout: float = 60.0) -> dict[str, Any]:
        for i, ev in enumerate(self.events):
            if ev.get("method") == method and ev.get("sessionId") == session:
                return self.events.pop(i)
        deadline = time.monotonic() + timeout
        while True:
            ev = self._read(deadline)
            if ev.get("method") == method and ev.get("sessionId") == session:
                return ev
            self.events.append(ev)

    def _read(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("chromium did not answer in time")
            ready, _, _ = select.select([self._from_chrome], [], [], left)
            if ready:
                chunk = os.read(self._from_chrome, 1 << 20)
                if not chunk:
                    raise RuntimeError("chromium closed the DevTools pipe (did it start?)")
                self._buffer += chunk
        raw, self._buffer = self._buffer.split(b"\0", 1)
        return dict(json.loads(raw))

    def close(self) -> None:
        try:
            self.send("Browser.close", timeout=10)
        except Exception:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._to_chrome)
        os.close(self._from_chrome)


def png_size(data: bytes) -> tuple[int, int]:
    """(width, height) from a PNG header; (0, 0) if ``data`` is not a PNG."""
    if data[:8] != b"\x89PNG\r\n\x1a\n" or data[12:16] != b"IHDR":
        return 0, 0
    w, h = struct.unpack(">II", data[16:24])
    return int(w), int(h)


def open_page(chrome: Chromium, url: str) -> tuple[str, dict[str, Any]]:
    target = chrome.send("Target.createTarget", {"url": "about:blank"})["targetId"]
    session = chrome.send("Target.attachToTarget", {"targetId": target, "flatten": True})[
        "sessionId"
    ]
    chrome.send("Page.enable", session=session)
    chrome.send("Emulation.setDeviceMetricsOverride",
                {"width": WIDTH, "height": HEIGHT, "deviceScaleFactor": 1, "mobile": False},
                session=session)
    chrome.send("Page.navigate", {"url": url}, session=session)
    chrome.wait_event("Page.loadEventFired", session)
    chrome.send("Runtime.evaluate", {"expression": MATH_READY, "awaitPromise": True},
                session=session, timeout=120)
    probe = chrome.send("Runtime.evaluate", {"expression": PROBE, "returnByValue": True},
                        session=session)["result"]["value"]
    return session, dict(probe)


def screenshot(chrome: Chromium, session: str, path: Path, top: float = 0.0) -> int:
    clip = {"x": 0, "y": max(top, 0.0), "width": WIDTH, "height": HEIGHT, "scale": 1}
    data = chrome.send("Page.captureScreenshot",
                       {"format": "png", "clip": clip, "captureBeyondViewport": True},
                       session=session)["data"]
    raw = base64.b64decode(data)
    path.write_bytes(raw)
    return len(raw)


def check_page(chrome: Chromium, site: Path, out: Path, page: Page) -> list[str]:
    failures: list[str] = []
    file = site / page.path
    if not file.is_file():
        return [f"{page.name}: {file} does not exist (run make docs first)"]
    session, probe = open_page(chrome, file.resolve().as_uri())
    shot = out / f"{page.name}.png"
    size = screenshot(chrome, session, shot)
    print(f"{page.name:9s} {page.path}: title {probe['title']!r}, {len(probe['text'])} chars of "
          f"text, {len(probe['images'])} images, page height {probe['height']} px; "
          f"screenshot {shot} ({size} bytes)")
    if not any(page.heading in h for h in probe["h1"]):
        failures.append(f"{page.name}: no <h1> containing {page.heading!r} (got {probe['h1']})")
    for phrase in page.phrases:
        if phrase not in probe["text"]:
            failures.append(f"{page.name}: the text {phrase!r} is not shown")
    if probe["errors"]:
        failures.append(f"{page.name}: {probe['errors']} Sphinx error marker(s) in the page")
    if len(probe["text"]) < 500:
        failures.append(f"{page.name}: only {len(probe['text'])} characters of text")
    if size < 10_000:
        failures.append(f"{page.name}: screenshot is only {size} bytes (blank page?)")
    images = [im for im in probe["images"] if str(im["src"]).endswith(".png")]
    if len(images) < page.min_images:
        failures.append(f"{page.name}: {len(images)} PNG images shown, expected at least "
                        f"{page.min_images}")
    for k, im in enumerate(images):
        local = Path(unquote(urlparse(im["url"]).path))
        data = local.read_bytes() if local.is_file() else b""
        w, h = png_size(data)
        print(f"          image {k}: {im['src']} — file {len(data)} bytes, PNG {w}x{h}, "
              f"decoded {im['naturalWidth']}x{im['naturalHeight']}, "
              f"shown {im['width']:.0f}x{im['height']:.0f} px")
        if not data:
            failures.append(f"{page.name}: image {im['src']} has no file in the site")
        elif w <= 0 or h <= 0:
            failures.append(f"{page.name}: image {im['src']} is not a PNG with a positive size")
        if not im["complete"] or im["naturalWidth"] <= 0 or im["naturalHeight"] <= 0:
            failures.append(f"{page.name}: the browser did not decode image {im['src']}")
        if im["width"] <= 0 or im["height"] <= 0:
            failures.append(f"{page.name}: image {im['src']} is not laid out (zero size)")
    failures += layout_failures(page, probe)
    if page.figure_screenshot and images:
        top = float(images[0]["top"]) - 120.0
        fig_shot = out / f"{page.name}-figure.png"
        fig_size = screenshot(chrome, session, fig_shot, top=top)
        print(f"          screenshot at the first figure: {fig_shot} ({fig_size} bytes)")
    return failures


def layout_failures(page: Page, probe: dict[str, Any]) -> list[str]:
    """Offline assets, typeset math, tables and code that fit (see the module docstring)."""
    failures = [f"{page.name}: loads {url} from the network (the site must work offline)"
                for url in probe["remote"]]
    if page.min_math:
        print(f"          {probe['math']} typeset equations (mjx-container)")
        if probe["math"] < page.min_math:
            failures.append(f"{page.name}: {probe['math']} typeset equations (mjx-container), "
                            f"expected at least {page.min_math}")
        for raw in ("$$", "\\operatorname"):
            if raw in probe["text"]:
                failures.append(f"{page.name}: untypeset TeX {raw!r} in the visible text")
    column_right = float(probe["column"]["right"])
    if page.tables_fit:
        for k, t in enumerate(probe["tables"]):
            if t["scroll"] > t["client"] + 1 or t["right"] > column_right + SLACK_PX:
                failures.append(f"{page.name}: table {k} overflows ({t['scroll']} px of content "
                                f"in {t['client']} px, right edge {t['right']:.0f} px, text "
                                f"column ends at {column_right:.0f} px)")
        print(f"          {len(probe['tables'])} tables checked for overflow")
    if page.code_fits:
        cut = [k for k, pre in enumerate(probe["pres"]) if pre["scroll"] > pre["client"] + 1]
        if cut:
            failures.append(f"{page.name}: {len(cut)} of {len(probe['pres'])} code blocks wider "
                            f"than their box (blocks {cut[:5]})")
    return failures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--site", type=Path, default=ROOT / "docs" / "_build" / "html")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "_build" / "screenshots")
    parser.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    args = parser.parse_args(argv)
    if not Path(args.chromium).exists():
        print(f"docs-check: no chromium at {args.chromium} (apt-get install -y chromium)")
        return 1
    args.out.mkdir(parents=True, exist_ok=True)
    failures: list[str] = []
    with tempfile.TemporaryDirectory(prefix="namex-docs-chromium-") as profile:
        chrome = Chromium(args.chromium, Path(profile))
        try:
            chrome.send("Browser.getVersion", timeout=60)
            for page in PAGES:
                failures += check_page(chrome, args.site, args.out, page)
        finally:
            chrome.close()
    for line in failures:
        print("FAIL", line)
    print(f"docs-check: {len(PAGES)} pages, {len(failures)} failure(s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
