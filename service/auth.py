"""Bearer-key authentication shared by the HTTP routes, the WebSocket stream and the KServe routes.

A session belongs to the key that created it. The core never sees the key itself: it sees an owner id,
a fingerprint of the key (sha256, first 32 hex digits), so snapshots and logs hold no secret. With no key
configured, auth is off, every caller is owner `None`, and the service warns about it at start.
"""

from __future__ import annotations

import hashlib
import hmac

from service.errors import Unauthorized


def owner_id(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:32]


class Authenticator:
    def __init__(self, keys: frozenset[str]) -> None:
        self._keys = [(key.encode("utf-8"), owner_id(key)) for key in sorted(keys)]

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    def owner(self, authorization: str | None = None, token: str | None = None) -> str | None:
        """The owner id of an `Authorization: Bearer <key>` header (or of a bare token); 401 otherwise."""
        if not self._keys:
            return None
        key = token
        if authorization is not None:
            scheme, _, credentials = authorization.partition(" ")
            if scheme.lower() != "bearer" or not credentials.strip():
                raise _unauthorized("the Authorization header must be `Bearer <key>`")
            key = credentials.strip()
        if not key:
            raise _unauthorized("an API key is required: send `Authorization: Bearer <key>`")
        given = key.encode("utf-8")
        found: str | None = None
        for candidate, owner in self._keys:  # compare with every key, constant time each
            if hmac.compare_digest(given, candidate):
                found = owner
        if found is None:
            raise _unauthorized("the API key is not valid")
        return found


def _unauthorized(message: str) -> Unauthorized:
    error = Unauthorized(message)
    error.headers["WWW-Authenticate"] = "Bearer"
    return error
