"""The ``registry`` backend: any OCI distribution registry, over its HTTP API.

- repository Stat is ``HEAD /v2/<name>/blobs/<digest>``: size from ``Content-Length``,
  media type from ``Content-Type`` (``application/octet-stream`` when absent or not a
  media type), canonical digest from ``Docker-Content-Digest``; 404 is BLOB_UNKNOWN.
- repository Clear is ``DELETE`` on the same path (202 is OK, 404 BLOB_UNKNOWN, 405
  -- deletion disabled at the registry -- UNSUPPORTED).
- the global scope has no HTTP equivalent: Stat and Clear are UNSUPPORTED there.

Authentication: HTTP basic with ``username``/``password``, and the bearer-token
challenge flow (``WWW-Authenticate: Bearer realm=...,service=...,scope=...``): the
token is fetched from the realm (with basic credentials when configured), cached per
repository and method until it expires, and the request retried once. A token's
lifetime is ``issued_at`` + ``expires_in`` as distribution's token server sends them
(``expires_in`` at least 60 s, its default when absent; never longer than
``expires_in`` from now, whatever the clocks say); at most ``maxtokens`` are kept
(least recently used dropped first) and expired ones are swept, so memory follows the
configuration, not the number of repositories asked about. Connection
failures, timeouts, 5xx, 429 and refused credentials are BACKEND_UNAVAILABLE.
"""

from __future__ import annotations

import base64
import datetime
import logging
import re
import ssl
import time
from collections import OrderedDict
from dataclasses import dataclass

import httpx
from descriptor_client.descriptor import OCTET_STREAM, Descriptor, validate_media_type
from descriptor_client.digest import is_valid_digest, validate_digest, validate_repository
from descriptor_client.errors import (
    BackendUnavailableError,
    BlobUnknownError,
    DescriptorError,
    UnsupportedError,
)

from ..config import ConfigError, RegistryBackendConfig
from ..core import loggers
from ..core.logutil import RateLimitedLog

log = logging.getLogger(loggers.REGISTRY)

#: A token without ``expires_in`` is valid for 60 s, and none for less (the distribution token spec).
DEFAULT_TOKEN_LIFETIME = 60.0
#: Refresh a token this many seconds before it expires.
TOKEN_MARGIN = 5.0
#: Bearer tokens kept (one per repository and verb), least recently used dropped first.
DEFAULT_MAX_TOKENS = 1000
#: How often expired tokens are swept (besides the count bound).
TOKEN_SWEEP_INTERVAL = 30.0
_SCHEME = re.compile(r"[\s,]*([A-Za-z][A-Za-z0-9!#$%&'*+.^_`|~-]*)")
_PARAM = re.compile(r'[\s,]*([A-Za-z][A-Za-z0-9_-]*)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]*))')


@dataclass(frozen=True)
class Challenge:
    """One ``WWW-Authenticate`` challenge: the scheme (lower case) and its parameters."""

    scheme: str
    params: dict[str, str]


def parse_challenges(header: str) -> list[Challenge]:
    """The challenges of a ``WWW-Authenticate`` header (RFC 7235 auth-params)."""
    out: list[Challenge] = []
    pos = 0
    while (m := _SCHEME.match(header, pos)) is not None:
        scheme, pos = m.group(1).lower(), m.end()
        params: dict[str, str] = {}
        while (p := _PARAM.match(header, pos)) is not None:
            value = p.group(2) if p.group(2) is not None else p.group(3)
            params[p.group(1).lower()] = re.sub(r"\\(.)", r"\1", value)
            pos = p.end()
        out.append(Challenge(scheme, params))
    return out


def token_lifetime(expires_in: object, issued_at: object, now: float | None = None) -> float:
    """Seconds a token stays valid from ``now`` (wall clock), as distribution reads it.

    ``expires_in`` below 60 s (or absent, or not a number) counts as 60 s; ``issued_at``
    (RFC 3339), when given, moves the end earlier for a token issued in the past, never
    later than ``expires_in`` from now (a token server whose clock runs ahead).
    """
    try:
        seconds = float(expires_in) if isinstance(expires_in, int | float | str) else 0.0
    except ValueError:
        seconds = 0.0
    if not seconds >= DEFAULT_TOKEN_LIFETIME:  # also NaN
        seconds = DEFAULT_TOKEN_LIFETIME
    seconds = min(seconds, 366 * 86400.0)
    if isinstance(issued_at, str) and issued_at:
        try:
            issued = datetime.datetime.fromisoformat(issued_at.replace("Z", "+00:00"))
        except ValueError:
            return seconds
        if issued.tzinfo is None:
            issued = issued.replace(tzinfo=datetime.UTC)
        wall = time.time() if now is None else now
        return min(seconds, issued.timestamp() + seconds - wall)
    return seconds


