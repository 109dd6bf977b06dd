"""Redaction of credentials in URLs, for everything that shows an endpoint to a person."""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

_SECRET_PARAMS = ("key", "token", "secret", "password", "passwd", "auth", "signature", "sig")
MASK = "***"


def redact_url(url: str) -> str:
    """``url`` with any ``user:password@`` and secret-looking query values masked.

    >>> redact_url("https://bob:hunter2@host/v1?api_key=abc&x=1")
    'https://***@host/v1?api_key=***&x=1'
    """
    try:
        parts = urlsplit(url)
    except ValueError:
        return MASK
    netloc = parts.netloc
    if "@" in netloc:
        netloc = f"{MASK}@{netloc.rsplit('@', 1)[1]}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode(
            [(k, MASK if any(s in k.lower() for s in _SECRET_PARAMS) else v) for k, v in pairs],
            safe="*",
        )
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
