"""Masking credentials in URLs and in any text that may quote one.

A database, tracking-server or webhook URL can carry a password in its userinfo
(``postgresql://etl:s3cret@db/api``), a token as its user name (``https://ghp_...@host``) or in
its path (a webhook's ``/services/T0/B0/<secret>``), or a secret in its query string
(``?password=s3cret``, ``?X-Amz-Signature=...``). Text can also hold ``password=...`` pairs and
``Authorization: Bearer ...`` headers. Whatever is printed, logged, put in a state message or
stored (manifests, summaries, artifacts) goes through :func:`mask_url` or :func:`scrub` first.

Written here rather than taken from SQLAlchemy (``render_as_string(hide_password=True)``):
that masks only the userinfo of URLs it can parse, not query keys, and not URLs inside text
such as an exception message.

A password is often pasted unencoded, so ``#``, ``?``, ``/``, ``@``, ``;`` and ``,`` in it end
neither the userinfo nor the password: everything between ``user:`` and the last ``@`` that a
host follows is masked. A URL whose path holds an ``@`` after a port (``http://h:80/a@b``) is
then masked from the port on: an ambiguity resolved toward hiding, as SQLAlchemy's parser does.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from urllib.parse import parse_qsl, quote, unquote, urlsplit, urlunsplit

MASK = "***"

SECRET_KEY = re.compile(
    r"pass(word|wd)?|pwd|secret|token|api[-_]?key|access[-_]?key|signature|credential|auth|sig",
    re.IGNORECASE,
)
"""Query keys whose values are masked (matched anywhere in the key)."""

_URL = re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s'\"<>()\[\]{},;]+")
_USERINFO = re.compile(
    r"(?P<scheme>\b[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<user>[^\s:/?#@'\"<>]*)"
    r"(?::(?P<password>[^\s'\"<>]*))?@(?=[\w\[])"
)
"""A URL's ``scheme://user[:password]@``, unencoded passwords included (greedy to the last
``@`` before a host, so ``p@ss``, ``p#ss``, ``p/ss``, ``p;ss`` are one password)."""
_ASSIGNMENT = re.compile(
    r"(?P<key>\b[\w-]*(?:pass(?:word|wd)?|pwd|secret|token|api[-_]?key|signature)[\w-]*)"
    r"(?P<sep>[\"']?\s*[=:]\s*)"
    r"(?:(?P<quote>[\"'])(?P<quoted>[^\"'\n]*)(?P=quote)|(?P<value>[^\s&'\"]+))",
    re.IGNORECASE,
)
"""``password=...``, ``token: ...``, ``'password': '...'``; an unquoted value runs to a space,
a quote or ``&`` (``;`` and ``,`` occur in passwords), a quoted one to its closing quote."""
_AUTHORIZATION = re.compile(
    r"(?P<head>\b(?:proxy-)?authorization[\"']?\s*[=:]\s*[\"']?"
    r"(?:(?:bearer|basic|token|digest|negotiate|apikey|aws4-hmac-sha256)\s+)?)"
    r"(?P<value>[^\s'\"]+)",
    re.IGNORECASE,
)
"""An ``Authorization`` header's credentials, after its scheme."""
_BEARER = re.compile(r"(?P<head>\bBearer\s+)(?P<value>[\w\-.~+/]{8,}=*)", re.IGNORECASE)
"""A bearer token quoted without its header (``curl -H 'Bearer ...'``)."""
_RUN = re.compile(r"[A-Za-z0-9_~+=-]{20,}")
_TOKEN_PREFIX = re.compile(r"(?:gh[opusr]_|github_pat_|glpat-|xox[abposr]-)[\w-]{10,}")


