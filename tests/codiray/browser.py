"""Headless Chromium for report tests: open a page, wait for every image and player, collect what
loaded, the console errors and a screenshot (Debian's ``chromium``; the README's test command installs it)."""

from __future__ import annotations

import base64
import fcntl
import json
import os
import select
import shutil
import subprocess
from pathlib import Path

import pytest


class DevTools:
    """A minimal Chrome DevTools Protocol client over ``--remote-debugging-pipe`` (fd 3 in, fd 4 out,
    NUL-separated JSON): no websocket library needed."""

    def __init__(self, binary: str, profile: Path, log: Path):
        to_chrome, from_chrome = os.pipe(), os.pipe()
        # move every end above fd 10 so the child's dup2 onto 3 and 4 cannot clobber one of them
        (r_in, self.w), (self.r, w_out) = [[fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10) for fd in p]
                                           for p in (to_chrome, from_chrome)]
        for fd in (*to_chrome, *from_chrome):
            os.close(fd)

        def child_fds():
            os.dup2(r_in, 3)
            os.dup2(w_out, 4)

        args = [binary, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--remote-debugging-pipe", f"--user-data-dir={profile}", "--no-first-run", "--mute-audio", "--allow-file-access-from-files",
                "--autoplay-policy=no-user-gesture-required", "about:blank"]
        with open(log, "wb") as err:
            self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=err, stderr=err,
                                         preexec_fn=child_fds, close_fds=False)
        os.close(r_in)
        os.close(w_out)
        self.next_id, self.buffer, self.events = 0, b"", []

    def _read(self, timeout: float) -> None:
        ready, _, _ = select.select([self.r], [], [], timeout)
        if not ready:
            raise TimeoutError("no message from chromium")
        chunk = os.read(self.r, 1 << 20)
        if not chunk:
            raise RuntimeError(f"chromium closed the pipe (exit {self.proc.poll()})")
        self.buffer += chunk
        *messages, self.buffer = self.buffer.split(b"\0")
        self.events += [json.loads(m) for m in messages]

    def wait(self, match, timeout: float = 30.0) -> dict:
        seen = 0
        while True:
            for message in self.events[seen:]:
                if match(message):
                    return message
            seen = len(self.events)
            self._read(timeout)

    def call(self, method: str, session: str | None = None, **params) -> dict:
        self.next_id += 1
        message = {"id": self.next_id, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        os.write(self.w, json.dumps(message).encode() + b"\0")
        reply = self.wait(lambda m, i=self.next_id: m.get("id") == i)
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply["result"]

    def close(self) -> None:
        try:
            self.call("Browser.close")
            self.proc.wait(timeout=15)
        except Exception:  # noqa: BLE001 — whatever happened, the browser must not outlive the test
            self.proc.kill()
            self.proc.wait()
        finally:
            os.close(self.r)
            os.close(self.w)


# Waits until every player has a decoded frame (or failed), then reports each image and player; a
# video's frame is drawn on a canvas and its coloured pixels counted (proof the H.264 stream decodes).
PROBE = """(async () => {
  const media = [...document.querySelectorAll('video, audio')];
  await Promise.all(media.map(m => new Promise(done => {
    if (m.readyState >= 2 || m.networkState === 3) return done();
    m.addEventListener('loadeddata', done);
    m.addEventListener('error', done);
    m.querySelectorAll('source').forEach(s => s.addEventListener('error', () => setTimeout(done, 100)));
    setTimeout(done, 20000);
  })));
  const colouredPixels = v => {
    const c = document.createElement('canvas');
    c.width = v.videoWidth; c.height = v.videoHeight;
    const g = c.getContext('2d');
    g.drawImage(v, 0, 0);
    const d = g.getImageData(0, 0, c.width, c.height).data;
    let n = 0;
    for (let i = 0; i < d.length; i += 4)
      if (Math.max(d[i], d[i+1], d[i+2]) - Math.min(d[i], d[i+1], d[i+2]) > 80) n++;
    return n;
  };
  return JSON.stringify({
    images: [...document.images].map(i => ({src: i.getAttribute('src'), complete: i.complete, width: i.naturalWidth})),
    media: media.map(m => ({tag: m.tagName, src: m.currentSrc, readyState: m.readyState, networkState: m.networkState,
                            error: m.error && m.error.code, duration: m.duration,
                            coloured: m.tagName === 'VIDEO' && m.readyState >= 2 ? colouredPixels(m) : null})),
    svgs: document.querySelectorAll('svg').length,
    // what a reader must scroll sideways for: the page's and the schedule DAG's width against the window's
    viewport: window.innerWidth, page_width: document.documentElement.scrollWidth,
    dag_width: (document.querySelector('svg.dag') || {getBoundingClientRect: () => ({right: 0})}).getBoundingClientRect().right,
    // each DAG box's width and its widest label, as laid out (SVG user units)
    dag_boxes: [...document.querySelectorAll('svg.dag g.stage')].map(g => ({
      stage: g.dataset.stage, box: +g.querySelector('rect').getAttribute('width'),
      label: Math.max(...[...g.querySelectorAll('text')].map(t => t.getBBox().width))})),
  });
})()"""



def open_in_chromium(page: Path, tmp_path: Path) -> tuple[dict, list, str, Path]:
    """(what PROBE found, console/log errors, chromium's log tail, the screenshot beside the page)."""
    binary = shutil.which("chromium")
    if binary is None:
        pytest.skip("Debian's chromium is not installed (`make test` installs it: apt-get install chromium)")
    browser = DevTools(binary, tmp_path / "profile", tmp_path / "chromium.log")
    try:
        target = browser.call("Target.createTarget", url="about:blank")["targetId"]
        session = browser.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        for domain in ("Page", "Runtime", "Log"):
            browser.call(f"{domain}.enable", session)
        browser.call("Emulation.setDeviceMetricsOverride", session, width=1280, height=900, deviceScaleFactor=1,
                     mobile=False)
        browser.call("Page.navigate", session, url=page.resolve().as_uri())
        browser.wait(lambda m: m.get("method") == "Page.loadEventFired" and m.get("sessionId") == session, 60)
        found = json.loads(browser.call("Runtime.evaluate", session, expression=PROBE, awaitPromise=True,
                                        returnByValue=True)["result"]["value"])
        shot = browser.call("Page.captureScreenshot", session, format="png", captureBeyondViewport=True)["data"]
    finally:
        browser.close()
    log = (tmp_path / "chromium.log").read_text(errors="replace")[-3000:]
    screenshot = page.parent / (page.stem + ".png")
    screenshot.write_bytes(base64.b64decode(shot))
    errors = [m["params"] for m in browser.events
              if m.get("method") == "Runtime.exceptionThrown"
              or (m.get("method") == "Runtime.consoleAPICalled" and m["params"]["type"] in ("error", "assert"))
              or (m.get("method") == "Log.entryAdded" and m["params"]["entry"]["level"] == "error")]
    return found, errors, log, screenshot
