"""HTTP/1.1 framing for raw_http.py: a request's head out; an answer's head and a chunked body in.
Pure functions over bytes: what they refuse is an aiohttp exception the pacer already retries
(ClientPayloadError), or a ValueError for a header value that would end the head early."""

from __future__ import annotations

from collections.abc import Mapping

import aiohttp
from aiohttp.http import SERVER_SOFTWARE
from multidict import CIMultiDict

#: body framing of an answer's head: chunked, or ended by the connection's end
CHUNKED = -1
UNTIL_CLOSE = -2


def parse_head(raw: bytes) -> tuple[int, CIMultiDict[str], int, bool]:
    """(status, headers, body length or CHUNKED or UNTIL_CLOSE, keep-alive) of an answer's head."""
    lines = raw.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        raise aiohttp.ClientPayloadError("not an HTTP/1.1 answer")
    headers: CIMultiDict[str] = CIMultiDict()
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep:
            raise aiohttp.ClientPayloadError("malformed answer header")
        headers.add(name.strip(), value.strip())
    status = int(parts[1])
    keep_alive = parts[0] == "HTTP/1.1" and headers.get("Connection", "").lower() != "close"
    if "chunked" in headers.get("Transfer-Encoding", "").lower():
        return status, headers, CHUNKED, keep_alive
    length = headers.get("Content-Length")
    if length is None:
        # no length: a body, if any, ends with the connection (never a keep-alive answer)
        return status, headers, UNTIL_CLOSE, False
    if not length.isdigit():
        raise aiohttp.ClientPayloadError("malformed Content-Length")
    return status, headers, int(length), keep_alive


def dechunk(buf: bytearray) -> bytes | None:
    """The body of a complete chunked encoding at the start of ``buf`` (removed from it, trailers
    ignored), or None while it is incomplete."""
    out = bytearray()
    pos = 0
    while True:
        eol = buf.find(b"\r\n", pos)
        if eol < 0:
            return None
        size_text = bytes(buf[pos:eol]).split(b";", 1)[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError:
            raise aiohttp.ClientPayloadError("malformed chunk size") from None
        if size == 0:
            end = buf.find(b"\r\n\r\n", eol)  # trailers, then the blank line
            if end < 0:
                return None
            del buf[: end + 4]
            return bytes(out)
        start = eol + 2
        if len(buf) < start + size + 2:
            return None
        out += buf[start : start + size]
        pos = start + size + 2


def request_head(method: str, target: str, host: str, headers: Mapping[str, str]) -> bytes:
    """The request line and headers (``headers``: lowercase names, as signed). A CR or LF in a
    value would end the header early (header injection): refused, as aiohttp refuses it."""
    lines = [f"{method} {target} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: {SERVER_SOFTWARE}\r\n"]
    for name, value in headers.items():
        if "\r" in value or "\n" in value:
            raise ValueError(f"header {name} holds a newline")
        lines.append(f"{name}: {value}\r\n")
    lines.append("\r\n")
    return "".join(lines).encode("utf-8")
