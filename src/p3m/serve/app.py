"""The HTTP API and the web page: ``create_app(matter, settings)`` builds the FastAPI app.

Routes: ``GET /`` (the page), ``GET /healthz``, ``GET /v1/models``,
``POST /v1/matte``, ``POST /v1/anonymize``, and the OpenAPI docs at ``/docs``.

Under load and bad input:

- Inference, decoding and encoding run on one worker thread, off the event
  loop. At most ``max_pending`` requests are admitted beyond the one the
  worker runs; more get 503 with ``Retry-After`` before their body is read.
- A body over ``max_upload_mb`` gets 413 before it is read in full.
- Every error is JSON ``{"error": "..."}`` naming the problem (4xx for the
  client's mistakes); unexpected failures are logged and answered with a
  generic 500, never a traceback.
- Uploads stay in memory, except that the anonymizer works on a temporary
  folder with fixed file names, removed after each request.
- With an API key, every route but ``/healthz`` and the page needs
  ``Authorization: Bearer KEY``. No CORS headers are sent, so other sites'
  scripts cannot read responses.
"""
from __future__ import annotations

import asyncio
import base64
import hmac
import json
import logging
import math
import platform
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Union

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline
from PIL import ImageOps
from starlette.exceptions import HTTPException as StarletteHTTPException

from p3m import __version__
from p3m.inference.batch import OUTPUT_KINDS, MatteOptions, encode_png
from p3m.inference.compose import FOREGROUND_MODES, Background, output_images, parse_colour
from p3m.inference.matter import Matter
from p3m.io import ImageReadError, atomic_write, open_image, to_rgb8
from p3m.io.fetch import DEFAULT_TIMEOUT, FetchError, ResponseTooLarge, URLRefused, fetch_url
from p3m.privacy import DEFAULT_THRESHOLD, METHODS, anonymize_file

LOG = logging.getLogger("p3m.serve")
STATIC = Path(__file__).parent / "static"
MiB = 1024 * 1024
# Formats the anonymizer writes back as they came; others are refused with 415.
ANONYMIZE_FORMATS = {"JPEG": (".jpg", "image/jpeg"), "PNG": (".png", "image/png"),
                     "TIFF": (".tif", "image/tiff"), "WEBP": (".webp", "image/webp"), "BMP": (".bmp", "image/bmp")}
PUBLIC_PATHS = ("/", "/healthz", "/favicon.ico")
PAGE_POLICY = ("default-src 'self'; img-src 'self' blob: data:; style-src 'self'; script-src 'self'; "
               "connect-src 'self'; frame-ancestors 'none'")


@dataclass(frozen=True)
class ServeSettings:
    """Limits and access rules of one server.

    max_upload_mb: largest request body, in MiB (also the cap on a fetched URL).
    max_pending: requests admitted to wait while one runs; more get 503.
    api_key: when set, ``Authorization: Bearer <api_key>`` is required on the API.
    allow_private_urls: let ``url=`` reach loopback, private and link-local addresses.
    fetch_timeout: seconds for downloading a ``url=`` image.
    """

    max_upload_mb: float = 50
    max_pending: int = 4
    api_key: Optional[str] = None
    allow_private_urls: bool = False
    fetch_timeout: float = DEFAULT_TIMEOUT

    def __post_init__(self):
        if not self.max_upload_mb > 0:
            raise ValueError(f"max_upload_mb must be positive, got {self.max_upload_mb}")
        if self.max_pending < 0:
            raise ValueError(f"max_pending must be 0 or more, got {self.max_pending}")
        if self.api_key is not None and not self.api_key.strip():
            raise ValueError("api_key must not be empty")

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * MiB)


class ApiError(Exception):
    """A request that cannot be served: answered as JSON ``{"error": message}`` with ``status``."""

    def __init__(self, status: int, message: str, headers: Optional[dict] = None, extra: Optional[dict] = None):
        super().__init__(message)
        self.status, self.message, self.headers, self.extra = status, message, headers or {}, extra or {}


