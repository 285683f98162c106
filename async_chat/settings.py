"""Server settings: one dataclass, from defaults, then `ASYNC_CHAT_*` environment variables, then flags.

Every option is described once, in `OPTIONS`; the CLI's `--help`, the environment parsing and the
README's configuration table all come from that one list.
"""

from __future__ import annotations

import argparse
import os
import ssl
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any, NoReturn

from . import __version__, logs, wire
from .brokers import check_url
from .errors import InvalidRequest
from .hub import OVERFLOW_POLICIES

TRANSPORTS = (wire.AUTO, *wire.TRANSPORTS)
PROTOCOLS = (wire.AUTO, *wire.PROTOCOLS)
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
PROXY_PROTOCOL = ("off", "on")
LOG_FORMATS = logs.FORMATS


@dataclass(frozen=True)
class Settings:
    """Everything the server can be told. Times are in seconds unless the name says otherwise."""

    host: str = "127.0.0.1"
    port: int = 9090
    broker: str = "memory://"
    transport: str = wire.AUTO
    protocol: str = wire.AUTO
    history: int = 1000
    history_ttl: float = 0.0
    queue_size: int = 1000
    queue_bytes: int = 256 * 1024
    overflow: str = "drop-oldest"
    subscription_ttl: float = 60.0
    idle_timeout: float = 120.0
    max_poll_wait_ms: int = 30_000
    max_poll_messages: int = 1000
    max_reply_bytes: int = 256 * 1024
    max_content_bytes: int = 64 * 1024
    max_call_bytes: int = 256 * 1024
    max_name_length: int = 256
    max_subscriptions: int = 10_000
    max_subscriptions_per_connection: int = 1000
    max_connections: int = 10_000
    max_connections_per_address: int = 1_000
    max_rooms: int = 10_000
    max_memory: int = 1 << 30
    room_ttl: float = 86_400.0
    dedup_window: int = 10_000
    dedup_ttl: float = 600.0
    broker_timeout: float = 2.0
    drain_timeout: float = 10.0
    metrics_port: int | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_client_ca: str | None = None
    auth_secret_file: str | None = None
    auth_public_key_file: str | None = None
    auth_audience: str | None = None
    auth_issuer: str | None = None
    admin_identities: str | None = None
    proxy_protocol: str = "off"
    publish_rate: float = 5000.0
    publish_burst: int = 5000
    log_level: str = "INFO"
    log_format: str = "text"

    def __post_init__(self) -> None:
        problems = []
        if not 0 <= self.port <= 65535:
            problems.append(f"port must be 0..65535, not {self.port}")
        try:
            check_url(self.broker)
        except InvalidRequest as exc:
            problems.append(exc.reason)
        files = (("tls-cert", self.tls_cert), ("tls-key", self.tls_key), ("tls-client-ca", self.tls_client_ca),
                 ("auth-secret-file", self.auth_secret_file), ("auth-public-key-file", self.auth_public_key_file))
        if self.proxy_protocol not in PROXY_PROTOCOL:
            problems.append(f"proxy-protocol must be one of {', '.join(PROXY_PROTOCOL)}, not {self.proxy_protocol!r}")
        elif self.proxy_protocol == "on" and self.tls_cert is not None:
            problems.append(
                "proxy-protocol cannot be combined with tls-cert here: end TLS at the load balancer, or let it pass"
                " TLS through without the PROXY header"
            )
        if self.auth_secret_file is not None and self.auth_public_key_file is not None:
            problems.append("auth-secret-file (HS256) and auth-public-key-file (RS256/ES256): choose one")
        if (self.auth_audience or self.auth_issuer) and not (self.auth_secret_file or self.auth_public_key_file):
            problems.append("auth-audience and auth-issuer need authentication on (an auth key file)")
        for flag, path in files:
            if path is not None and not os.path.isfile(path):
                problems.append(f"{flag} {path}: no such file")
        if self.transport not in TRANSPORTS:
            problems.append(f"transport must be one of {', '.join(TRANSPORTS)}, not {self.transport!r}")
        if self.protocol not in PROTOCOLS:
            problems.append(f"protocol must be one of {', '.join(PROTOCOLS)}, not {self.protocol!r}")
        if self.metrics_port is not None and not 0 <= self.metrics_port <= 65535:
            problems.append(f"metrics port must be 0..65535, not {self.metrics_port}")
        if (self.tls_cert is None) != (self.tls_key is None):
            problems.append("tls-cert and tls-key go together")
        if self.tls_client_ca is not None and self.tls_cert is None:
            problems.append("tls-client-ca needs tls-cert and tls-key (client certificates are checked over TLS)")
        if self.overflow not in OVERFLOW_POLICIES:
            problems.append(f"overflow must be one of {', '.join(OVERFLOW_POLICIES)}, not {self.overflow!r}")
        if self.log_format not in LOG_FORMATS:
            problems.append(f"log format must be one of {', '.join(LOG_FORMATS)}, not {self.log_format!r}")
        if self.log_level.upper() not in LOG_LEVELS:
            problems.append(f"log level must be one of {', '.join(LOG_LEVELS)}, not {self.log_level!r}")
        for name in ("queue_size", "queue_bytes", "max_poll_messages", "max_reply_bytes", "max_content_bytes",
                     "max_name_length",
                     "max_subscriptions", "max_rooms", "dedup_window", "max_connections",
                     "max_connections_per_address", "max_subscriptions_per_connection"):
            if getattr(self, name) < 1:
                problems.append(f"{name.replace('_', '-')} must be at least 1")
        if self.publish_rate < 0:
            problems.append("publish-rate must be 0 (unlimited) or more")
        if self.publish_burst < 1:
            problems.append("publish-burst must be at least 1")
        if self.max_reply_bytes < self.max_call_bytes:
            problems.append(
                f"max-reply-bytes ({self.max_reply_bytes}) must be at least max-call-bytes ({self.max_call_bytes}):"
                " every message must fit in a reply"
            )
        if self.max_call_bytes <= self.max_content_bytes:
            problems.append(
                f"max-call-bytes ({self.max_call_bytes}) must exceed max-content-bytes ({self.max_content_bytes})"
            )
        if self.history < 0:
            problems.append("history must be 0 or more")
        if self.history_ttl < 0:
            problems.append("history-ttl must be 0 (off) or more")
        if self.max_poll_wait_ms < 0:
            problems.append("max-poll-wait-ms must be 0 or more")
        if self.max_memory < 1 << 20:
            problems.append(f"max-memory must be at least 1 MiB ({1 << 20}), not {self.max_memory}")
        for name in ("subscription_ttl", "drain_timeout", "dedup_ttl", "broker_timeout", "room_ttl"):
            if getattr(self, name) <= 0:
                problems.append(f"{name.replace('_', '-')} must be more than 0")
        # A connection waiting in the longest poll must not be cut as idle; nor may its subscription expire.
        longest_poll = self.max_poll_wait_ms / 1000
        if self.idle_timeout <= longest_poll:
            problems.append(f"idle-timeout ({self.idle_timeout:g}s) must exceed max-poll-wait-ms ({longest_poll:g}s)")
        if self.subscription_ttl <= longest_poll:
            problems.append(
                f"subscription-ttl ({self.subscription_ttl:g}s) must exceed max-poll-wait-ms ({longest_poll:g}s)"
            )
        if problems:
            raise InvalidRequest("; ".join(problems))

    def with_changes(self, **changes: Any) -> Settings:
        return replace(self, **changes)

    def server_tls(self) -> ssl.SSLContext | None:
        """The server's TLS context, or None for plain TCP. Raises OSError/ssl.SSLError for bad files."""
        if self.tls_cert is None:
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)  # TLS 1.2+, the library's safe ciphers
        context.load_cert_chain(self.tls_cert, self.tls_key)
        if self.tls_client_ca is not None:
            context.verify_mode = ssl.CERT_REQUIRED
            context.load_verify_locations(self.tls_client_ca)
        return context