class RegistryBackend:
    """Blob descriptors from a distribution-spec registry's HTTP API."""

    def __init__(
        self,
        url: str,
        *,
        username: str = "",
        password: str = "",
        timeout: float = 10.0,
        verify: ssl.SSLContext | bool = True,
        transport: httpx.AsyncBaseTransport | None = None,
        max_tokens: int = DEFAULT_MAX_TOKENS,
    ) -> None:
        self.url = url.rstrip("/")
        self.username = username
        self.password = password
        self.timeout = timeout
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout),
            verify=verify,
            follow_redirects=True,
            limits=httpx.Limits(max_connections=100, max_keepalive_connections=20),
            headers={"User-Agent": "descriptor-server", "Accept": "*/*"},
            transport=transport,
        )
        self.max_tokens = max_tokens
        # (repository, method) -> (token, monotonic expiry), in least-recently-used order.
        self._tokens: OrderedDict[tuple[str, str], tuple[str, float]] = OrderedDict()
        self._next_sweep = time.monotonic() + TOKEN_SWEEP_INTERVAL
        self._log = RateLimitedLog(log)

    # -- auth ------------------------------------------------------------------------

    def _basic(self) -> str | None:
        if not self.username and not self.password:
            return None
        raw = f"{self.username}:{self.password}".encode()
        return "Basic " + base64.b64encode(raw).decode("ascii")

    @property
    def tokens_held(self) -> int:
        """How many bearer tokens are kept now (bounded by ``max_tokens``)."""
        return len(self._tokens)

    def _authorization(self, key: tuple[str, str]) -> str | None:
        cached = self._tokens.get(key)
        if cached is not None:
            if cached[1] > time.monotonic():
                self._tokens.move_to_end(key)
                return f"Bearer {cached[0]}"
            del self._tokens[key]
        return self._basic()

    def _keep_token(self, key: tuple[str, str], token: str, lifetime: float) -> None:
        """Keep a token for ``lifetime`` seconds (minus the margin), within ``max_tokens``."""
        now = time.monotonic()
        tokens = self._tokens
        if now >= self._next_sweep:
            self._next_sweep = now + TOKEN_SWEEP_INTERVAL
            for stale in [k for k, (_, expiry) in tokens.items() if expiry <= now]:
                del tokens[stale]
        tokens.pop(key, None)
        if lifetime - TOKEN_MARGIN <= 0 or self.max_tokens <= 0:
            return  # used for this request only
        tokens[key] = (token, now + lifetime - TOKEN_MARGIN)
        while len(tokens) > self.max_tokens:
            tokens.popitem(last=False)

    async def _fetch_token(self, challenge: Challenge, key: tuple[str, str]) -> str:
        realm = challenge.params.get("realm", "")
        if not realm.startswith(("http://", "https://")):
            raise BackendUnavailableError(f"registry sent a bearer challenge without a usable realm: {realm!r}")
        query = {k: v for k, v in challenge.params.items() if k in ("service", "scope") and v}
        headers = {}
        basic = self._basic()
        if basic is not None:
            headers["Authorization"] = basic
        resp = await self._client.get(realm, params=query, headers=headers)
        if resp.status_code != 200:
            raise BackendUnavailableError(f"token server {realm} answered {resp.status_code}")
        try:
            body = resp.json()
            token = body.get("token") or body.get("access_token")
        except (ValueError, AttributeError):
            raise BackendUnavailableError(f"token server {realm} sent no token") from None
        if not isinstance(token, str) or not token:
            raise BackendUnavailableError(f"token server {realm} sent no token")
        self._keep_token(key, token, token_lifetime(body.get("expires_in"), body.get("issued_at")))
        return token

    async def _request(self, method: str, repository: str, digest: str) -> httpx.Response:
        url = f"{self.url}/v2/{repository}/blobs/{digest}"
        key = (repository, method)
        try:
            auth = self._authorization(key)
            resp = await self._client.request(method, url, headers={"Authorization": auth} if auth else None)
            if resp.status_code == 401:
                # A token challenge (first call, or the cached token expired or was
                # revoked): fetch a token for the scope asked, and retry once.
                self._tokens.pop(key, None)
                challenges = parse_challenges(resp.headers.get("WWW-Authenticate", ""))
                bearer = next((c for c in challenges if c.scheme == "bearer"), None)
                if bearer is None:
                    raise BackendUnavailableError(f"registry refused the credentials ({method} {url}: 401)")
                token = await self._fetch_token(bearer, key)
                resp = await self._client.request(method, url, headers={"Authorization": f"Bearer {token}"})
                if resp.status_code == 401:
                    self._tokens.pop(key, None)
                    raise BackendUnavailableError(f"registry refused the bearer token ({method} {url}: 401)")
            return resp
        except BackendUnavailableError as err:
            self._log.warning("registry backend: %s", err.message)
            raise
        except httpx.TimeoutException:
            msg = f"registry timed out after {self.timeout:g}s ({method} {url})"
            self._log.warning("registry backend: %s", msg)
            raise BackendUnavailableError(msg) from None
        except httpx.HTTPError as err:
            msg = f"registry unreachable ({method} {url}): {err}"
            self._log.warning("registry backend: %s", msg)
            raise BackendUnavailableError(msg) from None

    def _failure(self, resp: httpx.Response) -> DescriptorError:
        method, url = resp.request.method, resp.request.url
        self._log.warning("registry answered %d to %s %s", resp.status_code, method, url)
        return BackendUnavailableError(f"registry answered {resp.status_code} to {method} {url}")

    # -- protocol ----------------------------------------------------------------------

    @staticmethod
    def _check(digest: str, repository: str) -> None:
        """Validate, then refuse the global scope, which the HTTP API does not have."""
        validate_digest(digest)
        validate_repository(repository)
        if not repository:
            raise UnsupportedError("the registry backend has no global scope (its HTTP API is per repository)")

    async def stat(self, digest: str, repository: str = "") -> Descriptor:
        self._check(digest, repository)
        resp = await self._request("HEAD", repository, digest)
        if resp.status_code == 404:
            raise BlobUnknownError.of(digest, repository)
        if resp.status_code != 200:
            raise self._failure(resp)
        try:
            size = int(resp.headers.get("Content-Length", ""))
        except ValueError:
            size = -1
        if size < 0:
            raise BackendUnavailableError(f"registry sent no Content-Length for {digest} in {repository}")
        canonical = resp.headers.get("Docker-Content-Digest", "").strip() or digest
        if not is_valid_digest(canonical):
            raise BackendUnavailableError(f"registry sent an invalid Docker-Content-Digest {canonical[:80]!r}")
        media_type = resp.headers.get("Content-Type", "").strip() or OCTET_STREAM
        try:
            validate_media_type(media_type)
        except DescriptorError:
            media_type = OCTET_STREAM
        return Descriptor(media_type, canonical, size)

    async def set_descriptor(self, digest: str, descriptor: Descriptor, repository: str = "") -> None:
        raise UnsupportedError("the registry backend is written by the registry, not by this service")

    async def clear(self, digest: str, repository: str = "") -> None:
        self._check(digest, repository)
        resp = await self._request("DELETE", repository, digest)
        if resp.status_code in (200, 202, 204):
            return
        if resp.status_code == 404:
            raise BlobUnknownError.of(digest, repository)
        if resp.status_code == 405:
            raise UnsupportedError("the registry refuses deletion (storage.delete.enabled is off at the registry)")
        raise self._failure(resp)

    def supports_clear(self, repository: str) -> bool:
        return bool(repository)

    async def probe(self) -> None:
        """Health: ``GET /v2/`` answers 200, or 401 (the registry is up and wants auth)."""
        url = f"{self.url}/v2/"
        try:
            resp = await self._client.get(url)
        except httpx.HTTPError as err:
            raise BackendUnavailableError(f"registry unreachable (GET {url}): {err or type(err).__name__}") from None
        if resp.status_code not in (200, 401):
            raise BackendUnavailableError(f"registry answered {resp.status_code} to GET {url}")

    async def close(self) -> None:
        await self._client.aclose()


