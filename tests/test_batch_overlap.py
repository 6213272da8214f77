"""Batch overlap: decoding and writing beside the network give the same outputs and report as one file at a time."""
from __future__ import annotations

import random
import threading
import time

import numpy as np
import pytest
from PIL import Image

from p3m.inference import Matter
from p3m.inference.batch import MatteOptions, MatteSetup, collect_report, matte_files
from p3m.inference.overlap import overlapped
from p3m.inputs import collect_inputs
from p3m.io import OutputFolder, output_complete

OPTIONS = MatteOptions(outputs=("alpha", "rgba", "composite", "trimap"))


@pytest.fixture(scope="module")
def matter(r34_checkpoint):
    return Matter(weights=r34_checkpoint, method="resize")


@pytest.fixture()
def pairs(tmp_path):
    """Five files, the third not an image: (source, relative) pairs in input order."""
    folder = tmp_path / "in"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in ("a.jpg", "b.png", "d.png", "e.jpg"):
        image = np.full((96, 72, 3), (40, 120, 200), np.uint8)
        image[24:, 18:54] = (220, 180, 150)
        Image.fromarray(np.clip(image + rng.integers(0, 30, image.shape), 0, 255).astype(np.uint8)).save(folder / name)
    (folder / "c.png").write_text("not an image")
    return collect_inputs([str(folder)])


def one_at_a_time(matter, pairs, out):
    step = MatteSetup(matter, out, OPTIONS, OutputFolder(out, [source for source, _ in pairs]))()
    return collect_report(pairs, map(step, pairs))


def files(folder):
    return {path.relative_to(folder): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


def names(paths):
    return [path.name for path in paths]


def assert_clean(out):
    """No temporary left and every output whole."""
    assert not [path for path in out.rglob("*") if path.name.startswith(".p3m-")]
    assert all(output_complete(path) for path in out.rglob("*.png"))


def test_overlap_writes_the_same_bytes_and_report_as_one_file_at_a_time(matter, pairs, tmp_path):
    sequential = one_at_a_time(matter, pairs, tmp_path / "one")
    report = matte_files(matter, pairs, tmp_path / "overlap", OPTIONS)
    assert names(report.written) == names(sequential.written) == ["a.jpg", "b.png", "d.png", "e.jpg"]
    assert report.failed == sequential.failed
    assert len(report.failed) == 1 and "c.png: not an image file" in report.failed[0][1]
    written = files(tmp_path / "overlap")
    assert len(written) == 16 and written == files(tmp_path / "one")


def test_failed_write_in_the_middle_is_reported_and_the_batch_goes_on(matter, pairs, tmp_path, monkeypatch):
    real_write = OutputFolder.write

    def write(self, path, write_file, fsync=True):
        if path.parent.name == "rgba" and path.stem == "b":
            raise OSError(28, "No space left on device")
        return real_write(self, path, write_file, fsync)

    monkeypatch.setattr(OutputFolder, "write", write)
    sequential = one_at_a_time(matter, pairs, tmp_path / "one")
    report = matte_files(matter, pairs, tmp_path / "overlap", OPTIONS)
    assert names(report.written) == names(sequential.written) == ["a.jpg", "d.png", "e.jpg"]
    assert report.failed == sequential.failed
    assert names(path for path, _ in report.failed) == ["b.png", "c.png"]
    assert "b.png: OSError: [Errno 28] No space left on device" in report.failed[0][1]
    assert files(tmp_path / "overlap") == files(tmp_path / "one")
    assert_clean(tmp_path / "overlap")


def test_interrupt_from_the_network_ends_cleanly_and_the_rerun_finishes(matter, pairs, tmp_path, monkeypatch):
    calls, real_predict = [], matter.predict

    def predict(image):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_predict(image)

    monkeypatch.setattr(matter, "predict", predict)
    out = tmp_path / "overlap"
    report = matte_files(matter, pairs, out, OPTIONS)
    assert report.interrupted and not report.ok
    assert names(report.written) in (["a.jpg"], ["a.jpg", "b.png"])  # b's write may end after the interrupt
    assert_clean(out)
    assert not list(out.rglob("d.png")) and not list(out.rglob("e.png"))
    monkeypatch.setattr(matter, "predict", real_predict)
    rerun = matte_files(matter, pairs, out, OPTIONS)
    assert not rerun.interrupted and set(names(report.written)) <= set(names(rerun.skipped))
    assert sorted(names(rerun.written + rerun.skipped)) == ["a.jpg", "b.png", "d.png", "e.jpg"]
    one_at_a_time(matter, pairs, tmp_path / "one")
    assert files(out) == files(tmp_path / "one")


def test_interrupt_inside_a_write_leaves_no_temporary(matter, pairs, tmp_path, monkeypatch):
    real_write = OutputFolder.write

    def write(self, path, write_file, fsync=True):
        if path.parent.name == "rgba" and path.stem == "b":
            def half_then_interrupt(tmp):
                tmp.write_bytes(b"\x89PNG half")
                raise KeyboardInterrupt
            return real_write(self, path, half_then_interrupt, fsync)
        return real_write(self, path, write_file, fsync)

    monkeypatch.setattr(OutputFolder, "write", write)
    out = tmp_path / "overlap"
    report = matte_files(matter, pairs, out, OPTIONS)
    assert report.interrupted and names(report.written) == ["a.jpg"]
    assert not (out / "rgba" / "b.png").exists()
    assert_clean(out)


def test_overlapped_keeps_order_and_holds_a_bounded_number_of_items():
    held, most, lock, threads = set(), [0], threading.Lock(), set()
    randomness = random.Random(0)

    def load(item):
        time.sleep(randomness.random() * 0.01)
        with lock:
            held.add(item)
            most[0] = max(most[0], len(held))
        return item

    def run(item):
        threads.add(threading.current_thread())
        time.sleep(randomness.random() * 0.01)
        return item * 10

    def finish(item):
        time.sleep(randomness.random() * 0.02)
        with lock:
            held.discard(item // 10)
        return item + 1

    assert list(overlapped(range(30), load, run, finish, ahead=1, behind=1)) == [item * 10 + 1 for item in range(30)]
    assert threads == {threading.current_thread()}
    assert 2 <= most[0] <= 3


def test_overlapped_lets_the_finish_under_way_end_and_drops_the_rest():
    loaded, finished = [], []

    def finish(item):
        time.sleep(0.2)
        finished.append(item)
        return item

    def run(item):
        time.sleep(0.05)
        if item == 3:
            raise KeyboardInterrupt
        return item

    results = []
    with pytest.raises(KeyboardInterrupt):
        for result in overlapped(range(100), lambda item: loaded.append(item) or item, run, finish):
            results.append(result)
    assert results == [0, 1]
    assert finished == [0, 1, 2]  # 2 was being finished when the interrupt came: it ended before the caller saw it
    assert len(loaded) <= 5
