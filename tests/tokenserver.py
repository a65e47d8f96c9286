"""A docker distribution token server on loopback, so Bearer auth is tested against the real registry's
token checks (signature, x5c chain, issuer, audience, times, access) rather than a stand-in.

It issues RS256 JWTs signed with a certificate from tests/pki.py, carried in the token's x5c header; the
registry trusts that certificate as its rootcertbundle. Tokens are given for Basic credentials (the spec's
GET) or an OAuth2 refresh token (POST grant_type=refresh_token, what docker does with an identity token);
anything else is 401. Tokens grant pull on the repositories asked, nothing more."""

from __future__ import annotations

import base64
import json
import secrets
import time
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path

from tests import pki
from tests.loopback import LoopbackServer, running

SERVICE = "imgscan-test-registry"
ISSUER = "imgscan-test-issuer"


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass
class TokenServer:
    """users: Basic user -> password; refresh_tokens: identity tokens it takes on POST. seen: one
    (method, how the client authenticated, granted) per request; issued: every token handed out."""

    cert: Path
    key: Path
    users: dict[str, str]
    refresh_tokens: set[str]
    realm: str = ""
    seen: list[tuple[str, str, bool]] = field(default_factory=list)
    issued: list[str] = field(default_factory=list)

    def registry_auth(self) -> str:
        """The 'auth:' block of a docker-registry config that sends clients here."""
        return (
            f"auth:\n  token:\n    realm: {self.realm}\n    service: {SERVICE}\n    issuer: {ISSUER}\n"
            f"    rootcertbundle: {self.cert}\n"
        )

    def token(self, subject: str, scopes: list[str]) -> str:
        """A JWT the registry accepts: pull on each 'repository:NAME:ACTIONS' scope asked for."""
        access = []
        for scope in scopes:
            kind, _, rest = scope.partition(":")
            name, _, actions = rest.rpartition(":")
            if kind == "repository" and name and "pull" in actions.split(","):
                access.append({"type": "repository", "name": name, "actions": ["pull"]})
        now = int(time.time())
        header = {"typ": "JWT", "alg": "RS256", "x5c": [pki.der_base64(self.cert)]}
        claims = {
            "iss": ISSUER,
            "sub": subject,
            "aud": SERVICE,
            "exp": now + 300,
            "nbf": now - 10,
            "iat": now,
            "jti": secrets.token_hex(16),
            "access": access,
        }
        signing_input = f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(claims).encode())}"
        token = f"{signing_input}.{_b64url(pki.rs256(self.key, signing_input.encode()))}"
        self.issued.append(token)
        return token

    def subject(self, authorization: str, method: str, form: dict[str, list[str]]) -> tuple[str, str | None]:
        """(how the client authenticated, the subject it proved or None)."""
        if method == "POST":
            grant = form.get("grant_type", [""])[0]
            refresh = form.get("refresh_token", [""])[0]
            ok = grant == "refresh_token" and refresh in self.refresh_tokens
            return "refresh_token", "identity-token-user" if ok else None
        if not authorization.startswith("Basic "):
            return "anonymous", None
        try:
            user, _, password = base64.b64decode(authorization[6:]).decode().partition(":")
        except ValueError:
            return "basic", None
        return "basic", user if user in self.users and self.users[user] == password else None


class _Handler(BaseHTTPRequestHandler):
    server: LoopbackServer

    def log_message(self, format: str, *args: object) -> None:  # quiet
        pass

    def _answer(self, method: str) -> None:
        ts: TokenServer = self.server.state
        url = urllib.parse.urlsplit(self.path)
        query = urllib.parse.parse_qs(url.query)
        form: dict[str, list[str]] = {}
        if method == "POST":
            length = int(self.headers.get("Content-Length") or 0)
            form = urllib.parse.parse_qs(self.rfile.read(length).decode())
        how, subject = ts.subject(self.headers.get("Authorization", ""), method, form)
        ts.seen.append((method, how, subject is not None))
        args = form if method == "POST" else query
        if url.path != "/token" or subject is None or args.get("service", [""])[0] != SERVICE:
            body, status = b'{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}', 401
        else:
            scopes = [s for value in args.get("scope", []) for s in value.split()]
            token = ts.token(subject, scopes)
            key = "access_token" if method == "POST" else "token"
            body, status = json.dumps({key: token, "expires_in": 300}).encode(), 200
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        self._answer("GET")

    def do_POST(self) -> None:
        self._answer("POST")


@contextmanager
def serve_tokens(work: Path, users: dict[str, str], refresh_tokens: set[str]) -> Iterator[TokenServer]:
    """A running token server on a free loopback port, stopped when the block ends."""
    cert, key = pki.signing_cert(work)
    ts = TokenServer(cert, key, users, refresh_tokens)
    with running(_Handler, ts) as server:
        ts.realm = f"http://{server.host}/token"
        yield ts
