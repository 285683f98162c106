"""The command-line clients' TLS options (`python -m async_chat.chat`, `python -m async_chat.admin`), in
one place: a server started with --tls-cert speaks only TLS, and these are how a client reaches it."""

from __future__ import annotations

import argparse
import ssl

from .errors import InvalidRequest


def add_tls_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("TLS (for a server started with --tls-cert)")
    group.add_argument("--tls", action="store_true",
                       help="connect over TLS, trusting the system's certificate authorities")
    group.add_argument("--tls-ca", metavar="FILE",
                       help="connect over TLS, trusting the CA in this PEM file (a server's own CA); implies --tls")
    group.add_argument("--tls-cert", metavar="FILE",
                       help="present this client certificate (PEM), for a server with --tls-client-ca")
    group.add_argument("--tls-key", metavar="FILE", help="the private key (PEM) of --tls-cert")


def client_tls(args: argparse.Namespace) -> ssl.SSLContext | None:
    """The client's TLS context as the options ask, or None for plain TCP. InvalidRequest, naming the
    option, for a file that cannot be used."""
    if not (args.tls or args.tls_ca or args.tls_cert):
        return None
    if (args.tls_cert is None) != (args.tls_key is None):
        raise InvalidRequest("--tls-cert and --tls-key go together")
    context = ssl.create_default_context()
    if args.tls_ca:
        try:
            context.load_verify_locations(args.tls_ca)
        except (OSError, ssl.SSLError) as exc:
            why = getattr(exc, "strerror", None) or exc
            raise InvalidRequest(f"cannot use --tls-ca {args.tls_ca}: {why}") from None
    if args.tls_cert:
        try:
            context.load_cert_chain(args.tls_cert, args.tls_key)
        except (OSError, ssl.SSLError) as exc:
            raise InvalidRequest(
                f"cannot use --tls-cert {args.tls_cert} with --tls-key {args.tls_key}:"
                f" {getattr(exc, 'strerror', None) or exc}"
            ) from None
    return context
