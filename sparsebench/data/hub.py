"""Whether the Hugging Face hub answers: asked before a model loads, so an offline run fails at once."""

from __future__ import annotations

import socket
from urllib.parse import urlparse

HUB_CHECK_TIMEOUT_S = 5.0


def hub_unreachable(timeout: float = HUB_CHECK_TIMEOUT_S) -> str | None:
    """Why the hub cannot be reached, or None (also None when the hub is switched off).

    With ``HF_HUB_OFFLINE=1`` the answer is None: ``datasets`` then reads its own cache, and fails
    at once without it.
    """
    import datasets.config
    from huggingface_hub import constants

    if datasets.config.HF_HUB_OFFLINE:
        return None
    endpoint = urlparse(constants.ENDPOINT)
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        socket.create_connection((endpoint.hostname, port), timeout=timeout).close()
    except OSError as error:
        return f"{constants.ENDPOINT} does not answer ({error})"
    return None