def _error_response(code: int, message: str, headers: Optional[dict] = None, **extra) -> JSONResponse:
    return JSONResponse({"error": message, **extra}, status_code=code, headers=headers)


class _Admission:
    """Counts requests between admission and the end of their worker job (thread-safe)."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.active = 0
        self._lock = threading.Lock()
        self._job_seconds = 1.0

    def try_enter(self) -> bool:
        with self._lock:
            if self.active >= self.capacity:
                return False
            self.active += 1
            return True

    def leave(self) -> None:
        with self._lock:
            self.active -= 1

    def record(self, seconds: float) -> None:
        with self._lock:
            self._job_seconds = 0.8 * self._job_seconds + 0.2 * seconds

    def retry_after(self) -> int:
        """Seconds until a slot is likely free: the queue length times the mean job time."""
        with self._lock:
            return max(1, math.ceil(self._job_seconds * max(1, self.active)))


class _Service:
    """The model (loaded once), the single inference worker and the admission count."""

    def __init__(self, matter: Union[Matter, Callable[[], Matter]], settings: ServeSettings):
        self.settings = settings
        self.matter: Optional[Matter] = matter if isinstance(matter, Matter) else None
        self._factory = None if isinstance(matter, Matter) else matter
        self.load_error: Optional[str] = None
        self.admission = _Admission(1 + settings.max_pending)
        self.worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="p3m-inference")

    def start_loading(self) -> None:
        if self._factory is not None and self.matter is None:
            threading.Thread(target=self._load, name="p3m-model-load", daemon=True).start()

    def _load(self) -> None:
        try:
            self.matter = self._factory()
        except Exception as error:  # reported by /healthz, which then never turns ready
            LOG.exception("model failed to load")
            self.load_error = f"{type(error).__name__}: {error}"

    def ready_matter(self) -> Matter:
        if self.matter is None:
            raise ApiError(503, "the model failed to load" if self.load_error else "the model is still loading",
                           headers={"Retry-After": "5"})
        return self.matter


class _Slot:
    """An admitted request's place: given back when the request ends, or, once it has
    handed a job to the worker, when that job ends (a request cancelled by its client
    keeps counting while its job runs)."""

    def __init__(self, service: _Service):
        self._service = service
        self.handed_over = False

    async def run(self, job: Callable, *args):
        """Run ``job(*args)`` on the worker thread and wait for its result."""
        admission = self._service.admission
        started = time.monotonic()

        def timed():
            try:
                return job(*args)
            finally:
                admission.record(time.monotonic() - started)

        future = self._service.worker.submit(timed)
        self.handed_over = True
        future.add_done_callback(lambda _: admission.leave())
        return await asyncio.wrap_future(future)


@asynccontextmanager
async def _admitted(service: _Service):
    """Admit a request (yielding its :class:`_Slot`) or answer 503 with Retry-After."""
    if not service.admission.try_enter():
        raise ApiError(503, "the server is busy; retry later",
                       headers={"Retry-After": str(service.admission.retry_after())})
    slot = _Slot(service)
    try:
        yield slot
    finally:
        if not slot.handed_over:
            service.admission.leave()


def create_app(matter: Union[Matter, Callable[[], Matter]], settings: ServeSettings = ServeSettings()) -> FastAPI:
    """The p3m HTTP app.

    Args:
        matter: a loaded :class:`Matter`, or a function returning one, called on a
            background thread at start-up (``/healthz`` answers 503 until it returns).
        settings: limits and access rules.
    """
    service = _Service(matter, settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        service.start_loading()
        yield
        service.worker.shutdown(wait=False, cancel_futures=True)

    # FastAPIOffline: the /docs page's Swagger UI is served from this package, not fetched from a CDN;
    # without a validator it sends the API's description nowhere else either
    app = FastAPIOffline(title="p3m", version=__version__, lifespan=lifespan, redoc_url=None,
                         swagger_ui_parameters={"validatorUrl": None},
                         description="Privacy-preserving portrait matting (P3M-Net) and verified face anonymization.")
    app.state.service = service
    _install_error_handlers(app)

    @app.get("/", include_in_schema=False)
    async def page():
        return FileResponse(STATIC / "index.html", headers={"Content-Security-Policy": PAGE_POLICY})

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/healthz", summary="200 when the model is loaded and requests are served")
    async def healthz():
        if service.matter is not None:
            return {"status": "ready"}
        if service.load_error:
            return _error_response(503, f"the model failed to load ({service.load_error})", status="failed")
        return _error_response(503, "the model is still loading", status="loading")

    @app.get("/v1/models", summary="the loaded model, its options and the software versions")
    async def models():
        loaded = service.ready_matter()
        return _describe(loaded, settings)

    @app.post("/v1/matte", summary="matte a portrait: alpha, RGBA cutout, composite or trimap as PNG",
              response_class=Response, openapi_extra=_matte_openapi(), responses=_PNG_RESPONSE)
    async def matte(request: Request):
        loaded = service.ready_matter()
        async with _admitted(service) as slot:
            data, fields = await _read_input(request, service)
            options = _matte_options(fields, loaded)
            png = await slot.run(_matte_job, data, options)
        return Response(png, media_type="image/png",
                        headers={"Content-Disposition": f'inline; filename="p3m-{options.output}.png"'})

    @app.post("/v1/anonymize", summary="hide faces; the image comes back in its format, verified",
              response_class=Response, openapi_extra=_anonymize_openapi())
    async def anonymize(request: Request):
        service.ready_matter()
        async with _admitted(service) as slot:
            data, fields = await _read_input(request, service)
            method, threshold, as_json = _anonymize_options(fields)
            report, content, media_type = await slot.run(_anonymize_job, data, method, threshold)
        faces = [face.to_dict() for face in report.faces]
        if report.status == "not_anonymized":
            raise ApiError(422, report.error.replace(str(report.input), "image"), extra={
                "status": report.status, "verified": False, "faces": faces})
        if as_json:
            return JSONResponse({"status": report.status, "verified": True, "faces": faces, "media_type": media_type,
                                 "image": base64.b64encode(content).decode("ascii")})
        return Response(content, media_type=media_type, headers={
            "X-P3M-Status": report.status, "X-P3M-Verified": "true", "X-P3M-Faces": str(len(faces)),
            "X-P3M-Detections": json.dumps([[*face["box"], face["score"]] for face in faces],
                                           separators=(",", ":"))})

    app.add_middleware(_GuardMiddleware, settings=settings)
    return app


class _GuardMiddleware:
    """In front of every route: the API key, the body size cap, and ``nosniff`` on every response.

    A declared Content-Length over the cap is refused before any of the body is
    read; a body without one is counted as it arrives and refused once over.
    """

    def __init__(self, app, settings: ServeSettings):
        self.app = app
        self.settings = settings

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if self.settings.api_key and not _is_public(scope["path"]) and not self._authorized(scope):
            response = _error_response(401, "missing or wrong API key (send 'Authorization: Bearer KEY')",
                                       headers={"WWW-Authenticate": "Bearer"})
            return await response(scope, receive, send)
        limit = self.settings.max_upload_bytes
        too_large = f"request body over the {self.settings.max_upload_mb:g} MB limit"
        declared = _header(scope, b"content-length")
        if declared is not None and (not _is_decimal(declared) or int(declared) > limit):
            status, message = (413, too_large) if _is_decimal(declared) else (400, "invalid Content-Length")
            response = _error_response(status, message, headers={"Connection": "close"})
            return await response(scope, receive, send)
        received = 0
        started = False

        async def counted_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise _BodyTooLarge()
            return message

        async def send_with_nosniff(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                headers = [*message.get("headers", []), (b"x-content-type-options", b"nosniff")]
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, counted_receive, send_with_nosniff)
        except _BodyTooLarge:
            if started:
                raise
            response = _error_response(413, too_large, headers={"Connection": "close"})
            await response(scope, receive, send_with_nosniff)

    def _authorized(self, scope) -> bool:
        supplied = _header(scope, b"authorization") or ""
        scheme, _, token = supplied.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(),
                                                                  self.settings.api_key.encode())


class _BodyTooLarge(Exception):
    """Raised from ``receive`` once a body without a declared length passes the cap."""


def _is_decimal(text: str) -> bool:
    """Whether ``text`` is ASCII digits that ``int`` accepts (not "²", not 5000 digits)."""
    return text.isascii() and text.isdigit() and len(text) <= 18


def _is_public(path: str) -> bool:
    return path in PUBLIC_PATHS or path.startswith("/static/")


def _header(scope, name: bytes) -> Optional[str]:
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            return value.decode("latin-1").strip()
    return None


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, error: ApiError):
        return _error_response(error.status, error.message, error.headers, **error.extra)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException):
        message = error.detail if isinstance(error.detail, str) else "bad request"
        return _error_response(error.status_code, message, getattr(error, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, error: RequestValidationError):
        problems = "; ".join(f"{'.'.join(str(part) for part in item.get('loc', ()))}: {item.get('msg')}"
                             for item in error.errors())
        return _error_response(400, problems or "invalid request")

    @app.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception):
        LOG.exception("unexpected error on %s %s", request.method, request.url.path)
        return _error_response(500, f"internal error ({type(error).__name__}); the server log has the details")


# --- request input ------------------------------------------------------------------------------------


async def _read_input(request: Request, service: _Service) -> tuple[bytes, dict[str, str]]:
    """The image bytes (an upload, a raw image body or a fetched ``url``) and the text options.

    Options come from the query string and from form or JSON fields (fields win).
    """
    fields = dict(request.query_params)
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    data = None
    if content_type in ("multipart/form-data", "application/x-www-form-urlencoded"):
        data = await _read_form(request, fields)
    elif content_type == "application/json":
        try:
            body = json.loads(await request.body() or b"{}")
        except (ValueError, UnicodeDecodeError, RecursionError):
            raise ApiError(400, "the JSON body is not valid JSON") from None
        if not isinstance(body, dict) or not all(isinstance(value, (str, int, float, bool))
                                                 for value in body.values()):
            raise ApiError(400, "the JSON body must be an object of strings, numbers and booleans")
        fields.update({key: str(value).lower() if isinstance(value, bool) else str(value)
                       for key, value in body.items()})
    elif content_type.startswith("image/") or content_type == "application/octet-stream":
        data = await request.body()
    elif content_type:
        raise ApiError(415, f"unsupported content type {content_type!r}; send multipart/form-data with an "
                            "'image' file, an image body, or a 'url'")
    url = fields.pop("url", None)
    if data and url:
        raise ApiError(400, "send either an image or a url, not both")
    if url:
        data = await _fetch(url, service.settings)
    if not data:
        raise ApiError(400, "no image: send a multipart 'image' file, an image body, or a 'url'")
    return data, fields


async def _read_form(request: Request, fields: dict[str, str]) -> Optional[bytes]:
    try:
        form = await request.form(max_files=1, max_fields=32, max_part_size=64 * 1024)
    except StarletteHTTPException as error:
        raise ApiError(400, f"bad form data: {error.detail}") from None
    except ValueError as error:
        raise ApiError(400, f"bad form data: {error}") from None
    try:
        data = None
        for name, value in form.multi_items():
            if isinstance(value, str):
                fields[name] = value
            elif name != "image":
                raise ApiError(400, f"unexpected file field {name!r}; the image goes in 'image'")
            else:
                data = await value.read()
        return data
    finally:
        await form.close()


async def _fetch(url: str, settings: ServeSettings) -> bytes:
    try:
        fetched = await asyncio.to_thread(fetch_url, url, settings.max_upload_bytes, settings.fetch_timeout,
                                          settings.allow_private_urls)
    except URLRefused as error:
        raise ApiError(400, f"url: {error}") from None
    except ResponseTooLarge as error:
        raise ApiError(413, f"url: {error}") from None
    except FetchError as error:
        raise ApiError(502, f"url: {error}") from None
    return fetched.content


@dataclass(frozen=True)
class _MatteRequest:
    output: str
    options: MatteOptions
    matter: Matter
    background: Optional[Background]


def _matte_options(fields: dict[str, str], matter: Matter) -> _MatteRequest:
    known = {"output", "background", "method", "max_size", "privacy", "foreground", "alpha_depth"}
    _refuse_unknown(fields, known)
    output = _choice(fields, "output", OUTPUT_KINDS, "rgba")
    foreground = _choice(fields, "foreground", FOREGROUND_MODES, "estimate")
    alpha_depth = int(_choice(fields, "alpha_depth", ("8", "16"), "8"))
    background = None
    if output == "composite":
        try:
            red, green, blue = parse_colour(fields.get("background", "white"))
        except ValueError:
            raise ApiError(400, f"background: {fields['background']!r} is not a colour "
                                "(white, #00ff00 or 0,255,0)") from None
        background = Background(f"{red},{green},{blue}")
    elif "background" in fields:
        raise ApiError(400, "background: only used with output=composite")
    method = _choice(fields, "method", ("hybrid", "resize"), matter.method.value)
    max_size = _integer(fields, "max_size", matter.max_size, 32, matter.max_size)
    privacy = _boolean(fields, "privacy", matter.privacy)
    options = MatteOptions(outputs=(output,), background="white", foreground=foreground, alpha_depth=alpha_depth)
    return _MatteRequest(output, options, matter.with_options(method, max_size, privacy), background)


def _anonymize_options(fields: dict[str, str]) -> tuple[str, float, bool]:
    _refuse_unknown(fields, {"method", "threshold", "format"})
    method = _choice(fields, "method", METHODS, "blur")
    text = fields.get("threshold", str(DEFAULT_THRESHOLD))
    try:
        threshold = float(text)
    except ValueError:
        threshold = math.nan
    if not 0.0 < threshold < 1.0:
        raise ApiError(400, f"threshold: {text!r} is not a number between 0 and 1")
    as_json = _choice(fields, "format", ("image", "json"), "image") == "json"
    return method, threshold, as_json


def _refuse_unknown(fields: dict[str, str], known: set[str]) -> None:
    unknown = sorted(set(fields) - known)
    if unknown:
        raise ApiError(400, f"unknown option {unknown[0]!r}; options are {', '.join(sorted(known))}")


def _choice(fields: dict[str, str], name: str, choices, default: str) -> str:
    value = fields.get(name, default).strip().lower()
    if value not in choices:
        raise ApiError(400, f"{name}: {fields[name]!r} is not one of {', '.join(choices)}")
    return value


def _integer(fields: dict[str, str], name: str, default: int, low: int, high: int) -> int:
    text = fields.get(name)
    if text is None:
        return default
    if not _is_decimal(text.strip()) or not low <= int(text) <= high:
        raise ApiError(400, f"{name}: {text!r} is not a whole number from {low} to {high}")
    return int(text)


def _boolean(fields: dict[str, str], name: str, default: bool) -> bool:
    text = fields.get(name)
    if text is None:
        return default
    value = text.strip().lower()
    if value in ("true", "1", "yes", "on"):
        return True
    if value in ("false", "0", "no", "off"):
        return False
    raise ApiError(400, f"{name}: {text!r} is not true or false")


# --- worker jobs (run on the inference thread) ---------------------------------------------------------


def _decode(data: bytes) -> tuple[np.ndarray, str]:
    """(H, W, 3) uint8 RGB, EXIF orientation applied (as :func:`p3m.io.read_image`), and the format name."""
    try:
        with open_image(data, name="image") as image:
            return to_rgb8(ImageOps.exif_transpose(image)), image.format or ""
    except ImageReadError as error:
        raise ApiError(400, str(error)) from None


def _matte_job(data: bytes, request: _MatteRequest) -> bytes:
    image, _ = _decode(data)
    result = request.matter.predict(image)
    options = request.options
    ((_, array),) = output_images(result, (request.output,), options.foreground, options.alpha_depth,
                                  request.background)
    return encode_png(array, request.options.png_compression)


def _anonymize_job(data: bytes, method: str, threshold: float):
    """Anonymize an upload with the same file logic as ``p3m anonymize``, in a private temporary folder."""
    _, format_name = _decode(data)
    if format_name not in ANONYMIZE_FORMATS:
        raise ApiError(415, f"image: {format_name or 'this'} format cannot be written back; "
                            f"send {', '.join(ANONYMIZE_FORMATS)}")
    suffix, media_type = ANONYMIZE_FORMATS[format_name]
    with tempfile.TemporaryDirectory(prefix="p3m-serve-") as folder:
        source, output = Path(folder, f"upload{suffix}"), Path(folder, f"anonymized{suffix}")
        atomic_write(source, lambda tmp: tmp.write_bytes(data))
        report = anonymize_file(source, output, method=method, threshold=threshold)
        if report.status == "error":  # the upload decoded above, so this is the server's own failure
            LOG.error("anonymize: %s", report.error)
            raise ApiError(500, "the anonymized image could not be written; the server log has the details")
        content = output.read_bytes() if report.output is not None else None
    return report, content, media_type


def _describe(matter: Matter, settings: ServeSettings) -> dict:
    import onnxruntime
    import torch

    return {
        "model": matter.model_name,
        "weights": Path(matter.weights_path).name,
        "method": matter.method.value,
        "max_size": matter.max_size,
        "privacy": matter.privacy,
        "device": str(matter.device),
        "precision": str(getattr(matter, "precision", "fp32")),
        "engine": str(getattr(matter, "engine", "torch")),
        "outputs": list(OUTPUT_KINDS),
        "anonymize_methods": list(METHODS),
        "max_upload_mb": settings.max_upload_mb,
        "versions": {"p3m": __version__, "torch": torch.__version__, "onnxruntime": onnxruntime.__version__,
                     "python": platform.python_version()},
    }


# --- OpenAPI descriptions of the hand-parsed bodies ----------------------------------------------------

_PNG_RESPONSE = {200: {"content": {"image/png": {}}, "description": "the PNG"}}


def _form_schema(properties: dict) -> dict:
    image = {"image": {"type": "string", "format": "binary", "description": "the photo (or give 'url')"},
             "url": {"type": "string", "description": "an http(s) URL of the photo, instead of 'image'"}}
    return {"requestBody": {"content": {
        "multipart/form-data": {"schema": {"type": "object", "properties": {**image, **properties}}},
        "application/json": {"schema": {"type": "object", "properties": {"url": image["url"], **properties}}},
        "image/*": {"schema": {"type": "string", "format": "binary"}},
    }}}


def _matte_openapi() -> dict:
    return _form_schema({
        "output": {"type": "string", "enum": list(OUTPUT_KINDS), "default": "rgba"},
        "background": {"type": "string", "description": "composite colour: white, #00ff00 or 0,255,0"},
        "method": {"type": "string", "enum": ["hybrid", "resize"], "description": "default: the server's"},
        "max_size": {"type": "integer", "description": "per-side cap of a pass, up to the server's"},
        "privacy": {"type": "boolean", "description": "blur faces before the network sees the image"},
        "foreground": {"type": "string", "enum": list(FOREGROUND_MODES), "default": "estimate"},
        "alpha_depth": {"type": "integer", "enum": [8, 16], "default": 8},
    })


def _anonymize_openapi() -> dict:
    return _form_schema({
        "method": {"type": "string", "enum": list(METHODS), "default": "blur"},
        "threshold": {"type": "number", "default": DEFAULT_THRESHOLD},
        "format": {"type": "string", "enum": ["image", "json"], "default": "image",
                   "description": "json: the result and the image (base64) in one JSON object"},
    })
