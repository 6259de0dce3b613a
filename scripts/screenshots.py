"""Full-page screenshots of a report.html in headless Chromium, at the widths a reader uses (default 1400 and 800 px).

    python scripts/screenshots.py REPORT.html OUT_DIR [--widths 1400,800] [--browser chromium]

writes ``OUT_DIR/NAME-WIDTH.png``, ``NAME`` the page's path without ``.html`` (relative to the current folder when
inside it), its folders joined by ``_``: ``fairal-out/report/report.html`` gives
``fairal-out_report_report-1400.png``, so two ``report.html`` never share a name. Each PNG records the page it shows;
a file of that name that shows another page, or that this script did not write, is never overwritten (refused
before the browser starts). Chromium is driven over its
DevTools protocol on a pipe (``--remote-debugging-pipe``: the standard library only, no driver to download): the
page is loaded at the width, measured, and captured in strips of at most ``STRIP`` px that Pillow (installed with
matplotlib) stacks into one image, so a long page is never cut off by the browser's texture size. Any Chromium
build works (Debian: ``apt-get install chromium``; ``--browser`` names another binary, e.g. ``google-chrome``).
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

STRIP = 4000  # px per capture
SOURCE = "Source"  # the PNG text key naming the page a screenshot shows
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "chrome")


class DevTools:
    """A headless browser and one page, spoken to in JSON messages ended by a NUL byte on fds 3 (in) and 4 (out)."""

    def __init__(self, browser: str) -> None:
        to_browser, self._write = os.pipe()
        self._read, from_browser = os.pipe()
        flags = ["--headless=new", "--remote-debugging-pipe", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                 "--no-first-run", "--disable-extensions", "--mute-audio", "about:blank"]
        self.proc = subprocess.Popen(["sh", "-c", f'exec "$0" "$@" 3<&{to_browser} 4>&{from_browser}', browser,
                                      *flags], pass_fds=(to_browser, from_browser), stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        os.close(to_browser)
        os.close(from_browser)
        self._buffer, self._id, self.session = b"", 0, None
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]

    def _message(self) -> dict:
        while b"\0" not in self._buffer:
            chunk = os.read(self._read, 1 << 20)
            if not chunk:
                raise RuntimeError("the browser closed the pipe (is it a Chromium build?)")
            self._buffer += chunk
        raw, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(raw)

    def call(self, method: str, **params) -> dict:
        self._id += 1
        message = {"id": self._id, "method": method, "params": params}
        if self.session and not method.startswith("Target."):
            message["sessionId"] = self.session
        os.write(self._write, json.dumps(message).encode() + b"\0")
        while True:
            reply = self._message()
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})

    def wait_for(self, event: str) -> None:
        while self._message().get("method") != event:
            pass

    def close(self) -> None:
        try:
            self.call("Browser.close")
        except (RuntimeError, OSError):
            pass
        self.proc.wait(timeout=30)


def shot_name(page: Path, width: int) -> str:
    """The screenshot's file name: the page's path (relative to the current folder when inside it) without its
    suffix, folders joined by ``_``, then the width."""
    path = page.resolve()
    try:
        path = path.relative_to(Path.cwd().resolve())
    except ValueError:
        pass
    parts = [p for p in path.with_suffix("").parts if p != path.anchor]
    return "_".join(parts) + f"-{width}.png"


def refusal(page: Path, targets: list[Path]) -> str | None:
    """Why the screenshots cannot be written (None if they can): a target that exists and does not record this
    page as its source (another page's screenshot under a colliding name, or a file not written here)."""
    from PIL import Image, UnidentifiedImageError

    for target in targets:
        if not target.exists():
            continue
        try:
            with Image.open(target) as image:
                source = image.text.get(SOURCE) if hasattr(image, "text") else None
        except (OSError, UnidentifiedImageError):
            source = None
        if source != str(page.resolve()):
            shows = f"a screenshot of {source}" if source else "a file this script did not write"
            return f"error: {target} is {shows}; not overwritten (give another OUT_DIR)"
    return None


def screenshot(tools: DevTools, page: Path, width: int, target: Path) -> tuple[int, int]:
    """``page`` at ``width`` CSS px (device scale 1), the whole page, recording the page as its source; returns the
    image's size."""
    from PIL import Image, PngImagePlugin

    tools.call("Emulation.setDeviceMetricsOverride", width=width, height=900, deviceScaleFactor=1, mobile=False)
    tools.call("Page.enable")
    tools.call("Page.navigate", url=page.resolve().as_uri())
    tools.wait_for("Page.loadEventFired")
    height = int(tools.call("Page.getLayoutMetrics")["cssContentSize"]["height"] + 0.5)
    tools.call("Emulation.setDeviceMetricsOverride", width=width, height=min(height, STRIP), deviceScaleFactor=1,
               mobile=False)
    whole = Image.new("RGB", (width, height), "white")
    for top in range(0, height, STRIP):
        clip = {"x": 0, "y": top, "width": width, "height": min(STRIP, height - top), "scale": 1}
        data = tools.call("Page.captureScreenshot", format="png", clip=clip, captureBeyondViewport=True)["data"]
        whole.paste(Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB"), (0, top))
    info = PngImagePlugin.PngInfo()
    info.add_text(SOURCE, str(page.resolve()))
    whole.save(target, pnginfo=info)
    return whole.size


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("page", type=Path, help="the report.html")
    parser.add_argument("out", type=Path, help="folder for the PNGs (made if missing)")
    parser.add_argument("--widths", default="1400,800", help="comma-separated widths in CSS px (default 1400,800)")
    parser.add_argument("--browser", default=None, help=f"browser binary (default: the first of {', '.join(BROWSERS)})")
    args = parser.parse_args(argv)
    if not args.page.is_file():
        print(f"error: {args.page} is not a file", file=sys.stderr)
        return 2
    targets = {int(w): args.out / shot_name(args.page, int(w)) for w in args.widths.split(",")}
    refused = refusal(args.page, list(targets.values()))
    if refused:
        print(refused, file=sys.stderr)
        return 2
    browser = args.browser or next((b for b in BROWSERS if shutil.which(b)), None)
    if browser is None or not shutil.which(browser):
        print(f"error: no browser found (tried {args.browser or ', '.join(BROWSERS)}); e.g. apt-get install chromium",
              file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    tools = DevTools(browser)
    try:
        for width, target in targets.items():
            size = screenshot(tools, args.page, width, target)
            print(f"{target}: {size[0]} x {size[1]} px")
    finally:
        tools.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
