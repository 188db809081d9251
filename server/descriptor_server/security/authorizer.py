"""The servicer's ``authorizer``: static tokens, registry tokens, mTLS identity, and the audit trail.

Precedence, for a call carrying ``authorization: Bearer <token>``:

1. a token whose SHA-256 is one of ``auth.tokens`` / ``auth.tokensfile`` is that
   static token (``read`` or ``write`` on the whole service), compared in constant
   time against every entry;
2. otherwise, when ``auth.token`` is configured, it is verified as a registry token
   (:mod:`.registrytokens`) and must grant the call's action in the call's repository;
3. otherwise it is UNAUTHENTICATED.

Mutual TLS stays a transport control: the handshake admits or refuses the client
before any call; the certificate's subject is the principal of the audit line when no
token auth is configured (and is logged beside the token's principal when it is).
With neither static nor registry tokens configured, every call is allowed.

What each RPC needs of a registry token comes from the one RPC table
(``descriptor_client.rpcs``): Stat and BatchStat ``pull``, SetDescriptor ``push``,
Clear ``delete``, in ``repository:<R>``; a call in the global scope (empty
repository), and GetMetrics (``pull``), need the action on the configured
``auth.token.globalaccess`` resource (default ``registry:descriptors``).

Audit: every refusal, and every SetDescriptor and Clear whatever its outcome, is one
line on the ``descriptor_server.audit`` logger (with ``extra=`` fields for the JSON
formatter): principal, principal_kind, peer, method, digest, repository, outcome,
reason.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import grpc
from descriptor_client.errors import PermissionDeniedError, UnauthenticatedError
from descriptor_client.rpcs import RPCS

from ..config import TokenAuthConfig
from ..core import loggers
from ..rpc.context import invocation_metadata, set_audited, set_principal, take_audited
from .keys import TrustStore
from .registrytokens import RegistryTokenVerifier, TokenInvalid
from .static import TokenAuthorizer, bearer_token, check_scope

audit_log = logging.getLogger(loggers.AUDIT)

#: Methods whose every call is audited (whatever the outcome).
AUDITED = frozenset(name for name, rpc in RPCS.items() if rpc.access == "write")

#: Longest repository or digest echoed into a message or log line.
MAX_ECHO = 300

if TYPE_CHECKING:
    from ..rpc.servicer import Observer


def _clip(value: str) -> str:
    return value if len(value) <= MAX_ECHO else value[:MAX_ECHO] + "..."


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


@dataclass(frozen=True, slots=True)
class Principal:
    """Who made an allowed call, and what allowed it."""

    name: str
    kind: str  # static-token, registry-token, certificate, anonymous
    reason: str


@dataclass(slots=True)
class _Call:
    context: Any
    principal: Principal


def _certificate_subject(context: Any) -> str:
    try:
        auth = context.auth_context() or {}
    except Exception:  # an auth context is best effort: never fail a call over it
        return ""
    for key in ("x509_subject", "x509_common_name"):
        values = auth.get(key)
        if values:
            first = values[0]
            return first.decode("utf-8", "replace") if isinstance(first, bytes) else str(first)
    return ""


def _peer(context: Any) -> str:
    try:
        return str(context.peer())
    except Exception:
        return ""


class Authorizer:
    """Static tokens and registry tokens in front of every RPC, plus the audit log."""

    def __init__(
        self,
        static: TokenAuthorizer | None = None,
        registry: RegistryTokenVerifier | None = None,
        token_config: TokenAuthConfig | None = None,
        *,
        logger: logging.Logger = audit_log,
    ) -> None:
        self.static = static
        self.registry = registry
        self.config = token_config
        self.logger = logger
        #: False: no token of any kind configured, every call is allowed (and audited).
        self.enabled = static is not None or registry is not None
        access = token_config.globalaccess if token_config is not None else None
        self.global_resource = (access.type, access.name) if access is not None else ("registry", "descriptors")
        #: method -> (action, whether the request's repository names the resource)
        self._needs = {name: (rpc.action or "pull", rpc.action is not None) for name, rpc in RPCS.items()}

    def describe(self) -> str:
        parts = []
        if self.static is not None:
            parts.append(f"bearer tokens on ({len(self.static)} configured)")
        if self.registry is not None and self.config is not None:
            keys = self.registry.trust.keys
            parts.append(
                f"registry tokens on (issuer {self.config.issuer!r}, service {self.config.service!r}, "
                f"{len(keys.roots)} root certificates, {len(keys.trusted)} trusted key IDs)"
            )
        return ", ".join(parts) if parts else "bearer tokens off"

    def reload(self) -> None:
        """Re-read the static tokens file, the root bundle and the JWKS (SIGHUP)."""
        if self.static is not None:
            self.static.reload("SIGHUP")
        if self.registry is None:
            log = logging.getLogger(loggers.AUTH)
            log.info("SIGHUP: no registry token keys to reload")
            return
        self.registry.trust.reload("SIGHUP")

    # -- the hook ------------------------------------------------------------------------

    def scope_of(self, method: str, request: Any) -> tuple[str, str, str]:
        """(resource type, resource name, action) a registry token must grant for this call."""
        need = self._needs.get(method)
        if need is None:  # an RPC without a rule: the strictest grant (deny by default)
            action, repository = "push", getattr(request, "repository", "")
        else:  # GetMetrics names no repository: the global resource, read-only
            action, repository = need[0], request.repository if need[1] else ""
        if repository:
            return ("repository", repository, action)
        return (*self.global_resource, action)

    def needed(self, method: str) -> bool:
        """Whether calls of ``method`` need this authorizer called (the servicer skips the
        call where not): with no token configured, only the audited methods do."""
        return self.enabled or method in AUDITED

    def __call__(self, method: str, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        if not self.enabled:
            if method in AUDITED:
                subject = _certificate_subject(context)
                who = Principal(subject or "anonymous", "certificate" if subject else "anonymous", "auth off")
                set_audited(_Call(context, who))
            return
        metadata = invocation_metadata(context, method)
        registry = self.registry
        if registry is not None and method not in AUDITED:
            # The hot path: a registry token verified before, still valid, granting the call.
            for key, value in metadata or ():
                if key == "authorization":
                    if isinstance(value, str) and value.startswith("Bearer "):
                        grant = registry.peek(value[7:])
                        if grant is not None and grant.allows(*self.scope_of(method, request)):
                            set_principal(grant.subject)
                            return
                    break
        token = bearer_token(metadata)
        try:
            principal = self._authorize(method, request, token)
        except (UnauthenticatedError, PermissionDeniedError) as err:
            known = err.metadata
            caller: Principal | None = None
            if "subject" in known:
                caller = Principal(known["subject"], "registry-token", "")
            elif "token" in known:
                caller = Principal(known["token"], "static-token", "")
            self._audit(method, request, context, caller, outcome=err.code.name, reason=err.message)
            raise
        set_principal(principal.name)
        if method in AUDITED:
            set_audited(_Call(context, principal))

    async def authenticate(self, method: str, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        """Refuse, from the call's metadata alone, a call with no acceptable token.

        The servicer calls it when a call starts, before reading its request: a call
        that sends no token, or one that is neither a configured static token nor a
        valid registry token, is refused UNAUTHENTICATED at once, whatever (and
        whether) it sends next. What a good token is allowed to do is checked later,
        against the request (:meth:`__call__`). A registry-token refusal names the
        scope the call needs in its challenge, which takes the request: it waits for
        it at most :data:`CHALLENGE_WAIT` seconds, and challenges without a scope when
        it has not come.
        """
        if not self.enabled:
            return
        token = bearer_token(invocation_metadata(context, method))
        why, error = "missing bearer token (send authorization: Bearer <token>)", ""
        if token is not None:
            if self.static is not None and self.static.match(token) is not None:
                return
            if self.registry is None:
                why = "unknown bearer token"
            else:
                try:
                    self.registry.verify(token)
                    return
                except TokenInvalid as err:
                    why, error = f"invalid bearer token: {err}", "invalid_token"
        request: Any = None
        if self.registry is not None:
            request = await _early_request(method, context)
            refusal = self._challenge(method, request, why, error)
        else:
            refusal = UnauthenticatedError(why)
        self._audit(method, request, context, None, outcome=refusal.code.name, reason=refusal.message)
        raise refusal

    def _authorize(self, method: str, request: Any, token: str | None) -> Principal:
        if token is None:
            if self.registry is None:
                raise UnauthenticatedError("missing bearer token (send authorization: Bearer <token>)")
            raise self._challenge(method, request, "missing bearer token (send authorization: Bearer <token>)", "")
        if self.static is not None:
            entry = self.static.match(token)
            if entry is not None:
                return self._static(method, entry)
        if self.registry is None:
            raise UnauthenticatedError("unknown bearer token")
        try:
            grant = self.registry.verify(token)
        except TokenInvalid as err:
            raise self._challenge(method, request, f"invalid bearer token: {err}", "invalid_token") from None
        kind, name, action = self.scope_of(method, request)
        if not grant.allows(kind, name, action):
            scope = f"{kind}:{_clip(name)}:{action}"
            hint = self._hint(scope, "insufficient_scope")
            raise PermissionDeniedError(
                f"token of {grant.subject!r} does not grant {scope} ({method} needs it); {hint}",
                metadata={"scope": scope, "needs": scope, "subject": grant.subject, "www-authenticate": hint},
            )
        return Principal(grant.subject, "registry-token", f"granted {kind}:{_clip(name)}:{action}")

    def _static(self, method: str, entry: Any) -> Principal:
        check_scope(entry, method)
        return Principal(entry.name, "static-token", f"static token scope {entry.scope}")

    def _hint(self, scope: str, error: str) -> str:
        config = self.config
        realm = config.realm if config is not None else ""
        service = config.service if config is not None else ""
        hint = f"Bearer realm={_quote(realm)},service={_quote(service)}"
        if scope:
            hint += f",scope={_quote(scope)}"
        return f"{hint},error={_quote(error)}" if error else hint

    def _challenge(self, method: str, request: Any, why: str, error: str) -> UnauthenticatedError:
        """The refusal with distribution's challenge; without a scope when there is no
        request to name it (a call refused before its request came)."""
        scope = ""
        if request is not None or not self._needs.get(method, ("", True))[1]:
            kind, name, action = self.scope_of(method, request)
            scope = f"{kind}:{_clip(name)}:{action}"
        hint = self._hint(scope, error)
        config = self.config
        metadata = {
            "www-authenticate": hint,
            "realm": config.realm if config is not None else "",
            "service": config.service if config is not None else "",
        }
        if scope:
            metadata["scope"] = scope
        return UnauthenticatedError(f"{why}; {hint}", metadata=metadata)

    # -- audit -------------------------------------------------------------------------

    def observe(self, method: str, code: grpc.StatusCode, seconds: float, request: Any) -> None:
        """The audit half of the servicer's observer: one line per SetDescriptor and Clear."""
        if method not in AUDITED:
            return
        call: _Call | None = take_audited()
        if call is None:
            if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
                return  # refused by the authorizer: already logged, with its reason
            self._audit(method, request, None, None, outcome=code.name, reason="refused before authorization")
            return
        reason = call.principal.reason if code == grpc.StatusCode.OK else f"{call.principal.reason}; call failed"
        self._audit(method, request, call.context, call.principal, outcome=code.name, reason=reason)

    def _audit(
        self, method: str, request: Any, context: Any, principal: Principal | None, *, outcome: str, reason: str
    ) -> None:
        logger = self.logger
        if not logger.isEnabledFor(logging.INFO):
            return
        certificate = _certificate_subject(context) if context is not None else ""
        if principal is None:
            principal = Principal(certificate or "unknown", "certificate" if certificate else "unknown", "")
        fields: dict[str, Any] = {
            "principal": principal.name,
            "principal_kind": principal.kind,
            "peer": _peer(context) if context is not None else "",
            "method": method,
            "digest": _clip(str(getattr(request, "digest", "") or "")),
            "repository": _clip(str(getattr(request, "repository", "") or "")),
            "outcome": outcome,
            "reason": reason,
        }
        if method == "BatchStat" and request is not None:
            fields["digests"] = len(request.digests)
        if certificate and principal.kind != "certificate":
            fields["certificate"] = certificate
        text = " ".join(f"{k}={json.dumps(v)}" if isinstance(v, str) else f"{k}={v}" for k, v in fields.items())
        logger.info("audit %s", text, extra=fields)


