"""Screenshots of the two HTML reports, made from the test fixtures and taken with chromium.

    python scripts/screenshot_reports.py            # writes docs/evaluate-report.png and docs/anonymize-report.png

The evaluate page scores the official ResNet-34 alphas of tests/fixtures/official_alpha against the
official ViTAE-S ones (standing in for ground truth, with trimaps made from them by the official rule); the
anonymize page audits the portraits of tests/fixtures/portraits plus an unreadable file, with
--audit-originals. Needs Playwright and Debian's chromium (scripts/setup.sh installs both).
"""
from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from pathlib import Path

from p3m.cli import main
from p3m.data.trimap import write_trimaps

REPO = Path(__file__).resolve().parents[1]

FIXTURES = REPO / "tests" / "fixtures"
AUDITED = ("p_07141906.jpg", "p_0865636e.jpg", "p_819ea202.jpg", "p_bac3c1ff.jpg")  # three faces, one without


def evaluate_page(work: Path) -> Path:
    for model in ("resnet34", "vitae-s"):
        shutil.copytree(FIXTURES / "official_alpha" / model, work / model)
    write_trimaps(work / "vitae-s", work / "trimap")
    os.chdir(work)  # the page's title names the folders as given
    page = work / "evaluate.html"
    status = main(["evaluate", "--pred", "resnet34", "--gt", "vitae-s", "--trimap", "trimap",
                   "--report", str(page)])
    if status != 0:
        raise SystemExit(f"p3m evaluate exited with {status}")
    return page


def anonymize_page(work: Path) -> Path:
    photos = work / "photos"
    photos.mkdir()
    for name in AUDITED:
        shutil.copy(FIXTURES / "portraits" / name, photos / name)
    (photos / "truncated.jpg").write_bytes((FIXTURES / "portraits" / "p_bac3c1ff.jpg").read_bytes()[:2000])
    os.chdir(work)
    page = work / "anonymize.html"
    main(["anonymize", "--quiet", "photos", "-o", "anonymized", "--report", str(page), "--audit-originals"])
    return page


def screenshot(page: Path, target: Path, chromium: str) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium)
        try:
            tab = browser.new_page(viewport={"width": 1280, "height": 900})
            tab.goto(page.as_uri())
            tab.screenshot(path=str(target), full_page=True)
        finally:
            browser.close()
    print(f"{target}: {target.stat().st_size // 1024} KiB")


def run() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", type=Path, default=REPO / "docs", help="where the PNGs go (default docs/)")
    parser.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    args = parser.parse_args()
    out_dir = args.out_dir.resolve()
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        (work / "evaluate").mkdir()
        (work / "anonymize").mkdir()
        screenshot(evaluate_page(work / "evaluate"), out_dir / "evaluate-report.png", args.chromium)
        screenshot(anonymize_page(work / "anonymize"), out_dir / "anonymize-report.png", args.chromium)


if __name__ == "__main__":
    run()
