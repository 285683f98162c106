"""Throwaway certificates for TLS tests, made by the openssl command: a CA, and for 127.0.0.1 a server
certificate and a client certificate signed by it."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest


@dataclass(frozen=True)
class Certificates:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def make_certificates(where: Path) -> Certificates:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.fail("openssl is missing: `make test` installs it (Debian package openssl)")

    def run(*args: str) -> None:
        subprocess.run([openssl, *args], cwd=where, check=True, capture_output=True, timeout=60)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "1",
        "-subj", "/CN=async_chat test CA")
    for name, extension in (("server", "subjectAltName=IP:127.0.0.1,DNS:localhost"), ("client", "")):
        run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
            "-subj", f"/CN={name}")
        (where / f"{name}.cnf").write_text(extension + "\n")
        run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", f"{name}.pem", "-days", "1", *(["-extfile", f"{name}.cnf"] if extension else []))
    return Certificates(
        where / "ca.pem", where / "server.pem", where / "server.key", where / "client.pem", where / "client.key"
    )