#: Seconds a call refused from its metadata waits for its request, to name the scope
#: in its challenge (a client sends headers and request together; a call that sends
#: none is refused without a scope).
CHALLENGE_WAIT = 0.2


async def _early_request(method: str, context: Any) -> Any:
    """The call's request if it arrives within :data:`CHALLENGE_WAIT`, else None."""
    from ..rpc.servicer import read_request

    rpc = RPCS.get(method)
    if rpc is None:
        return None
    try:
        return rpc.request.FromString(await read_request(context, CHALLENGE_WAIT))
    except Exception:  # no request in time, or not one: the challenge goes without a scope
        return None


def audited(observer: Observer | None, authorizer: Authorizer) -> Observer:
    """``observer`` followed by the authorizer's audit (the servicer's ``observer`` hook)."""

    def observe(method: str, code: grpc.StatusCode, seconds: float, request: Any, *, context: Any, reason: str) -> None:
        if observer is not None:
            observer(method, code, seconds, request, context=context, reason=reason)
        authorizer.observe(method, code, seconds, request)

    return observe


def build(static: TokenAuthorizer | None, config: TokenAuthConfig | None) -> Authorizer:
    """The authorizer for the static tokens (or None) and ``auth.token`` (or None)."""
    registry = None
    if config is not None:
        trust = TrustStore(config.rootcertbundle, config.jwks, reloadinterval=config.reloadinterval)
        registry = RegistryTokenVerifier(
            issuer=config.issuer,
            service=config.service,
            trust=trust,
            algorithms=config.signingalgorithms,
            cachesize=config.cachesize,
        )
    return Authorizer(static, registry, config)


__all__: Sequence[str] = ["AUDITED", "Authorizer", "Principal", "audit_log", "audited", "build"]
