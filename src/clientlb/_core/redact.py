"""The one rule that keeps secrets out of text: messages, reprs, logs, CLI output.

The public contract: "Secrets (Consul/etcd tokens, credentials) never appear in logs,
``repr``, exceptions or metrics". A secret reaches clientlb in a few places
only — a target's user-info (``consul://user:password@agent/svc``, refused
but echoed by the error that refuses it), a query parameter
(``?token=``, ``?password=``, and the same names percent-encoded:
``?tok%65n=`` *is* ``token`` once decoded), and resolver options. Every
surface that shows a target or a message goes through this module:

* :func:`redact_target` — structural, for a target the user wrote: the
  user-info before the last ``@`` of the authority becomes ``***``, and the
  value of every secret query parameter becomes ``***`` whatever characters
  it holds (quotes, ``%``-escapes, ``#``), before the text is ever quoted;
* :func:`redact` — textual, for free text that may quote such a target
  (exception messages, log lines, CLI output): the same user-info and
  ``key=value`` rules, plus ``'key': 'value'`` as a ``dict`` repr shows it.
  :class:`~clientlb.ClientLBError` and its subclasses pass their message
  through it, so no error clientlb raises can repeat a credential.

A parameter is secret when its name, percent-decoded and case-folded,
contains one of :data:`SECRET_WORDS` (``token``, ``password``, ``secret``,
``api_key``, ``auth``, ...). Over-masking costs a ``***`` in a message;
under-masking leaks a credential into every log aggregator downstream.
"""

from __future__ import annotations

import re
from urllib.parse import unquote_plus

__all__ = ["MASK", "SECRET_WORDS", "is_secret_key", "redact", "redact_target"]

MASK = "***"

#: Fragments of parameter names that hold credentials (matched on the decoded name).
SECRET_WORDS = ("token", "passw", "pwd", "secret", "credential", "apikey", "api_key",
                "api-key", "accesskey", "access_key", "access-key", "auth", "signature",
                "session", "private")

_SECRET_NAME = re.compile("|".join(re.escape(w) for w in SECRET_WORDS), re.IGNORECASE)

# scheme://userinfo@ — greedy up to the last "@" of a whitespace/quote-delimited run
_URL_USERINFO = re.compile(r"(?P<pre>\b[A-Za-z][A-Za-z0-9+.-]*://)[^\s'\"<>]*@")
# user:password@host without a scheme (a static list): at the start of an item
_BARE_USERINFO = re.compile(r"(?P<pre>^|[\s,'\"(\[=])[^\s,'\"@/()\[\]]*:[^\s,'\"/]*@")
# key=value (a query string, a log line); the value stops at a delimiter
_KEY_VALUE = re.compile(r"(?P<key>[A-Za-z0-9_.%~+-]+)=(?P<value>[^&\s'\"#,;)\]}>]*)")
# 'key': 'value' / "key": "value" (a dict's repr, JSON)
_QUOTED_PAIR = re.compile(
    r"(?P<q1>['\"])(?P<key>[^'\"]{1,100})(?P=q1)(?P<sep>\s*[:=]\s*)"
    r"(?P<q2>['\"])(?P<value>(?:(?!(?P=q2)).)*)(?P=q2)")


def is_secret_key(name: str) -> bool:
    """Whether a parameter named ``name`` (raw or percent-encoded) holds a secret."""
    if _SECRET_NAME.search(name):
        return True
    try:
        decoded = unquote_plus(name)
    except Exception:  # pragma: no cover - unquote_plus accepts any str
        return True
    return bool(_SECRET_NAME.search(decoded))


def _mask_pair(m: re.Match[str]) -> str:
    if is_secret_key(m["key"]):
        return f"{m['key']}={MASK}"
    return m[0]


def _mask_quoted(m: re.Match[str]) -> str:
    if is_secret_key(m["key"]):
        return f"{m['q1']}{m['key']}{m['q1']}{m['sep']}{m['q2']}{MASK}{m['q2']}"
    return m[0]


def redact(text: str) -> str:
    """``text`` with user-info and the values of secret parameters replaced by ``***``."""
    if not isinstance(text, str) or not text:
        return text
    if "@" in text:
        text = _URL_USERINFO.sub(lambda m: f"{m['pre']}{MASK}@", text)
        text = _BARE_USERINFO.sub(lambda m: f"{m['pre']}{MASK}@", text)
    if "=" in text:
        text = _KEY_VALUE.sub(_mask_pair, text)
    if ":" in text or "=" in text:
        text = _QUOTED_PAIR.sub(_mask_quoted, text)
    return text


def redact_target(target: object) -> str:
    """A target as the user wrote it, safe to show (structural; see the module doc).

    ``consul://u:pw@agent/svc?tok%65n=x&dc=eu`` → ``consul://***@agent/svc?tok%65n=***&dc=eu``.
    Lists (static targets) are shown item by item; anything else by its ``str``.
    """
    if isinstance(target, (list, tuple)):
        return "[" + ", ".join(redact_target(item) if isinstance(item, str) else redact(repr(item))
                               for item in target) + "]"
    text = target if isinstance(target, str) else str(target)
    base, qmark, query = text.partition("?")
    if "@" in base:
        scheme, sep, rest = base.partition("://")
        if not sep:
            scheme, rest = "", base
        # the user-info ends at the last "@" before the path: everything up to it goes
        authority, slash, path = rest.partition("/")
        if "@" in authority:
            rest = MASK + "@" + authority.rpartition("@")[2] + slash + path
        else:  # an "@" after a "/" inside what the user meant as a password
            rest = MASK + "@" + rest.rpartition("@")[2]
        base = f"{scheme}{sep}{rest}"
    if qmark:
        pieces = []
        for piece in query.split("&"):
            key, eq, _ = piece.partition("=")
            pieces.append(f"{key}={MASK}" if eq and is_secret_key(key) else piece)
        query = "&".join(pieces)
    return redact(base + qmark + query)
