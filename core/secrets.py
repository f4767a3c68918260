"""Masking credentials in URLs and in any text that may quote one.

A database, tracking-server or webhook URL can carry a password in its userinfo
(``postgresql://etl:s3cret@db/api``) or in its query string (``?password=s3cret``,
``?X-Amz-Signature=...``). Whatever is printed, logged, put in a state message or stored
(manifests, summaries, artifacts) goes through :func:`mask_url` or :func:`scrub` first.

Written here rather than taken from SQLAlchemy (``render_as_string(hide_password=True)``):
that masks only the userinfo of URLs it can parse, not query keys, and not URLs inside text
such as an exception message.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, quote, unquote, urlsplit, urlunsplit

MASK = "***"

SECRET_KEY = re.compile(
    r"pass(word|wd)?|pwd|secret|token|api[-_]?key|access[-_]?key|signature|credential|auth|sig",
    re.IGNORECASE,
)
"""Query keys whose values are masked (matched anywhere in the key)."""

_URL = re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s'\"<>()\[\]{},;]+")
_ASSIGNMENT = re.compile(
    r"(?P<key>\b[\w-]*(?:pass(?:word|wd)?|pwd|secret|token|api[-_]?key|signature)[\w-]*)"
    r"(?P<sep>\s*[=:]\s*)(?P<value>[^\s&'\",;)]+)",
    re.IGNORECASE,
)


def mask_url(url: str) -> str:
    """``url`` with the password of its userinfo and every password-like query value masked.

    The user name, host, path and other query values stay, so the URL is still recognisable.
    Text that does not parse as a URL is returned unchanged.
    """
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, host = netloc.rpartition("@")
        user, colon, _ = userinfo.partition(":")
        netloc = f"{user}:{MASK}@{host}" if colon else netloc
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        if any(SECRET_KEY.search(k) for k, _ in pairs):
            query = "&".join(
                f"{quote(k, safe='')}={MASK if SECRET_KEY.search(k) else quote(v, safe='')}"
                for k, v in pairs
            )
    if netloc == parts.netloc and query == parts.query:
        return url
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def scrub(text: str) -> str:
    """``text`` with every URL masked by :func:`mask_url` and ``password=...`` pairs masked.

    For exception messages and notes, which may quote a URL or a DSN.
    """
    text = _URL.sub(lambda m: mask_url(m.group(0)), text)
    # password=..., token: ... outside a URL (a driver's DSN, a quoted query string).
    return _ASSIGNMENT.sub(
        lambda m: m.group(0) if m.group("value") == MASK else f"{m['key']}{m['sep']}{MASK}", text
    )


def split_userinfo(url: str) -> tuple[str, str | None, str | None]:
    """``(url without userinfo, user, password)``; user and password None when absent.

    MLflow reads its credentials from ``MLFLOW_TRACKING_USERNAME``/``PASSWORD``: a tracking URI
    without them never puts the password into an MLflow error message.
    """
    try:
        parts = urlsplit(url)
    except ValueError:
        return url, None, None
    if "@" not in parts.netloc:
        return url, None, None
    userinfo, _, host = parts.netloc.rpartition("@")
    user, colon, password = userinfo.partition(":")
    bare = urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))
    return bare, unquote(user) or None, unquote(password) if colon else None
