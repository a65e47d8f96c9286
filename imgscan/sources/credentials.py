"""Registry credentials as the docker CLI finds them: ~/.docker/config.json (or $DOCKER_CONFIG) credHelpers,
credsStore (a docker-credential-NAME program), then auths. Secrets never reach a message or a repr.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
from dataclasses import dataclass, field
from typing import Any

DOCKER_HUB_HOSTS = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io"})
DOCKER_HUB_KEY = "https://index.docker.io/v1/"  # where `docker login` files Docker Hub's credentials
_HELPER_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_TOKEN_USER = "<token>"  # docker's username for an identity token from a credential helper
HELPER_TIMEOUT = 10.0


@dataclass(frozen=True)
class Credentials:
    """A user and secret for one registry host. With identity_token (docker's user '<token>' from a helper,
    or an auths entry's 'identitytoken') the secret is an OAuth2 refresh token for the Bearer realm, as the
    docker CLI uses it. repr() leaves the secret out, so no message or traceback can carry it."""

    user: str
    secret: str = field(repr=False)
    identity_token: bool = False


# (config file, host) -> (credentials or None, where they came from or why there are none). Per process:
# each worker that opens a blob asks for the same host, and a credential helper runs once.
_CREDENTIALS: dict[tuple[str, str], tuple[Credentials | None, str]] = {}


def _docker_config_path() -> str:
    return os.path.join(os.environ.get("DOCKER_CONFIG") or os.path.expanduser("~/.docker"), "config.json")


def docker_credentials(host: str) -> tuple[Credentials | None, str]:
    """Credentials for host as the docker CLI picks them: the helper named in credHelpers[host], else the
    credsStore helper, else the 'auths' entry. A configured helper is the only store asked, as in docker:
    when it has nothing, fails or times out there are no credentials. The text says where they came from
    or why there are none, for error messages; it never holds a secret."""
    host = DOCKER_HUB_KEY if host in DOCKER_HUB_HOSTS else host
    path = _docker_config_path()
    key = (path, host)
    if key not in _CREDENTIALS:
        try:
            with open(path, "rb") as f:
                config = json.load(f)
        except (OSError, ValueError):
            config = {}
        if not isinstance(config, dict):
            config = {}
        helpers = config.get("credHelpers")
        helper = helpers.get(host) if isinstance(helpers, dict) else None
        helper = helper or config.get("credsStore")
        if isinstance(helper, str) and helper:
            _CREDENTIALS[key] = _helper_credentials(helper, host)
        else:
            _CREDENTIALS[key] = _auths_credentials(config.get("auths"), host)
    return _CREDENTIALS[key]


def _auths_credentials(auths: Any, host: str) -> tuple[Credentials | None, str]:
    """The docker config's 'auths' entry for host: base64 'user:password' in 'auth', or 'identitytoken'."""
    none = f"no credentials for {host} in docker config"
    if not isinstance(auths, dict):
        return None, none
    for key in (host, f"https://{host}", f"http://{host}", f"https://{host}/v1/", f"https://{host}/v2/"):
        entry = auths.get(key)
        if not isinstance(entry, dict):
            continue
        if isinstance(entry.get("identitytoken"), str) and entry["identitytoken"]:
            return Credentials("", entry["identitytoken"], identity_token=True), "docker config auths"
        if isinstance(entry.get("auth"), str):
            try:
                user, sep, password = base64.b64decode(entry["auth"]).decode().partition(":")
            except (ValueError, UnicodeDecodeError):
                return None, f"docker config auths entry for {host} is not base64 'user:password'"
            if sep:
                return Credentials(user, password), "docker config auths"
    return None, none


def _helper_credentials(name: str, host: str) -> tuple[Credentials | None, str]:
    """Run 'docker-credential-NAME get' with host on stdin, as docker does; its answer is JSON with
    Username and Secret. Its output is never quoted (it may hold the secret)."""
    program = f"docker-credential-{name}"
    if not _HELPER_NAME_RE.match(name):
        return None, f"invalid credential helper name {name!r} in docker config"
    path = shutil.which(program)
    if path is None:
        return None, f"credential helper {program} not found on PATH"
    try:
        proc = subprocess.Popen(
            [path, "get"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # a timeout kills the helper and anything it started
        )
    except OSError as e:
        return None, f"credential helper {program} cannot run ({e.strerror or type(e).__name__})"
    with proc:
        try:
            out, _ = proc.communicate(host.encode(), timeout=HELPER_TIMEOUT)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(OSError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return None, f"credential helper {program} timed out after {HELPER_TIMEOUT:g} s"
    if proc.returncode != 0:
        if b"credentials not found" in out:
            return None, f"credential helper {program} has no credentials for {host}"
        return None, f"credential helper {program} failed (exit {proc.returncode})"
    try:
        doc = json.loads(out)
        user, secret = doc["Username"], doc["Secret"]
    except (ValueError, TypeError, KeyError):
        return None, f"credential helper {program} answered no Username and Secret"
    if not isinstance(user, str) or not isinstance(secret, str) or not secret:
        return None, f"credential helper {program} answered no Username and Secret"
    if user == _TOKEN_USER:
        return Credentials("", secret, identity_token=True), f"credential helper {program}"
    return Credentials(user, secret), f"credential helper {program}"
