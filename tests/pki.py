"""Keys and certificates for loopback test servers, made with the openssl CLI (no Python crypto package is a
test dependency): a CA with a server certificate for 127.0.0.1 (a registry on https) and a self-signed RSA
certificate that signs registry tokens (RS256). Each is written with its own small config, so the host's
openssl.cnf changes nothing."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

_NAME = "[req]\ndistinguished_name = dn\nprompt = no\n[dn]\nCN = {cn}\n[ext]\n{ext}\n"
_CA_EXT = "basicConstraints = critical,CA:TRUE\nkeyUsage = critical,keyCertSign,cRLSign\n"
_LEAF_EXT = "basicConstraints = critical,CA:FALSE\nkeyUsage = critical,digitalSignature,keyEncipherment\n"
_EC = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"]


def openssl(*args: str | Path, data: bytes | None = None) -> bytes:
    """Run openssl; a failure shows its stderr."""
    r = subprocess.run(["openssl", *map(str, args)], input=data, capture_output=True, timeout=60)
    if r.returncode != 0:
        raise RuntimeError(f"openssl {args[0]} failed: {r.stderr.decode(errors='replace')[-2000:]}")
    return r.stdout


def _self_signed(work: Path, name: str, cn: str, ext: str, key: list[str]) -> tuple[Path, Path]:
    config = work / f"{name}.cnf"
    config.write_text(_NAME.format(cn=cn, ext=ext + "subjectKeyIdentifier = hash\n"))
    cert, private = work / f"{name}.pem", work / f"{name}.key"
    openssl("req", "-x509", "-config", config, "-extensions", "ext", *key, "-nodes", "-days", "2",
            "-keyout", private, "-out", cert)  # fmt: skip
    return cert, private


@dataclass(frozen=True)
class ServerTls:
    """A CA (ca: what a client trusts) and a certificate for 127.0.0.1 signed by it (cert, key)."""

    ca: Path
    cert: Path
    key: Path


def server_tls(work: Path) -> ServerTls:
    ca, ca_key = _self_signed(work, "ca", "imgscan test CA", _CA_EXT, _EC)
    ext = work / "server.ext"
    ext.write_text(
        _LEAF_EXT + "extendedKeyUsage = serverAuth\nsubjectAltName = IP:127.0.0.1\n"
        "subjectKeyIdentifier = hash\nauthorityKeyIdentifier = keyid\n"
    )
    key, csr, cert = work / "server.key", work / "server.csr", work / "server.pem"
    openssl("req", "-new", *_EC, "-nodes", "-subj", "/CN=127.0.0.1", "-keyout", key, "-out", csr)
    openssl("x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-set_serial", "2", "-days", "2",
            "-extfile", ext, "-out", cert)  # fmt: skip
    return ServerTls(ca, cert, key)


def signing_cert(work: Path) -> tuple[Path, Path]:
    """(certificate, key): a self-signed RSA certificate for RS256 token signatures; the registry trusts it
    as its rootcertbundle and finds it in each token's x5c header."""
    return _self_signed(work, "signer", "imgscan test token signer", _LEAF_EXT, ["-newkey", "rsa:2048"])


def der_base64(cert: Path) -> str:
    """The certificate's DER as standard base64 (the PEM body), as a JWT x5c entry holds it."""
    lines = cert.read_text().split("-----")[2].split()
    return "".join(lines)


def rs256(key: Path, data: bytes) -> bytes:
    """An RSASSA-PKCS1-v1_5 SHA-256 signature of data (JWS RS256)."""
    return openssl("dgst", "-sha256", "-sign", key, data=data)
