"""Whether the Hugging Face hub can be reached, decided in seconds.

Without a network, ``transformers`` and ``datasets`` retry every request with back-off and log
a warning each time (an unknown model name took 52 s and 44 lines before its error).
:func:`hub_unreachable` says why the hub cannot be used — ``HF_HUB_OFFLINE`` is set, or one TCP
connection to the endpoint fails within :data:`PROBE_SECONDS` — so that loaders read the local
cache only and fail with one line. The probe's answer is kept per endpoint for the process.

>>> hub_unreachable()  # doctest: +SKIP
'HF_HUB_OFFLINE is set'

Deliberately not here: loading anything (:mod:`anchor_flow.models.loading`,
:mod:`anchor_flow.icl.hub`).
"""

from __future__ import annotations

import os
import socket
from urllib.parse import urlparse

__all__ = ["PROBE_SECONDS", "hub_unreachable"]

PROBE_SECONDS = 3.0
_TRUE = {"1", "ON", "YES", "TRUE"}
_PROBED: dict[tuple[str, int], str | None] = {}


def _endpoint() -> str:
    try:
        from huggingface_hub import constants

        return str(constants.ENDPOINT)
    except ImportError:  # pragma: no cover - huggingface_hub comes with transformers
        return os.environ.get("HF_ENDPOINT", "https://huggingface.co")


def _offline_flag() -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "").upper() in _TRUE:
        return True
    try:
        from huggingface_hub import constants

        return bool(constants.HF_HUB_OFFLINE)
    except ImportError:  # pragma: no cover
        return False


def _connect(host: str, port: int) -> str | None:
    try:
        with socket.create_connection((host, port), timeout=PROBE_SECONDS):
            return None
    except OSError as error:
        return f"{host}:{port} cannot be reached ({type(error).__name__}: {error})"


def hub_unreachable() -> str | None:
    """Why the hub cannot be used now, or ``None`` when it answers."""
    if _offline_flag():
        return "HF_HUB_OFFLINE is set"
    url = urlparse(_endpoint())
    host = url.hostname or "huggingface.co"
    port = url.port or (80 if url.scheme == "http" else 443)
    if (host, port) not in _PROBED:
        _PROBED[(host, port)] = _connect(host, port)
    return _PROBED[(host, port)]