def looks_like_token(text: str) -> bool:
    """Whether ``text`` (one run of URL-safe characters) looks like a generated credential.

    A known token prefix (GitHub, GitLab, Slack), or 20 characters or more with at least two
    capitals, two small letters, and a digit or 4 bits of entropy per character: random base62
    or base64 of that length is such a run about 97 times in 100 at 20 characters and 99.6 at
    32. Hexadecimal (hashes, MLflow run ids, UUIDs), words, dates and snapshot ids
    (``20260101T000000Z-abcdef12``) are not, so they stay readable.
    """
    if _TOKEN_PREFIX.fullmatch(text):
        return True
    if len(text) < 20:
        return False
    upper = sum(c.isupper() for c in text)
    lower = sum(c.islower() for c in text)
    if upper < 2 or lower < 2:
        return False
    counts = Counter(text).values()
    entropy = -sum(n / len(text) * math.log2(n / len(text)) for n in counts)
    return entropy >= 3.3 and (any(c.isdigit() for c in text) or entropy >= 4.0)


def _mask_tokens(text: str) -> str:
    """``text`` (a path or a user name) with every token-like run masked."""
    return _RUN.sub(lambda m: MASK if looks_like_token(m.group(0)) else m.group(0), text)


def _mask_userinfo(match: re.Match[str]) -> str:
    user = match["user"]
    shown = MASK if looks_like_token(unquote(user)) else user
    return f"{match['scheme']}{shown}{'' if match['password'] is None else ':' + MASK}@"


def mask_url(url: str) -> str:
    """``url`` with its credentials masked: password, token-like user name, path and query.

    The password of the userinfo (encoded or not), a user name or path segment that looks like
    a token (:func:`looks_like_token`), and every password-like query value become ``***``. The
    host, other path segments and query values stay, so the URL is still recognisable.
    Text that does not parse as a URL is returned unchanged.
    """
    masked = _USERINFO.sub(_mask_userinfo, url, count=1) if _USERINFO.match(url) else url
    try:
        parts = urlsplit(masked)
    except ValueError:
        return masked
    path = parts.path if parts.scheme == "file" else _mask_tokens(parts.path)
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        if any(SECRET_KEY.search(k) for k, _ in pairs):
            query = "&".join(
                f"{quote(k, safe='')}={MASK if SECRET_KEY.search(k) else quote(v, safe='')}"
                for k, v in pairs
            )
    if path == parts.path and query == parts.query:
        return masked
    return urlunsplit((parts.scheme, parts.netloc, path, query, parts.fragment))


def _mask_assignment(match: re.Match[str]) -> str:
    if match["quote"]:
        return f"{match['key']}{match['sep']}{match['quote']}{MASK}{match['quote']}"
    return match[0] if match["value"] == MASK else f"{match['key']}{match['sep']}{MASK}"


def scrub(text: str) -> str:
    """``text`` with every URL masked by :func:`mask_url`, and secrets outside URLs masked.

    For exception messages and notes, which may quote a URL, a DSN or a request's headers:
    ``password=...`` and ``token: ...`` pairs, ``Authorization`` headers and bearer tokens.
    """
    # Userinfo first: an unencoded password may hold what ends a URL in text (``;``, ``,``).
    text = _USERINFO.sub(_mask_userinfo, text)
    text = _URL.sub(lambda m: mask_url(m.group(0)), text)
    text = _AUTHORIZATION.sub(lambda m: f"{m['head']}{MASK}", text)
    text = _BEARER.sub(lambda m: f"{m['head']}{MASK}", text)
    # password=..., token: ... outside a URL (a driver's DSN, a quoted query string, a dict).
    return _ASSIGNMENT.sub(_mask_assignment, text)


def split_userinfo(url: str) -> tuple[str, str | None, str | None]:
    """``(url without userinfo, user, password)``; user and password None when absent.

    MLflow reads its credentials from ``MLFLOW_TRACKING_USERNAME``/``PASSWORD``: a tracking URI
    without them never puts the password into an MLflow error message. An unencoded password
    (``#``, ``?``, ``/`` in it) is split off whole, as :func:`mask_url` masks it.
    """
    found = _USERINFO.match(url)
    if found is None:
        return url, None, None
    bare = found["scheme"] + url[found.end() :]
    password = found["password"]
    return bare, unquote(found["user"]) or None, None if password is None else unquote(password)