@dataclass(frozen=True)
class Option:
    field: str
    help: str
    choices: Sequence[str] | None = None

    @property
    def flag(self) -> str:
        return "--" + self.field.replace("_", "-")

    @property
    def env(self) -> str:
        return "ASYNC_CHAT_" + self.field.upper()


OPTIONS: tuple[Option, ...] = (
    Option("host", "address to listen on; 0.0.0.0 or :: to accept other machines"),
    Option("port", "TCP port to listen on; 0 picks a free one (the start-up log line says which)"),
    Option(
        "broker",
        "where rooms live: memory:// (this process, gone when it stops); sqlite:///chat.db (a file that keeps"
        " seqs, history and dedup across restarts; four slashes for an absolute path; ?synchronous=full to"
        " survive power loss); or redis://[:password@]host:port/db (rediss:// for TLS), shared by every"
        " server on that Redis",
    ),
    Option("transport", "Thrift transport clients may use; auto tells each connection's own", TRANSPORTS),
    Option("protocol", "Thrift protocol clients may use; auto takes binary (strict or not) and compact", PROTOCOLS),
    Option("history", "messages each room retains for replay and history(); 0 keeps none"),
    Option(
        "history_ttl",
        "seconds a message stays in history (SQLite broker), however few newer ones there are; 0: no age limit",
    ),
    Option(
        "queue_size",
        "messages buffered per subscription; past it the oldest is dropped (read back from history if it still"
        " holds it, else counted as missed)",
    ),
    Option("queue_bytes", "bytes of messages buffered per subscription; past it the oldest is dropped, as above"),
    Option(
        "overflow",
        "when a subscription's queue is full: drop its oldest message (counted in missed), or end the"
        " subscription (its client re-subscribes and replays from history)",
        OVERFLOW_POLICIES,
    ),
    Option("subscription_ttl", "seconds a subscription may go unpolled before it expires and frees its queue"),
    Option("idle_timeout", "seconds a connection may sit between calls before it is closed"),
    Option("max_poll_wait_ms", "longest wait_ms a poll may ask for; longer asks are capped"),
    Option("max_poll_messages", "most messages one poll returns; larger asks are capped"),
    Option(
        "max_reply_bytes",
        "a poll or history reply stops before its messages take more than this; at least --max-call-bytes."
        " A connection whose peer leaves more than this (plus 80 KiB) unread is aborted",
    ),
    Option("max_content_bytes", "largest message content, in UTF-8 bytes (TOO_LARGE beyond)"),
    Option(
        "max_call_bytes",
        "largest call a client may send, in bytes; a longer one (or a length claiming more) closes its"
        " connection before it is read",
    ),
    Option("max_name_length", "longest sender, room or client_msg_id, in characters (TOO_LARGE beyond)"),
    Option("max_subscriptions", "subscriptions the server holds at once (UNAVAILABLE beyond)"),
    Option("max_subscriptions_per_connection", "subscriptions one connection may hold open (TOO_LARGE beyond)"),
    Option("max_connections", "client connections open at once; more are closed at once, logged once per episode"),
    Option(
        "max_connections_per_address",
        "client connections open at once from one IP address (the client's, with --proxy-protocol on); more"
        " are closed",
    ),
    Option(
        "proxy_protocol",
        "on: every connection begins with a PROXY header (v1 or v2, as HAProxy and cloud TCP load balancers"
        " send it) naming the real client, which limits and logs then use. Only for a port that nothing but"
        " the balancer can reach",
        PROXY_PROTOCOL,
    ),
    Option(
        "max_rooms",
        "rooms the memory or SQLite broker keeps; a new one past it forgets the least recently used room without a"
        " subscriber (refused UNAVAILABLE only when every room has one)",
    ),
    Option(
        "max_memory",
        "bytes the memory broker keeps in history, dedup records and rooms; past it the least recently used"
        " rooms give up their oldest history first (readers are told through missed); publishes go on",
    ),
    Option(
        "room_ttl",
        "seconds a room without a subscriber and without a publish is kept: forgotten (memory, SQLite) or"
        " expired (every Redis key of the room) after it",
    ),
    Option("dedup_window", "client_msg_ids the memory broker remembers per room, to store a retried send once"),
    Option("dedup_ttl", "seconds the Redis and SQLite brokers remember a client_msg_id, to store a retried send once"),
    Option(
        "broker_timeout",
        "seconds a Redis call or a SQLite commit may take before the call fails UNAVAILABLE (never a hang)",
    ),
    Option("publish_rate", "publishes per second each connection may sustain (RATE_LIMITED beyond); 0: unlimited"),
    Option("publish_burst", "publishes a connection may make at once before --publish-rate applies"),
    Option("drain_timeout", "seconds a graceful shutdown waits for calls in flight"),
    Option(
        "metrics_port",
        "serve Prometheus /metrics, /healthz and /readyz over HTTP on this port (on --host); 0 picks a free one;"
        " unset: off. Needs `pip install async-chat[metrics]`",
    ),
    Option("tls_cert", "serve TLS only, with this certificate chain (PEM); with --tls-key. Unset: plain TCP"),
    Option("tls_key", "the private key (PEM) of --tls-cert"),
    Option("tls_client_ca", "require client certificates signed by this CA (PEM); needs --tls-cert"),
    Option(
        "auth_secret_file",
        "turn authentication on: clients must authenticate(token) with a JWT signed (HS256) with the secret in"
        " this file; its sub claim becomes the sender of the connection's messages. Unset: off, senders are"
        " taken as given",
    ),
    Option(
        "auth_public_key_file",
        "turn authentication on with JWTs your identity provider signs (RS256 or ES256): its public key, PEM."
        " Instead of --auth-secret-file",
    ),
    Option("auth_audience", "with authentication on, accept only tokens whose aud claim is this"),
    Option("auth_issuer", "with authentication on, accept only tokens whose iss claim is this"),
    Option(
        "admin_identities",
        "with authentication on, the identities (comma-separated) that may call stats(), which names every"
        " room; others get UNAUTHORIZED. Without authentication anyone who reaches the port may",
    ),
    Option("log_level", "log verbosity", LOG_LEVELS),
    Option("log_format", "log lines as key=value text or as one JSON object each", LOG_FORMATS),
)


