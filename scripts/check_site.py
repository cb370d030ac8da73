"""Open pages of the built documentation site in headless Chromium and fail on any console
error, uncaught exception or resource that does not load.

    python scripts/check_site.py [SITE_DIR] [PAGE ...]

Default pages: the home page and the first notebook page. The site is served over HTTP on a
free local port, with a probe script injected first in every HTML page's <head>; the probe
records console.error calls, uncaught errors, failed loads and plotly figures that were not
drawn into the DOM, which Chromium
dumps. Exit code 1 lists the errors; 2: no Chromium or no such page.
"""

from __future__ import annotations

import contextlib
import html
import http.server
import io
import json
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "chrome")
DEFAULT_PAGES = ("index.html", "notebooks/01_saliency_flows/index.html")
PROBE = """<script>
(function () {
  var errors = [];
  function note(text) { errors.push(String(text)); }
  var original = console.error;
  console.error = function () {
    note(Array.prototype.join.call(arguments, " "));
    return original.apply(console, arguments);
  };
  window.addEventListener("error", function (event) {
    var target = event.target;
    if (target && target !== window && (target.src || target.href)) {
      note("failed to load " + (target.src || target.href));
    } else {
      note("uncaught: " + (event.message || event.error));
    }
  }, true);
  window.addEventListener("unhandledrejection", function (event) {
    note("unhandled rejection: " + event.reason);
  });
  window.addEventListener("load", function () {
    setTimeout(function () {
      var figures = document.querySelectorAll(".plotly-graph-div");
      for (var i = 0; i < figures.length; i++) {
        if (!figures[i].classList.contains("js-plotly-plot")) {
          note("plotly figure " + (figures[i].id || i) + " was not drawn");
        }
      }
      var pre = document.createElement("pre");
      pre.id = "site-check-errors";
      pre.textContent = JSON.stringify(errors);
      document.body.appendChild(pre);
    }, 1500);
  });
})();
</script>"""


def chromium() -> str | None:
    return next((path for name in BROWSERS if (path := shutil.which(name))), None)


def _inject(html: str) -> str:
    head = re.search(r"<head[^>]*>", html)
    return html if head is None else html[: head.end()] + PROBE + html[head.end() :]


@contextlib.contextmanager
def serve(root: Path) -> Iterator[str]:
    """Serve ``root`` over HTTP on a free local port (as a reader's web server would), with the
    probe injected into every HTML page; yields the base URL."""

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, directory=str(root), **kwargs)

        def send_head(self) -> Any:
            path = Path(self.translate_path(self.path))
            if path.is_dir():
                path = path / "index.html"
            if path.suffix != ".html" or not path.is_file():
                return super().send_head()
            body = _inject(path.read_text(encoding="utf-8")).encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            return io.BytesIO(body)

        def log_message(self, *args: Any) -> None:  # quiet
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


def url_errors(url: str, browser: str) -> list[str]:
    """Errors recorded while the probed page at ``url`` loads in headless Chromium."""
    with tempfile.TemporaryDirectory() as profile:
        flags = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--disable-dev-shm-usage", f"--user-data-dir={profile}",
                 "--virtual-time-budget=15000", "--dump-dom"]  # fmt: skip
        done = subprocess.run(
            [browser, *flags, url], capture_output=True, text=True, timeout=240, check=False
        )
    if done.returncode != 0:
        return [f"chromium exited {done.returncode}: {done.stderr[-1000:]}"]
    found = re.search(r'<pre id="site-check-errors">(.*?)</pre>', done.stdout, re.S)
    if found is None:
        return ["the page never finished loading (no probe output)"]
    return list(json.loads(html.unescape(found.group(1))))


def page_errors(page: Path, browser: str, root: Path | None = None) -> list[str]:
    """Errors recorded while ``page`` (a file under ``root``, default its folder) loads."""
    root = page.parent if root is None else root
    with serve(root) as base:
        return url_errors(base + page.relative_to(root).as_posix(), browser)


def main(argv: list[str]) -> int:
    site = Path(argv[0]) if argv else Path("site")
    pages = argv[1:] or list(DEFAULT_PAGES)
    browser = chromium()
    if browser is None:
        print(f"check_site: no Chromium found (tried {', '.join(BROWSERS)})", file=sys.stderr)
        return 2
    failed = False
    for name in pages:
        page = site / name
        if not page.is_file():
            print(f"check_site: {page} does not exist (build the site first)", file=sys.stderr)
            return 2
        errors = page_errors(page, browser, root=site)
        print(f"{name}: {len(errors)} console error(s)")
        for error in errors:
            print(f"  {error}")
        failed |= bool(errors)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
