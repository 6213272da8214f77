"""``p3m serve`` through FastAPI's test client: routes, every error code, the API key,
the admission limit, URL inputs, and byte equality with ``p3m matte``."""
from __future__ import annotations

import asyncio
import base64
import struct
import re
import tempfile
import threading
import zlib
from io import BytesIO
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from p3m.cli import main  # noqa: E402
from p3m.inference import Matter  # noqa: E402
from p3m.privacy import anonymize_file  # noqa: E402
from p3m.serve import ServeSettings, create_app  # noqa: E402
from p3m.serve import app as serve_app  # noqa: E402
from web_fixtures import FakeWeb  # noqa: E402

PORTRAITS = Path(__file__).parent / "fixtures" / "portraits"


def portrait_png(height=96, width=80, seed=0) -> bytes:
    rng = np.random.default_rng(seed)
    image = np.full((height, width, 3), (40, 120, 200), np.uint8)
    image[height // 4:, width // 4: 3 * width // 4] = (220, 180, 150)
    image = np.clip(image + rng.integers(0, 20, image.shape), 0, 255).astype(np.uint8)
    buffer = BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def bomb_png(width=40000, height=40000) -> bytes:
    """A tiny PNG whose header declares more pixels than the decompression-bomb limit."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    pixels = zlib.compress(b"\0" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def matter(r34_checkpoint):
    return Matter(weights=r34_checkpoint, method="resize", device="cpu")


@pytest.fixture(scope="module")
def client(matter):
    with TestClient(create_app(matter, ServeSettings(max_upload_mb=1))) as test_client:
        yield test_client


def upload(data: bytes, name="photo.png", kind="image/png"):
    return {"image": (name, data, kind)}


def test_matte_returns_the_bytes_p3m_matte_writes(client, r34_checkpoint, tmp_path):
    data = portrait_png()
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "photo.png").write_bytes(data)
    status = main(["matte", str(tmp_path / "in" / "photo.png"), "-o", str(tmp_path / "out"), "--quiet",
                   "--weights", str(r34_checkpoint), "--method", "resize", "--device", "cpu",
                   "--output", "alpha,rgba,composite,trimap", "--background", "#00ff00"])
    assert status == 0
    for output in ("alpha", "rgba", "composite", "trimap"):
        fields = {"output": output, **({"background": "#00ff00"} if output == "composite" else {})}
        response = client.post("/v1/matte", files=upload(data), data=fields)
        assert response.status_code == 200, response.text
        assert response.headers["content-type"] == "image/png"
        assert response.content == (tmp_path / "out" / output / "photo.png").read_bytes(), output
    # options may come in the query string too, and an image may be the whole body
    response = client.post("/v1/matte?output=alpha", content=data, headers={"Content-Type": "image/png"})
    assert response.content == (tmp_path / "out" / "alpha" / "photo.png").read_bytes()


def test_matte_options_change_the_result(client):
    data = portrait_png(seed=1)
    base = client.post("/v1/matte", files=upload(data), data={"output": "alpha"})
    hybrid = client.post("/v1/matte", files=upload(data), data={"output": "alpha", "method": "hybrid"})
    deep = client.post("/v1/matte", files=upload(data), data={"output": "alpha", "alpha_depth": "16"})
    assert base.status_code == hybrid.status_code == deep.status_code == 200
    assert base.content != hybrid.content
    assert Image.open(BytesIO(deep.content)).mode.startswith("I;16")
    assert Image.open(BytesIO(base.content)).size == (80, 96)


def test_request_options_share_the_loaded_network(matter):
    variant = matter.with_options(method="HYBRID", max_size=64, privacy=True)
    assert variant.network is matter.network
    assert (variant.method.value, variant.max_size, variant.privacy) == ("hybrid", 64, True)
    assert (matter.method.value, matter.max_size, matter.privacy) == ("resize", 1600, False)
    with pytest.raises(ValueError, match="unknown method"):
        matter.with_options(method="sharpest")
    with pytest.raises(ValueError, match="at least 32"):
        matter.with_options(max_size=16)


def test_models_and_health(client):
    assert client.get("/healthz").json() == {"status": "ready"}
    models = client.get("/v1/models").json()
    assert models["model"] == "resnet34" and models["method"] == "resize" and models["device"] == "cpu"
    assert models["weights"] == "r34.pth"  # the file name only, not the server's folders
    assert {"p3m", "torch", "onnxruntime"} <= set(models["versions"])
    assert {"precision", "engine"} <= set(models)


def test_health_is_503_until_the_model_is_ready(matter):
    release = threading.Event()

    def slow_load():
        release.wait(30)
        return matter

    with TestClient(create_app(slow_load)) as test_client:
        loading = test_client.get("/healthz")
        assert loading.status_code == 503 and loading.json()["status"] == "loading"
        busy = test_client.post("/v1/matte", files=upload(portrait_png()))
        assert busy.status_code == 503 and "loading" in busy.json()["error"] and busy.headers["retry-after"]
        release.set()
        for _ in range(100):
            if test_client.get("/healthz").status_code == 200:
                break
            threading.Event().wait(0.05)
        assert test_client.get("/healthz").json() == {"status": "ready"}

    def broken_load():
        raise FileNotFoundError("weights.pth: no such file")

    with TestClient(create_app(broken_load)) as test_client:
        for _ in range(100):
            failed = test_client.get("/healthz")
            if failed.json()["status"] == "failed":
                break
            threading.Event().wait(0.05)
        assert failed.status_code == 503 and "weights.pth: no such file" in failed.json()["error"]


TRUNCATED = portrait_png(seed=2)[:300]


@pytest.mark.parametrize("files, fields, status, words", [
    (upload(b"just some text", "notes.png"), {}, 400, "not an image"),
    (upload(TRUNCATED, "cut.png"), {}, 400, "cannot read image"),
    (upload(bomb_png(), "bomb.png"), {}, 400, "too large"),
    (upload(b""), {}, 400, "no image"),
    (None, {}, 400, "no image"),
    (upload(portrait_png()), {"output": "cutout-please"}, 400, "output"),
    (upload(portrait_png()), {"method": "fastest"}, 400, "method"),
    (upload(portrait_png()), {"max_size": "8"}, 400, "max_size"),
    (upload(portrait_png()), {"max_size": "99999"}, 400, "max_size"),
    (upload(portrait_png()), {"privacy": "maybe"}, 400, "privacy"),
    (upload(portrait_png()), {"foreground": "guess"}, 400, "foreground"),
    (upload(portrait_png()), {"output": "composite", "background": "/etc/passwd"}, 400, "not a colour"),
    (upload(portrait_png()), {"background": "red"}, 400, "only used with output=composite"),
    (upload(portrait_png()), {"colour": "red"}, 400, "unknown option 'colour'"),
    ({"photo": ("a.png", portrait_png(), "image/png")}, {}, 400, "'image'"),
])
def test_matte_bad_input_is_a_4xx_naming_the_problem(client, files, fields, status, words):
    response = client.post("/v1/matte", files=files, data=fields)
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    assert words in response.json()["error"]
    assert "Traceback" not in response.text


def test_mutated_images_never_give_a_server_error(client):
    """Truncations and byte flips of a PNG and a JPEG: every answer is a PNG or a 4xx naming the image."""
    rng = np.random.default_rng(7)
    seen = set()
    jpeg = BytesIO()
    Image.open(BytesIO(portrait_png(seed=5))).save(jpeg, format="JPEG", quality=90)
    for seed_file in (portrait_png(seed=5), jpeg.getvalue()):
        for _ in range(10):
            data = bytearray(seed_file)
            if rng.random() < 0.3:
                data = data[: int(rng.integers(1, len(data)))]
            for position in rng.integers(0, len(data), size=int(rng.integers(1, 8))):
                data[position] = int(rng.integers(0, 256))
            response = client.post("/v1/matte", files=upload(bytes(data)), data={"output": "alpha"})
            assert response.status_code in (200, 400), response.text
            seen.add(response.status_code)
            if response.status_code == 400:
                assert response.json()["error"].startswith("image: ")
            else:
                assert response.content.startswith(b"\x89PNG")
    assert seen == {200, 400}  # both decodable damage and refused files were exercised


def test_other_bad_requests(client):
    cases = [
        (client.post("/v1/matte", content=b"<x/>", headers={"Content-Type": "text/xml"}), 415, "content type"),
        (client.post("/v1/matte", content=b"{not json", headers={"Content-Type": "application/json"}), 400, "JSON"),
        (client.post("/v1/matte", json={"url": ["a"]}), 400, "object of strings"),
        (client.post("/v1/matte", files=upload(portrait_png()), data={"url": "http://example.com/a.jpg"}), 400,
         "not both"),
        (client.post("/v1/matte", content=b"--x\r\nbroken", headers={"Content-Type": "multipart/form-data"}),
         400, "form"),
        (client.post("/v1/matte", content=b"[" * 100000, headers={"Content-Type": "application/json"}), 400, "JSON"),
        (client.post("/v1/matte", files=upload(portrait_png()), data={"max_size": "\u00b2"}), 400, "max_size"),
        (client.post("/v1/matte", files=upload(portrait_png()), data={"max_size": "9" * 5000}), 400, "max_size"),
        (client.post("/v1/matte", data={"url": "http://[::1/x.jpg"}), 400, "not a valid URL"),
        (client.get("/v1/matte"), 405, "Method Not Allowed"),
        (client.get("/v2/anything"), 404, "Not Found"),
        (client.post("/v1/anonymize", files=upload(portrait_png()), data={"threshold": "2"}), 400, "threshold"),
        (client.post("/v1/anonymize", files=upload(portrait_png()), data={"method": "smudge"}), 400, "method"),
        (client.post("/v1/anonymize", files=upload(portrait_png()), data={"format": "xml"}), 400, "format"),
    ]
    for response, status, words in cases:
        assert response.status_code == status, response.text
        assert words in response.json()["error"], response.text


def test_body_over_the_limit_is_413_before_it_is_read(client):
    declared = client.post("/v1/matte", content=b"x" * (1024 * 1024 + 1), headers={"Content-Type": "image/png"})
    assert declared.status_code == 413 and "1 MB" in declared.json()["error"]
    sent = []

    def chunks():  # no Content-Length: counted as it arrives
        for _ in range(64):
            sent.append(1)
            yield b"x" * 65536

    streamed = client.post("/v1/matte", content=chunks(), headers={"Content-Type": "image/png"})
    assert streamed.status_code == 413


def test_a_content_length_int_cannot_read_is_400():
    async def route(scope, receive, send):
        raise AssertionError("the body must not reach a route")

    sent = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    guard = serve_app._GuardMiddleware(route, ServeSettings(max_upload_mb=1))
    for declared in (b"\xb2", b"9" * 5000):
        sent.clear()
        scope = {"type": "http", "method": "POST", "path": "/v1/matte", "headers": [(b"content-length", declared)]}
        asyncio.run(guard(scope, receive, send))
        assert sent[0]["status"] == 400 and b"invalid Content-Length" in sent[1]["body"]


def test_anonymize_returns_the_file_p3m_anonymize_writes_and_leaves_no_file(client, matter, tmp_path, monkeypatch):
    source = PORTRAITS / "p_07141906.jpg"
    expected = anonymize_file(source, tmp_path / "expected.jpg")
    assert expected.status == "anonymized"
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    response = client.post("/v1/anonymize", files=upload(source.read_bytes(), "../../etc/evil.jpg", "image/jpeg"))
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/jpeg"
    assert response.content == (tmp_path / "expected.jpg").read_bytes()
    assert response.headers["x-p3m-status"] == "anonymized" and response.headers["x-p3m-verified"] == "true"
    assert response.headers["x-p3m-faces"] == "1"
    faceless = portrait_png()
    as_json = client.post("/v1/anonymize?format=json", content=faceless, headers={"Content-Type": "image/png"})
    body = as_json.json()
    assert body["status"] == "no_faces" and body["verified"] is True and body["faces"] == []
    assert body["media_type"] == "image/png"
    returned = np.asarray(Image.open(BytesIO(base64.b64decode(body["image"]))))
    assert np.array_equal(returned, np.asarray(Image.open(BytesIO(faceless))))
    gif = BytesIO()
    Image.new("RGB", (64, 64)).save(gif, format="GIF")
    refused = client.post("/v1/anonymize", files=upload(gif.getvalue(), "a.gif", "image/gif"))
    assert refused.status_code == 415 and "GIF" in refused.json()["error"]
    assert client.post("/v1/anonymize", files=upload(b"junk", "y.jpg", "image/jpeg")).status_code == 400
    big = source.read_bytes() + b"\0" * (2 * 1024 * 1024)  # over 1 MiB: the form parser spools it to disk
    with TestClient(create_app(matter, ServeSettings(max_upload_mb=3))) as roomy:
        spooled = roomy.post("/v1/matte", files=upload(big, "z.jpg", "image/jpeg"), data={"output": "alpha"})
        assert spooled.status_code == 200
    assert list(scratch.iterdir()) == []


def test_failed_verification_is_422_without_an_image(client, monkeypatch):
    import p3m.privacy.files as files

    monkeypatch.setattr(files, "obfuscate", lambda image, faces, method, **options: image.copy())
    response = client.post("/v1/anonymize", files=upload((PORTRAITS / "p_07141906.jpg").read_bytes(), "a.jpg"))
    assert response.status_code == 422
    body = response.json()
    assert body["status"] == "not_anonymized" and body["verified"] is False and len(body["faces"]) == 1
    assert "still detected" in body["error"] and "image" not in body


def test_a_failed_write_is_a_500_without_paths_or_traceback(client, monkeypatch):
    from p3m.io import OutputFolder

    def full_disk(self, path, write, fsync=True):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(OutputFolder, "write", full_disk)
    response = client.post("/v1/anonymize", files=upload(portrait_png()))
    assert response.status_code == 500
    assert response.json() == {"error": "the anonymized image could not be written; the server log has the details"}


def test_api_key_guards_every_route_but_health_and_the_page(matter):
    app = create_app(matter, ServeSettings(api_key="s3cret"))
    with TestClient(app) as test_client:
        for path in ("/healthz", "/", "/static/app.js", "/static/style.css"):
            assert test_client.get(path).status_code == 200, path
        for method, path in [("GET", "/v1/models"), ("POST", "/v1/matte"), ("POST", "/v1/anonymize"),
                             ("GET", "/docs"), ("GET", "/openapi.json"), ("GET", "/nowhere")]:
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"},
                            {"Authorization": "Basic s3cret"}):
                response = test_client.request(method, path, headers=headers)
                assert response.status_code == 401, (path, headers)
                assert response.headers["www-authenticate"] == "Bearer" and "API key" in response.json()["error"]
        good = {"Authorization": "Bearer s3cret"}
        assert test_client.get("/v1/models", headers=good).status_code == 200
        assert test_client.get("/openapi.json", headers=good).json()["paths"].keys() >= {"/v1/matte", "/v1/anonymize"}
        matte = test_client.post("/v1/matte", files=upload(portrait_png()), data={"output": "alpha"}, headers=good)
        assert matte.status_code == 200


def test_no_cross_origin_access(client):
    response = client.get("/v1/models", headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in response.headers
    preflight = client.options("/v1/matte", headers={"Origin": "https://evil.example",
                                                     "Access-Control-Request-Method": "POST"})
    assert "access-control-allow-origin" not in preflight.headers
    page = client.get("/")
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert page.headers["x-content-type-options"] == "nosniff"


def test_api_docs_load_nothing_from_another_site(client):
    """/docs is Swagger UI served by the server itself: every script, style and icon it names is a
    path here that answers, and nothing points to a CDN (a privacy tool's page must not call out)."""
    page = client.get("/docs")
    assert page.status_code == 200
    assets = re.findall(r"""(?:src|href|url)\s*[=:]\s*['"]([^'"]+)['"]""", page.text)
    assert {asset.rsplit(".", 1)[-1] for asset in assets} >= {"js", "css"}
    for asset in assets:
        assert asset.startswith("/") and not asset.startswith("//"), asset
        assert client.get(asset).status_code == 200, asset
    assert "http://" not in page.text and "https://" not in page.text
    assert '"validatorUrl": null' in page.text  # Swagger UI's default validator is another site
    assert client.get("/redoc").status_code == 404  # ReDoc would load from a CDN


def test_full_queue_gets_503_with_retry_after(matter, monkeypatch):
    """With max_pending=1, one request runs, one waits, the third is turned away at once."""
    release = threading.Event()
    real_job = serve_app._matte_job

    def held_job(*args):
        release.wait(30)
        return real_job(*args)

    monkeypatch.setattr(serve_app, "_matte_job", held_job)
    app = create_app(matter, ServeSettings(max_pending=1))
    admission = app.state.service.admission

    async def scenario():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            def send():
                return http.post("/v1/matte", files=upload(portrait_png()), data={"output": "alpha"})

            first, second = asyncio.create_task(send()), asyncio.create_task(send())
            for _ in range(200):
                if admission.active == 2:
                    break
                await asyncio.sleep(0.01)
            turned_away = await send()
            release.set()
            return turned_away, await first, await second

    turned_away, first, second = asyncio.run(scenario())
    assert turned_away.status_code == 503 and "busy" in turned_away.json()["error"]
    assert int(turned_away.headers["retry-after"]) >= 1
    assert first.status_code == second.status_code == 200
    assert admission.active == 0


def test_failed_requests_give_their_place_back(matter):
    app = create_app(matter, ServeSettings(max_pending=0))
    with TestClient(app) as test_client:
        for _ in range(3):
            assert test_client.post("/v1/matte", files=upload(b"junk")).status_code == 400
            assert test_client.post("/v1/matte", data={"output": "nope"}).status_code == 400
        assert app.state.service.admission.active == 0
        assert test_client.post("/v1/matte", files=upload(portrait_png()), data={"output": "alpha"}).status_code == 200


def test_url_input_goes_through_the_guarded_fetcher(matter):
    data = portrait_png(seed=3)
    with FakeWeb() as web:
        web.routes["/photo.png"] = (200, {"Content-Type": "image/png"}, data)
        web.routes["/hop"] = (302, {"Location": "/photo.png"}, b"")
        web.routes["/huge"] = (200, {}, b"x" * (1024 * 1024 + 10))
        guarded = create_app(matter, ServeSettings(max_upload_mb=1))
        with TestClient(guarded) as test_client:
            refused = test_client.post("/v1/matte", json={"url": web.url("/photo.png")})
            assert refused.status_code == 400 and "refused" in refused.json()["error"]
            assert test_client.post("/v1/matte", json={"url": "file:///etc/passwd"}).status_code == 400
            assert web.requests == []
        open_app = create_app(matter, ServeSettings(max_upload_mb=1, allow_private_urls=True))
        with TestClient(open_app) as test_client:
            uploaded = test_client.post("/v1/matte", files=upload(data), data={"output": "alpha"})
            by_url = test_client.post("/v1/matte", json={"url": web.url("/hop"), "output": "alpha"})
            by_form = test_client.post("/v1/matte", data={"url": web.url("/photo.png"), "output": "alpha"})
            assert by_url.status_code == by_form.status_code == 200
            assert by_url.content == by_form.content == uploaded.content
            too_big = test_client.post("/v1/matte", json={"url": web.url("/huge")})
            assert too_big.status_code == 413
            missing = test_client.post("/v1/matte", json={"url": web.url("/gone.png")})
            assert missing.status_code == 502 and "HTTP 404" in missing.json()["error"]


def test_matte_command_reads_urls(r34_checkpoint, tmp_path, capsys):
    data = portrait_png(seed=4)
    (tmp_path / "local.png").write_bytes(data)
    common = ["--weights", str(r34_checkpoint), "--method", "resize", "--device", "cpu", "--output", "alpha",
              "--quiet"]
    assert main(["matte", str(tmp_path / "local.png"), "-o", str(tmp_path / "from_file"), *common]) == 0
    with FakeWeb() as web:
        web.routes["/shots/me%20too.png"] = (200, {}, data)
        web.routes["/notes.png"] = (200, {}, b"not an image")
        assert main(["matte", web.url("/shots/me%20too.png"), "-o", str(tmp_path / "refused"), *common]) == 1
        assert "refused" in capsys.readouterr().err
        assert not (tmp_path / "refused").exists()
        status = main(["matte", web.url("/shots/me%20too.png"), web.url("/notes.png"), "-o", str(tmp_path / "out"),
                       "--allow-private-urls", *common])
    err = capsys.readouterr().err
    assert status == 1
    assert f"{web.url('/notes.png')}: not an image file" in err and "1 done, 0 skipped (outputs exist), 1 failed" in err
    assert (tmp_path / "out" / "alpha" / "me_too.png").read_bytes() == \
        (tmp_path / "from_file" / "alpha" / "local.png").read_bytes()


@pytest.mark.parametrize("argv, words", [
    (["--max-pending", "-1"], "--max-pending must be 0 or more"),
    (["--max-upload-mb", "0"], "--max-upload-mb must be positive"),
    (["--port", "70000"], "--port must be in 1-65535"),
    (["--api-key", " "], "must not be empty"),
    (["--weights", "/no/such/weights.pth"], "no such weights file"),
])
def test_serve_command_usage_errors(argv, words, capsys):
    assert main(["serve", *argv]) == 2
    assert words in capsys.readouterr().err