def _converter(field_type: str, field: str = "") -> Callable[[str], Any]:
    if field == "log_level":
        return str.upper
    return {"int": int, "int | None": int, "float": float}.get(field_type, str)  # str | None: a str


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line on stderr (no usage block), exit status 2. Options are
    never abbreviated: `--prot 9090` is an error, not `--protocol 9090`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)
        self.add_argument("--version", action="version", version=f"%(prog)s {__version__}")

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    defaults = Settings()
    parser = OneLineParser(
        prog="python -m async_chat.server",
        description=(
            "Run the async_chat Thrift message service. Every option can also be set by the "
            "environment variable shown; a flag wins over the environment."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    kinds = {f.name: str(f.type) for f in fields(Settings)}
    for option in OPTIONS:
        parser.add_argument(
            option.flag,
            dest=option.field,
            type=_converter(kinds[option.field], option.field),
            choices=option.choices,
            default=getattr(defaults, option.field),
            metavar=None if option.choices else option.field.split("_")[-1].upper(),
            help=f"{option.help} [env {option.env}]",
        )
    return parser


def load(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Defaults, then the environment, then flags. Raises SystemExit(2) with one line for bad values."""
    environ = os.environ if environ is None else environ
    parser = build_parser()
    kinds = {f.name: str(f.type) for f in fields(Settings)}
    env_defaults: dict[str, Any] = {}
    for option in OPTIONS:
        raw = environ.get(option.env)
        if raw is None:
            continue
        try:
            value = _converter(kinds[option.field], option.field)(raw)
        except ValueError:
            parser.error(f"{option.env}={raw!r} is not a valid {kinds[option.field]}")
        if option.choices and value not in option.choices:
            parser.error(f"{option.env}={raw!r}: choose from {', '.join(option.choices)}")
        env_defaults[option.field] = value
    parser.set_defaults(**env_defaults)
    namespace = parser.parse_args(argv)
    try:
        return Settings(**vars(namespace))
    except InvalidRequest as exc:
        reason = exc.reason
        given = [f"{o.env}={environ[o.env]}" for o in OPTIONS
                 if o.field in env_defaults and getattr(namespace, o.field) == env_defaults[o.field]
                 and o.flag.lstrip("-") in reason]
        parser.error(reason + (f" (from the environment: {', '.join(given)})" if given else ""))
