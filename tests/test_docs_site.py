"""The docs site as a reader sees it: a built notebook page opened in headless Chromium.

These tests read the site that ``mkdocs build --strict`` wrote to ``site/`` (the build is
what executes the notebooks, on a real kernel; nothing here runs them again), and check
the mkdocs-jupyter settings that decide whether a failing cell fails the build.

They need the ``[docs]`` extra, a built site and Debian's ``chromium`` and
``chromium-driver``. In a plain ``pytest`` run whatever is missing makes them skip, with
the reason. CI's docs step builds the site and then runs this file with
``SOCKPOOL_DOCS_REQUIRED=1``, which turns every such skip into a failure.
"""

from __future__ import annotations

import functools
import http.server
import os
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
SITE = ROOT / "site"
NOTEBOOKS = ROOT / "docs" / "notebooks"
REQUIRED = os.environ.get("SOCKPOOL_DOCS_REQUIRED") == "1"
FIRST = "01-why-closures-break"

pytestmark = pytest.mark.timeout(120)


def unavailable(reason: str) -> None:
    """Skip, or fail where CI requires these tests to run."""
    if REQUIRED:
        pytest.fail(f"SOCKPOOL_DOCS_REQUIRED=1 but {reason}")
    pytest.skip(reason)


def built_page(name: str) -> Path:
    """The built page of docs/notebooks/<name>.ipynb, built after its notebook last changed."""
    page = SITE / "notebooks" / name / "index.html"
    if not page.exists():
        unavailable(f"{page.relative_to(ROOT)} is not built: run `mkdocs build --strict`")
    if page.stat().st_mtime < (NOTEBOOKS / f"{name}.ipynb").stat().st_mtime:
        unavailable(f"{page.relative_to(ROOT)} is older than its notebook: rebuild the site")
    return page


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    """The built site, served on loopback as a reader's browser would get it."""
    if not SITE.is_dir():
        unavailable("site/ is not built: run `mkdocs build --strict`")
    handler = functools.partial(QuietHandler, directory=str(SITE))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=10)


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    """A static file server that does not log every request on stderr."""

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def browser() -> Iterator[Any]:
    """Headless Debian Chromium driven by chromedriver, one per test (no process outlives it)."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        unavailable("selenium is not installed: pip install -e '.[docs]'")
    chromium = shutil.which("chromium")
    driver_path = shutil.which("chromedriver")
    if chromium is None or driver_path is None:
        unavailable("chromium and chromedriver are not installed "
                    "(apt-get install chromium chromium-driver: tests/install-testbed.sh)")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                 "--window-size=1280,2000"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def open_page(browser: Any, server: str, name: str) -> str:
    """Load a notebook's page, wait for every image to settle; the page's text."""
    from selenium.webdriver.support.ui import WebDriverWait

    built_page(name)
    browser.get(f"{server}/notebooks/{name}/")
    WebDriverWait(browser, 30).until(lambda d: d.execute_script(
        "return document.readyState === 'complete' && "
        "Array.from(document.images).every(i => i.complete)"))
    text: str = browser.execute_script("return document.body.textContent")
    return text


def plots(browser: Any) -> list[dict[str, Any]]:
    """The notebook's output images as rendered: the plots matplotlib drew at build time."""
    found: list[dict[str, Any]] = browser.execute_script(
        "return Array.from(document.querySelectorAll('img'))"
        ".filter(i => i.src.startsWith('data:image/'))"
        ".map(i => ({src: i.src.slice(0, 30), width: i.naturalWidth, height: i.naturalHeight}))")
    return found


def notebook_names() -> list[str]:
    return sorted(p.stem for p in NOTEBOOKS.glob("[0-9][0-9]-*.ipynb"))


@pytest.mark.parametrize("name", notebook_names())
def test_each_notebook_page_shows_its_plots(browser: Any, server: str, name: str) -> None:
    open_page(browser, server, name)
    images = plots(browser)
    assert images, f"no plot on the page of {name}: every notebook has at least one"
    # A broken or truncated image decodes to nothing: naturalWidth 0.
    assert all(i["width"] > 0 and i["height"] > 0 for i in images), images


def test_the_first_notebook_shows_the_failure_and_the_workers_output(
        browser: Any, server: str) -> None:
    text = open_page(browser, server, FIRST)
    # The naive spawn attempt failed for real, on the page, as the tutorial's R did.
    assert "AttributeError: Can't get attribute 'worker' on <module '__main__'" in text
    assert "BrokenProcessPool" in text
    # The workers' prints, relayed into the cell: pids other than the notebook kernel's.
    (kernel,) = re.findall(r"this notebook's pid: (\d+)", text)
    fitted = re.findall(r"\[pid (\d+)\] fitted (\w+) vs rest", text)
    relayed = [(pid, level) for pid, level in fitted if pid != kernel]
    assert sorted(level for _, level in relayed) == ["setosa", "versicolor", "virginica"], fitted
    assert "parallel models equal the sequential ones: True" in text


# -- the build's rule for failing cells, checked on a two-page site of its own ---------------

def jupyter_settings(yaml: Any) -> dict[str, Any]:
    """mkdocs-jupyter's settings in the repository's mkdocs.yml."""
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    (settings,) = [p["mkdocs-jupyter"] for p in config["plugins"]
                   if isinstance(p, dict) and "mkdocs-jupyter" in p]
    return dict(settings)


def build(tmp_path: Path, cells: list[tuple[str, list[str]]]) -> subprocess.CompletedProcess[str]:
    """``mkdocs build --strict`` of a site whose one notebook has these (source, tags) cells."""
    try:
        import nbformat
        import yaml
    except ImportError:
        unavailable("mkdocs is not installed: pip install -e '.[docs]'")
    if shutil.which("mkdocs", path=str(Path(sys.executable).parent)) is None:
        unavailable("mkdocs is not installed: pip install -e '.[docs]'")
    docs = tmp_path / "docs"
    docs.mkdir()
    notebook = nbformat.v4.new_notebook(
        cells=[nbformat.v4.new_code_cell(source, metadata={"tags": tags})
               for source, tags in cells],
        metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}})
    nbformat.write(notebook, docs / "page.ipynb")
    config = {"site_name": "check", "docs_dir": str(docs), "site_dir": str(tmp_path / "site"),
              "nav": [{"Page": "page.ipynb"}],
              "plugins": [{"mkdocs-jupyter": jupyter_settings(yaml)}]}
    (tmp_path / "mkdocs.yml").write_text(yaml.safe_dump(config))
    return subprocess.run(
        [str(Path(sys.executable).parent / "mkdocs"), "build", "--strict", "-f",
         str(tmp_path / "mkdocs.yml")],
        capture_output=True, text=True, timeout=100, cwd=tmp_path,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})


def test_a_cell_that_raises_fails_the_build(tmp_path: Path) -> None:
    done = build(tmp_path, [("print('before')", []), ("1 / 0", [])])
    assert done.returncode != 0, done.stdout + done.stderr
    assert "ZeroDivisionError" in done.stdout + done.stderr


def test_a_cell_tagged_raises_exception_is_shown_failing(tmp_path: Path) -> None:
    done = build(tmp_path, [("1 / 0", ["raises-exception"]), ("print('after ' + 'it')", [])])
    assert done.returncode == 0, done.stdout + done.stderr
    page = (tmp_path / "site" / "page" / "index.html").read_text()
    assert "ZeroDivisionError" in page and "after it" in page
