"""``p3m serve`` as a real uvicorn process on 127.0.0.1, and the page in a real browser (chromium)."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from io import BytesIO
from pathlib import Path

import pytest
from PIL import Image

pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

from p3m.cli import main  # noqa: E402

PORTRAIT = Path(__file__).parent / "fixtures" / "portraits" / "p_bac3c1ff.jpg"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
KEY = "test-key-1234"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def server(r34_checkpoint):
    """Base URL of a ``p3m serve`` process with an API key and a 1 MB upload cap."""
    port = free_port()
    source = str(Path(__file__).parents[1] / "src")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([source, os.environ.get("PYTHONPATH", "")])}
    process = subprocess.Popen(
        [sys.executable, "-m", "p3m", "serve", "--port", str(port), "--weights", str(r34_checkpoint),
         "--method", "resize", "--device", "cpu", "--max-upload-mb", "1", "--api-key", KEY],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if process.poll() is not None:
                pytest.fail(f"p3m serve exited: {process.stdout.read().decode(errors='replace')}")
            try:
                if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.3)
        else:
            pytest.fail("p3m serve did not become ready within 120 s")
        yield base
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        process.stdout.close()


@pytest.fixture(scope="module")
def small_portrait(tmp_path_factory) -> Path:
    """A 240-px-wide copy of a test portrait, to keep inference quick."""
    path = tmp_path_factory.mktemp("portrait") / "portrait.jpg"
    with Image.open(PORTRAIT) as image:
        image.resize((240, round(240 * image.height / image.width))).save(path, quality=90)
    return path


def test_real_server_routes_key_and_limits(server, small_portrait, r34_checkpoint, tmp_path):
    auth = {"Authorization": f"Bearer {KEY}"}
    assert httpx.get(f"{server}/healthz").json() == {"status": "ready"}
    assert httpx.get(f"{server}/").headers["content-type"].startswith("text/html")
    assert httpx.get(f"{server}/v1/models").status_code == 401
    assert httpx.get(f"{server}/v1/models", headers=auth).json()["model"] == "resnet34"
    assert "server" not in httpx.get(f"{server}/healthz").headers
    data = small_portrait.read_bytes()
    matte = httpx.post(f"{server}/v1/matte", files={"image": ("p.jpg", data, "image/jpeg")},
                       data={"output": "alpha"}, headers=auth, timeout=120)
    assert matte.status_code == 200
    assert main(["matte", str(small_portrait), "-o", str(tmp_path), "--weights", str(r34_checkpoint), "--method",
                 "resize", "--device", "cpu", "--output", "alpha", "--quiet"]) == 0
    assert matte.content == (tmp_path / "alpha" / "portrait.png").read_bytes()
    junk = httpx.post(f"{server}/v1/matte", content=b"\xff\xd8\xff" + b"\0" * 500,
                      headers={**auth, "Content-Type": "image/jpeg"})
    assert junk.status_code == 400 and "image" in junk.json()["error"]
    big = httpx.post(f"{server}/v1/matte", content=b"x" * (3 * 1024 * 1024),
                     headers={**auth, "Content-Type": "image/jpeg"}, timeout=60)
    assert big.status_code == 413 and "1 MB" in big.json()["error"]

    def chunks():
        for _ in range(48):
            yield b"x" * 65536

    streamed = httpx.post(f"{server}/v1/matte", content=chunks(), headers={**auth, "Content-Type": "image/jpeg"},
                          timeout=60)
    assert streamed.status_code == 413
    assert httpx.get(f"{server}/healthz").status_code == 200  # still up


def test_page_in_a_browser(server, small_portrait, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api")
    assert os.path.exists(CHROMIUM), "chromium is not installed; scripts/setup.sh installs it with apt"
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 860}, accept_downloads=True)
            page.goto(server)
            page.set_input_files("#file", str(small_portrait))
            page.click("#run")
            page.wait_for_selector("#message:not([hidden])")
            assert "API key" in page.inner_text("#message")  # the key is missing: the error is shown in words
            page.fill("#api-key", KEY)
            page.check("input[value=composite]")
            page.evaluate("""() => {
                const busy = document.getElementById("busy");
                window.sawBusy = false;
                new MutationObserver(() => { window.sawBusy ||= !busy.hidden; })
                    .observe(busy, {attributes: true});
            }""")
            page.click("#run")
            page.wait_for_selector("#result:not([hidden])", timeout=120_000)
            page.wait_for_function("document.getElementById('result').naturalWidth > 0")
            assert page.evaluate("window.sawBusy") and page.is_hidden("#busy") and page.is_hidden("#message")
            width = page.evaluate("document.getElementById('result').naturalWidth")
            assert width == 240
            with page.expect_download() as download_info:
                page.click("#download")
            download = download_info.value
            assert download.suggested_filename == "portrait-composite.png"
            saved = tmp_path / download.suggested_filename
            download.save_as(saved)
            with Image.open(saved) as result:
                assert result.format == "PNG" and result.size == Image.open(small_portrait).size
            if os.environ.get("P3M_SCREENSHOT"):
                page.screenshot(path=os.environ["P3M_SCREENSHOT"], full_page=True)
        finally:
            browser.close()
