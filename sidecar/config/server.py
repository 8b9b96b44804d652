"""``server:``: where the sidecar listens, the API token, the largest request body."""

from __future__ import annotations

import re

from .maxima import MAX_BODY_BYTES
from .reader import Reader
from .records import ServerConfig


def read_server(r: Reader | None) -> ServerConfig:
    if r is None:
        return ServerConfig()
    d = ServerConfig()
    host, port = d.host, d.port
    listen = r.str_("listen")
    if listen is not None:
        m = re.fullmatch(r"\[?([^\[\]]*?)\]?:(\d{1,5})", listen.strip())
        if m is None or not 0 <= int(m.group(2)) <= 65535:
            raise r.error(r.items["listen"][1], r.key("listen"), f"expected HOST:PORT, got {listen!r}")
        host, port = m.group(1) or "0.0.0.0", int(m.group(2))
    out = ServerConfig(host=host, port=port, auth_token_file=r.secret_file("auth_token_file"),
                       max_body_bytes=r.int_("max_body_bytes", d.max_body_bytes, minimum=1024,
                                             maximum=MAX_BODY_BYTES) or d.max_body_bytes)
    r.finish()
    return out
