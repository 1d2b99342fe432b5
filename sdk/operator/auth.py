"""Bearer tokens for the HTTP API and dashboard.

Tokens come from a JSON file (``--tokens FILE`` or ``TETHER_API_TOKENS_FILE``) and/or the
``TETHER_API_TOKENS`` variable, both of the form::

    {"<token>": {"name": "alice", "keys": ["approval:*"], "cancel": false}}

``name`` is the caller's identity: it is recorded as ``{"approver": name}`` in the metadata
of every event the caller pushes (and so on the run's ``run.wait_satisfied.v1`` event).
``keys`` are glob patterns (``*`` matches any characters, ``?`` one) of the event keys the
token may push to, approve or reject; none means read-only. ``cancel`` allows cancelling
runs. Every token may read runs and waits.
"""

from __future__ import annotations

import fnmatch
import hashlib
import hmac
import json
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tether.engine.subjects import check_identity

TOKENS_ENV = "TETHER_API_TOKENS"
TOKENS_FILE_ENV = "TETHER_API_TOKENS_FILE"
MIN_TOKEN_LENGTH = 16


class AuthConfigError(ValueError):
    """The token configuration cannot be used; the message says what to fix."""


@dataclass(frozen=True, slots=True)
class Identity:
    name: str
    keys: tuple[str, ...]
    can_cancel: bool

    def may_push(self, event_key: str) -> bool:
        return any(fnmatch.fnmatchcase(event_key, pattern) for pattern in self.keys)


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


class TokenAuth:
    """Maps bearer tokens to identities. Only digests of the tokens are kept."""

    def __init__(self, tokens: Mapping[str, Identity]) -> None:
        self._by_digest = {_digest(token): identity for token, identity in tokens.items()}

    def __len__(self) -> int:
        return len(self._by_digest)

    def identify(self, token: str) -> Identity | None:
        wanted = _digest(token)
        found: Identity | None = None
        for digest, identity in self._by_digest.items():  # compare all, in constant time each
            if hmac.compare_digest(digest, wanted):
                found = identity
        return found

    @classmethod
    def parse(cls, raw: Any, *, source: str) -> TokenAuth:
        if not isinstance(raw, dict):
            raise AuthConfigError(
                f'{source}: expected a JSON object {{"<token>": {{"name": ..., "keys": [...]}}}}'
            )
        tokens: dict[str, Identity] = {}
        for token, entry in raw.items():
            shown = f"{token[:4]}…" if len(token) > 4 else token
            where = f"{source}: token {shown}"
            if len(token) < MIN_TOKEN_LENGTH:
                raise AuthConfigError(
                    f"{where} is shorter than {MIN_TOKEN_LENGTH} characters; use a random one "
                    "(python -c 'import secrets; print(secrets.token_urlsafe(24))')"
                )
            if not isinstance(entry, dict):
                raise AuthConfigError(f"{where}: expected an object with name, keys, cancel")
            unknown = set(entry) - {"name", "keys", "cancel"}
            if unknown:
                raise AuthConfigError(f"{where}: unknown field(s) {sorted(unknown)}")
            name = entry.get("name")
            if not isinstance(name, str) or not name.strip():
                raise AuthConfigError(f"{where}: 'name' must be a non-empty string")
            try:  # the name becomes the subject space its decisions are pushed to
                check_identity(name.strip())
            except ValueError as exc:
                raise AuthConfigError(f"{where}: 'name': {exc}") from None
            keys = entry.get("keys", [])
            if not isinstance(keys, list) or not all(isinstance(k, str) and k for k in keys):
                raise AuthConfigError(
                    f"{where}: 'keys' must be a list of event-key patterns, e.g. ['approval:*']"
                )
            cancel = entry.get("cancel", False)
            if not isinstance(cancel, bool):
                raise AuthConfigError(f"{where}: 'cancel' must be true or false")
            tokens[token] = Identity(name.strip(), tuple(keys), cancel)
        return cls(tokens)

    def merged(self, other: TokenAuth) -> TokenAuth:
        out = TokenAuth({})
        out._by_digest = {**self._by_digest, **other._by_digest}
        return out


def load_token_auth(
    path: str | Path | None = None, *, environ: Mapping[str, str] | None = None
) -> TokenAuth:
    """Tokens from ``path`` (else ``$TETHER_API_TOKENS_FILE``) plus ``$TETHER_API_TOKENS``."""
    env = os.environ if environ is None else environ
    auth = TokenAuth({})
    file = path or env.get(TOKENS_FILE_ENV)
    if file:
        try:
            text = Path(file).read_text()
        except OSError as exc:
            raise AuthConfigError(f"cannot read API tokens file {file}: {exc}") from exc
        auth = auth.merged(TokenAuth.parse(_json(text, str(file)), source=str(file)))
    raw = env.get(TOKENS_ENV)
    if raw:
        auth = auth.merged(TokenAuth.parse(_json(raw, TOKENS_ENV), source=TOKENS_ENV))
    return auth


def _json(text: str, source: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise AuthConfigError(f"{source} is not valid JSON: {exc}") from exc


def dev_token(name: str = "dev") -> tuple[str, TokenAuth]:
    """A random all-powerful token for local use (``tether dev``, ``tether demo``)."""
    token = secrets.token_urlsafe(24)
    return token, TokenAuth({token: Identity(name, ("*",), True)})
