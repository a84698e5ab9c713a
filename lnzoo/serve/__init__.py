"""``lnzoo serve``: a trained model as a web page and a JSON API (FastAPI, served by uvicorn).

Needs the serving extra (``pip install "lnzoo[serve]"``): importing this package imports FastAPI.
"""
from __future__ import annotations

from lnzoo.serve.app import create_app, run_server

__all__ = ["create_app", "run_server"]
