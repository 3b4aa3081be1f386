"""The API key every request of the load tools carries, from ``ALEXNET_API_KEY`` as the service reads it.

A server started with ``ALEXNET_API_KEY`` answers 401 to anything without ``Authorization: Bearer <key>``
(service/middleware.py ``BearerAuth``; health, readiness and ``/metrics`` are open by default). The key
is read from the environment only, never from a flag: a flag's value shows in ``ps``. Load processes
(``--procs``) get it from their parent over the spawn pipe, not on a command line.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from service.settings import API_KEY_ENV, clean_api_key


def api_key_from_env(environ: Mapping[str, str] | None = None) -> str | None:
    """The key in ``ALEXNET_API_KEY`` as the service reads it (``service.settings.clean_api_key``:
    surrounding whitespace dropped), or None when it is unset.

    Set but blank (a secret that failed to mount), or holding control characters (which no HTTP
    header can carry), is a ValueError that says so: sending no key would only give 401s.
    """
    value = (os.environ if environ is None else environ).get(API_KEY_ENV)
    if value is None:
        return None
    try:  # the service's own rule, so that the key sent is the key it compares with
        return clean_api_key(value, "give the server's key, or unset it for a server without one")
    except ValueError as exc:
        raise ValueError(f"{API_KEY_ENV}: {exc}") from None


def auth_headers(api_key: str | None) -> dict[str, str]:
    """``{"Authorization": "Bearer <key>"}``, or nothing without a key."""
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}
