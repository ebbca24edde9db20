"""Request affinity for the httpx transports: hash keys and sticky sessions.

Two ways to send related requests to the same endpoint:

* **Hash keys** (``hash_key=``): a function of the request whose value is the
  pick key of the consistent-hashing strategies (``ring_hash``, ``maglev``).
  Requests with the same key go to the same endpoint while the endpoint set
  is stable, and removing one of N endpoints moves only ~1/N of the keys.
  Helpers: :func:`hash_by_header`, :func:`hash_by_cookie` and
  :func:`hash_by_client_ip` (nginx's ``ip_hash``, from ``X-Forwarded-For``).
  Other strategies ignore the key.
* **Sticky sessions** (:class:`CookieAffinity`, :class:`HeaderAffinity`), as
  Envoy's stateful sessions: the first response carries an opaque token that
  names the endpoint which served it; later requests carrying the token go to
  that endpoint while it may take traffic (``lb.pick(prefer=...)``), and to
  the strategy's choice — with a new token in the response — once it is gone,
  ejected or unhealthy. Works with every strategy.

Tokens never reveal an internal address: a token is the first 96 bits of
HMAC-SHA256(secret, "host:port"), base64url-encoded (16 characters). The
secret is random per balancer unless ``secret=`` is given — give the same one
to every process that must honour the others' tokens (several workers behind
one front end).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import threading
import weakref
from collections.abc import Callable, Iterable

import httpx

from .._core.balancer import LoadBalancer
from .._core.errors import ConfigError, strict_arguments
from .._strategies import Key

__all__ = ["Affinity", "CookieAffinity", "HashKey", "HeaderAffinity", "hash_by_client_ip",
           "hash_by_cookie", "hash_by_header"]

HashKey = Callable[[httpx.Request], "Key | None"]


def _check_name(name: object, what: str) -> str:
    if not isinstance(name, str) or not name or any(c in name for c in " \t\r\n;,=\"'"):
        raise ConfigError(f"{what} must be a non-empty token without spaces, ';', ',' or "
                          f"'=', got {name!r}", field=what)
    return name


def hash_by_header(name: str) -> HashKey:
    """Hash on the value of request header ``name`` (no header: no key, plain pick)."""
    header = _check_name(name, "header")

    def key(request: httpx.Request) -> Key | None:
        value: str | None = request.headers.get(header)
        return value

    key.__qualname__ = f"hash_by_header({header!r})"
    return key


def _cookie(request: httpx.Request, name: str) -> str | None:
    raw: str | None = request.headers.get("cookie")
    if not raw:
        return None
    for part in raw.split(";"):
        k, sep, v = part.strip().partition("=")
        if sep and k == name:
            return v.strip('"')
    return None


def hash_by_cookie(name: str) -> HashKey:
    """Hash on the value of the request cookie ``name``."""
    cookie = _check_name(name, "cookie")

    def key(request: httpx.Request) -> Key | None:
        return _cookie(request, cookie)

    key.__qualname__ = f"hash_by_cookie({cookie!r})"
    return key


def hash_by_client_ip(header: str = "X-Forwarded-For") -> HashKey:
    """"IP hash": hash on the original client address named by ``header``.

    For ``X-Forwarded-For`` (``client, proxy1, proxy2``) that is the first
    address; for single-value headers such as ``X-Real-IP`` the value.
    """
    name = _check_name(header, "header")

    def key(request: httpx.Request) -> Key | None:
        value: str | None = request.headers.get(name)
        if not value:
            return None
        return value.split(",", 1)[0].strip() or None

    key.__qualname__ = f"hash_by_client_ip({name!r})"
    return key


class Affinity:
    """Sticky sessions: where a request's token is read and a response's is written."""

    name: str
    secret: bytes | None

    def token_of(self, request: httpx.Request) -> str | None:  # pragma: no cover - abstract
        raise NotImplementedError

    def set_token(self, headers: list[tuple[bytes, bytes]], token: str,
                  https: bool) -> None:  # pragma: no cover - abstract
        raise NotImplementedError


def _check_secret(secret: object) -> bytes | None:
    if secret is None:
        return None
    if isinstance(secret, str):
        secret = secret.encode()
    if not isinstance(secret, bytes) or len(secret) < 16:
        raise ConfigError("secret must be at least 16 bytes (bytes or str), got "
                          f"{len(secret) if isinstance(secret, bytes) else type(secret).__name__}",
                          field="secret")
    return secret


@strict_arguments
class CookieAffinity(Affinity):
    """Sticky sessions through a cookie set on the first response.

    ::

        transport = clientlb.HTTPTransport(lb, affinity=clientlb.CookieAffinity())
        with httpx.Client(transport=transport) as client:  # the jar keeps the cookie
            client.get("http://users/login")                # Set-Cookie: clientlb-affinity=…
            client.get("http://users/profile")              # same endpoint

    An application that relays responses to its own users (a gateway) relays
    the ``Set-Cookie`` too, and the users' ``Cookie`` header with their later
    requests. Defaults: ``Path=/``, ``HttpOnly``, ``SameSite=Lax``, ``Secure``
    on https, a session cookie (no ``Max-Age``) — the session ends with the
    client, as Envoy's cookie-based stateful session without a TTL.
    """

    def __init__(self, name: str = "clientlb-affinity", *, secret: bytes | str | None = None,
                 max_age: int | None = None, path: str = "/", http_only: bool = True,
                 same_site: str | None = "Lax", secure: bool | None = None) -> None:
        self.name = _check_name(name, "name")
        self.secret = _check_secret(secret)
        if max_age is not None and (isinstance(max_age, bool) or not isinstance(max_age, int)
                                    or max_age < 0):
            raise ConfigError(f"max_age must be an integer >= 0 seconds or None, got "
                              f"{max_age!r}", field="max_age")
        if not isinstance(path, str) or not path.startswith("/") or ";" in path:
            raise ConfigError(f"path must start with '/' and hold no ';', got {path!r}",
                              field="path")
        if same_site is not None and same_site not in ("Lax", "Strict", "None"):
            raise ConfigError(f"same_site must be 'Lax', 'Strict', 'None' or None, got "
                              f"{same_site!r}", field="same_site")
        attrs = [f"Path={path}"]
        if max_age is not None:
            attrs.append(f"Max-Age={max_age}")
        if http_only:
            attrs.append("HttpOnly")
        if same_site:
            attrs.append(f"SameSite={same_site}")
        self._attrs = "; ".join(attrs)
        self._secure = secure

    def token_of(self, request: httpx.Request) -> str | None:
        return _cookie(request, self.name)

    def set_token(self, headers: list[tuple[bytes, bytes]], token: str, https: bool) -> None:
        secure = https if self._secure is None else self._secure
        value = f"{self.name}={token}; {self._attrs}" + ("; Secure" if secure else "")
        headers.append((b"Set-Cookie", value.encode("ascii")))

    def __repr__(self) -> str:
        return f"CookieAffinity({self.name!r})"


@strict_arguments
class HeaderAffinity(Affinity):
    """Sticky sessions through a header: the response carries ``name: token``.

    The caller sends the same header with later requests of the session
    (``client.headers[name] = response.headers[name]``), as with a session id
    an API hands out.
    """

    def __init__(self, name: str = "X-Clientlb-Affinity", *,
                 secret: bytes | str | None = None) -> None:
        self.name = _check_name(name, "name")
        self.secret = _check_secret(secret)
        self._raw = self.name.encode("ascii")

    def token_of(self, request: httpx.Request) -> str | None:
        value: str | None = request.headers.get(self.name)
        return value

    def set_token(self, headers: list[tuple[bytes, bytes]], token: str, https: bool) -> None:
        headers.append((self._raw, token.encode("ascii")))

    def __repr__(self) -> str:
        return f"HeaderAffinity({self.name!r})"


_SECRETS: weakref.WeakKeyDictionary[LoadBalancer, bytes] = weakref.WeakKeyDictionary()
_SECRETS_LOCK = threading.Lock()


def balancer_secret(lb: LoadBalancer) -> bytes:
    """The random affinity secret of a balancer (one per balancer, made on first use)."""
    with _SECRETS_LOCK:
        secret = _SECRETS.get(lb)
        if secret is None:
            secret = _SECRETS[lb] = secrets.token_bytes(32)
        return secret


class TokenMap:
    """Tokens of the current endpoints, both ways (token → address for requests)."""

    __slots__ = ("_by_address", "_by_token", "_lock", "_secret")

    def __init__(self, secret: bytes, addresses: Iterable[str] = ()) -> None:
        self._secret = secret
        self._by_address: dict[str, str] = {}
        self._by_token: dict[str, str] = {}
        self._lock = threading.Lock()
        self.update(addresses, ())

    def token(self, address: str) -> str:
        """The token of ``address`` (computed once)."""
        token = self._by_address.get(address)
        if token is None:
            digest = hmac.new(self._secret, address.encode(), hashlib.sha256).digest()
            token = base64.urlsafe_b64encode(digest[:12]).decode("ascii")
            with self._lock:
                self._by_address[address] = token
                self._by_token[token] = address
        return token

    def address(self, token: str) -> str | None:
        """The address a token names, when that endpoint is known."""
        return self._by_token.get(token)

    def update(self, added: Iterable[str], removed: Iterable[str]) -> None:
        for address in added:
            self.token(address)
        with self._lock:
            for address in removed:
                token = self._by_address.pop(address, None)
                if token is not None:
                    self._by_token.pop(token, None)
