"""``p3m serve``: the HTTP API and the web page over one loaded :class:`p3m.Matter`.

Needs the ``serve`` extra (FastAPI, uvicorn, python-multipart): ``pip install "p3m[serve]"``.
"""
from p3m.serve.app import ApiError, ServeSettings, create_app

__all__ = ["ApiError", "ServeSettings", "create_app"]
