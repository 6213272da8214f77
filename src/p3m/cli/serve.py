"""``p3m serve``: the HTTP API and the web page over one model, loaded at start."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from p3m.cli import CommandError, add_engine_options, model_errors


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "serve", help="HTTP API and web page for matting and anonymizing",
        description="Serve the API (POST /v1/matte, POST /v1/anonymize, GET /v1/models, GET /healthz; "
                    "docs at /docs) and a web page at /. Needs the 'serve' extra: pip install 'p3m[serve]'.")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1, this machine only; 0.0.0.0 for all)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    parser.add_argument("--model", default="resnet34", help="resnet34 (default), vitae-s or swin-t")
    parser.add_argument("--weights", type=Path, help="a local checkpoint instead of the official weights")
    parser.add_argument("--method", default="hybrid", type=str.lower, choices=("hybrid", "resize"),
                        help="default method of /v1/matte (requests may choose): hybrid (default) or resize")
    parser.add_argument("--max-size", dest="max_size", type=int, default=1600, metavar="N",
                        help="per-side cap of a network pass (default 1600); requests may ask for less")
    parser.add_argument("--device", default="auto", help="auto (the default), cpu, cuda, cuda:N or mps")
    add_engine_options(parser)
    parser.add_argument("--max-upload-mb", dest="max_upload_mb", type=float, default=50, metavar="MB",
                        help="largest request body and fetched URL, in MiB (default 50); larger ones get 413")
    parser.add_argument("--max-pending", dest="max_pending", type=int, default=4, metavar="N",
                        help="requests that may wait while one runs (default 4); more get 503 with Retry-After")
    parser.add_argument("--api-key", dest="api_key", metavar="KEY",
                        help="require 'Authorization: Bearer KEY' on every route but /healthz and the page "
                             "(default: the P3M_API_KEY environment variable, if set)")
    parser.add_argument("--allow-private-urls", dest="allow_private_urls", action="store_true",
                        help="let url= inputs reach loopback, private and link-local addresses")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from p3m.serve import ServeSettings, create_app
    except ModuleNotFoundError as error:
        raise CommandError(f"{error.name} is not installed; install the server with: pip install 'p3m[serve]'") \
            from None
    from p3m.inference.matter import Matter


    if not 0 < args.port < 65536:
        raise CommandError(f"--port must be in 1-65535, got {args.port}")
    if args.max_pending < 0:
        raise CommandError(f"--max-pending must be 0 or more, got {args.max_pending}")
    if not args.max_upload_mb > 0:
        raise CommandError(f"--max-upload-mb must be positive, got {args.max_upload_mb:g}")
    api_key = args.api_key if args.api_key is not None else os.environ.get("P3M_API_KEY")
    if api_key is not None and not api_key.strip():
        raise CommandError("--api-key (or P3M_API_KEY) must not be empty")
    settings = ServeSettings(max_upload_mb=args.max_upload_mb, max_pending=args.max_pending, api_key=api_key,
                             allow_private_urls=args.allow_private_urls)
    try:
        matter = Matter(model=args.model, weights=args.weights, method=args.method, max_size=args.max_size,
                        device=args.device, precision=args.precision, engine=args.engine)
    except model_errors(args.engine) as error:
        raise CommandError(str(error).strip("'\"")) from None
    print(f"p3m serve: {matter!r} ready on http://{args.host}:{args.port}/", file=sys.stderr)
    uvicorn.run(create_app(matter, settings), host=args.host, port=args.port, log_level="info",
                server_header=False, timeout_graceful_shutdown=10)
    return 0