def ssl_context(insecureskipverify: bool, rootcas: list[str]) -> ssl.SSLContext | bool:
    """The TLS verification for ``insecureskipverify`` and extra ``rootcas`` PEM files."""
    if insecureskipverify:
        return False
    if not rootcas:
        return True
    ctx = ssl.create_default_context()
    for path in rootcas:
        ctx.load_verify_locations(cafile=path)
    return ctx


def from_config(section: RegistryBackendConfig) -> RegistryBackend:
    """The backend for ``storage.registry``."""
    url = section.url.rstrip("/")
    try:
        parsed = httpx.URL(url) if "://" in url else None
    except httpx.InvalidURL:
        parsed = None
    if parsed is None or parsed.scheme not in ("http", "https") or not parsed.host:
        raise ConfigError("storage.registry.url", f"want an http:// or https:// URL, got {section.url!r}")
    if section.timeout <= 0:
        raise ConfigError("storage.registry.timeout", "must be > 0")
    if section.maxtokens < 0:
        raise ConfigError("storage.registry.maxtokens", "must be >= 0 (0 = keep no token)")
    try:
        verify = ssl_context(section.insecureskipverify, section.rootcas)
    except (OSError, ssl.SSLError) as err:
        raise ConfigError("storage.registry.rootcas", f"cannot load CA file: {err}") from None
    return RegistryBackend(
        url,
        username=section.username,
        password=section.password,
        timeout=section.timeout,
        verify=verify,
        max_tokens=section.maxtokens,
    )
