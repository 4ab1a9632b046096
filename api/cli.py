"""``maip-ledger``: serve the API, manage API keys, check and export the ledger.

Every flag has a ``MAIP_*`` environment variable (see :data:`api.config.ENV_VARS`).
Errors are one line on stderr and exit status 2; ``fsck`` exits 1 when it finds damage.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import stat
import sys
from collections.abc import Mapping, MutableMapping, Sequence
from contextlib import closing, suppress
from pathlib import Path
from typing import Any, NoReturn, TextIO

import msgspec
import structlog
from aiohttp import web

from api.app import create_app
from api.config import ENV_VARS, Config
from api.demo import DemoInfo, demo_instructions, seed_demo
from api.errors import ApiError
from api.keys import ALL_SCOPES, KeyStore
from api.server import BoundedSite
from api.services import Services
from ledger.bundle import write_bundle
from ledger.cosignature import WitnessKey
from ledger.cosignature_store import SQLiteCosignatureStore
from ledger.errors import LedgerError
from ledger.fsck import fsck
from ledger.keys import KEY_FILE, load_signer
from ledger.log import Log, SignedCheckpoint
from ledger.orchestration import ORCHESTRATION_EVENTS, parse_orchestration_id
from ledger.runtime import settle_interpreter
from ledger.sqlite_store import SQLiteEventStore
from ledger.witnessing import newest_witnessed

__all__ = ["configure_logging", "main"]

_SECRET_FIELDS = frozenset(
    {"api_key", "x-api-key", "authorization", "token", "secret", "password", "jwt"}
)


def _drop_secrets(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for name in list(event):
        if name.lower() in _SECRET_FIELDS:
            event[name] = "[redacted]"
    return event


def configure_logging(level: str = "info", stream: TextIO | None = None) -> None:
    """JSON lines on stderr with the request id, tenant and orchestration id bound per
    request (``structlog.contextvars``). Called once, by the CLI entry point."""
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        raise ApiError(f"unknown log level {level!r}")
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _drop_secrets,
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(stream or sys.stderr),
        cache_logger_on_first_use=True,
    )


def _config(args: argparse.Namespace, env: Mapping[str, str]) -> Config:
    flags = {k: v for k, v in vars(args).items() if k in Config.__dataclass_fields__}
    return Config.load(env, **flags)


# -- serve -----------------------------------------------------------------------------


async def _serve(config: Config, out: TextIO) -> None:
    demo: list[DemoInfo] = []

    async def on_ready(services: Services) -> None:
        if config.demo:
            demo.append(await seed_demo(services))

    app = create_app(config, on_ready=on_ready)
    runner = web.AppRunner(
        app,
        handle_signals=False,
        access_log=None,
        shutdown_timeout=config.shutdown_grace_seconds + 5,
    )
    await runner.setup()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        site = BoundedSite(
            runner,
            config.host,
            config.port,
            header_timeout=config.header_timeout_seconds,
            max_connections=config.max_connections,
        )
        await site.start()
        host, port = runner.addresses[0][:2]
        base = f"http://{host}:{port}"
        structlog.get_logger("api").info("server.listening", url=base)
        out.write(f"listening on {base}\n")
        if demo:
            out.write(demo_instructions(demo[0], base))
        out.flush()
        await stop.wait()
        structlog.get_logger("api").info("server.stopping")
    finally:
        await runner.cleanup()


def _cmd_serve(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    config = _config(args, env)
    configure_logging(config.log_level)
    settle_interpreter()
    asyncio.run(_serve(config, sys.stdout))
    return 0


# -- keys ------------------------------------------------------------------------------


def _key_store(args: argparse.Namespace, env: Mapping[str, str]) -> KeyStore:
    return KeyStore(_config(args, env).keys_path)


def _write_json(value: Any) -> None:
    """A command's ``--json`` answer: one line of JSON on stdout."""
    sys.stdout.write(msgspec.json.encode(value).decode() + "\n")


def _cmd_keys_create(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    with closing(_key_store(args, env)) as store:
        key = store.create(args.tenant, args.scopes, label=args.label)
    if args.json:
        _write_json(key)
    else:
        sys.stdout.write(
            f"{key.api_key}\n"
            f"key id {key.key_id}, tenant {key.tenant_id}, scopes {' '.join(key.scopes)}\n"
            "Store it now: it is shown only once.\n"
        )
    return 0


def _cmd_keys_list(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    with closing(_key_store(args, env)) as store:
        keys = store.list_keys(args.tenant)
    if args.json:
        _write_json(keys)
        return 0
    for k in keys:
        state = f"revoked {k.revoked_at}" if k.revoked_at else "active"
        sys.stdout.write(
            f"{k.key_id}  {k.tenant_id}  {','.join(k.scopes)}  {state}  created {k.created_at}"
            + (f"  ({k.label})" if k.label else "")
            + "\n"
        )
    return 0


def _cmd_keys_revoke(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    with closing(_key_store(args, env)) as store:
        record = store.revoke(args.key_id)
    if args.json:
        _write_json(record)
    else:
        sys.stdout.write(f"revoked {record.key_id} (tenant {record.tenant_id})\n")
    return 0


# -- fsck and export -------------------------------------------------------------------


def _verifier_key_path(config: Config) -> Path:
    path = config.key_file or config.data_dir / KEY_FILE
    if not path.exists():
        raise ApiError(f"no signing key at {path}: is {config.data_dir} a ledger data dir?")
    if not config.ledger_path.exists():
        raise ApiError(f"no ledger at {config.ledger_path}")
    return path


async def _fsck(config: Config) -> Any:
    signer = load_signer(_verifier_key_path(config))
    store = SQLiteEventStore(config.ledger_path, read_only=True)
    await store.open()
    try:
        return await fsck(store, signer.verifier)
    finally:
        await store.close()


def _cmd_fsck(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    config = _config(args, env)
    report = asyncio.run(_fsck(config))
    if args.json:
        _write_json({**msgspec.to_builtins(report), "ok": report.ok})
    elif report.ok:
        sys.stdout.write(
            f"ok: {report.events} events, {report.checkpoints} checkpoints, "
            f"tree size {report.tree_size}\n"
        )
    else:
        # A replaced append-only trigger is tampering that concerns no leaf.
        at = report.first_bad_index
        sys.stdout.write("TAMPERED" + (f": first bad index {at}" if at is not None else "") + "\n")
        for problem in report.problems:
            sys.stdout.write(f"  {problem}\n")
    return 0 if report.ok else 1


async def _witnessed_header(config: Config, log: Log, at_least: int) -> SignedCheckpoint:
    """The newest checkpoint cosigned by ``at_least`` witnesses: the configured ones, or
    without any configured, every witness the log holds cosignatures from."""
    store = SQLiteCosignatureStore(config.cosignatures_path, read_only=True)
    await store.open()
    try:
        keys = [e.key for e in config.witness_endpoints()] or [
            WitnessKey.from_vkey(vkey) for vkey in sorted(await store.cosigned_sizes())
        ]
        header = None
        if 1 <= at_least <= len(keys):
            header = await newest_witnessed(log, store, keys, at_least)
    finally:
        await store.close()
    if header is None:
        raise ApiError(
            f"no checkpoint carries cosignatures from {at_least} witness(es) "
            f"(of {len(keys)} known): --witnessed needs one"
        )
    return header


async def _export(
    config: Config,
    orchestration_id: str,
    tenants: Sequence[str],
    out: Any,
    witnessed: int | None = None,
) -> int:
    signer = load_signer(_verifier_key_path(config))
    log = await Log.open(
        SQLiteEventStore(config.ledger_path, read_only=True), signer, ORCHESTRATION_EVENTS
    )
    try:
        header = None if witnessed is None else await _witnessed_header(config, log, witnessed)
        for tenant in tenants:
            if await log.stream_head(tenant, orchestration_id) == 0:
                continue

            async def write(line: bytes) -> None:
                out.write(line)

            return await write_bundle(log, tenant, orchestration_id, write, header=header)
    finally:
        await log.close()
    raise ApiError(
        f"no orchestration {orchestration_id!r} for "
        + (
            f"tenant {tenants[0]!r}"
            if len(tenants) == 1
            else "any tenant with an API key (pass --tenant)"
        )
    )


def _orchestration_id(raw: str) -> str:
    """As the API takes ``{id}``; anything else lower-cased, to be reported as not found."""
    try:
        return parse_orchestration_id(raw)
    except ValueError:
        return raw.lower()


def _cmd_export(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    config = _config(args, env)
    if args.tenant:
        tenants = [args.tenant]
    else:
        with closing(KeyStore(config.keys_path)) as store:
            tenants = store.tenants()
    oid = _orchestration_id(args.orchestration_id)
    witnessed = args.min_cosignatures if args.witnessed else None
    if args.min_cosignatures != 1 and not args.witnessed:
        raise ApiError("--min-cosignatures needs --witnessed")
    if args.output == "-":
        count = asyncio.run(_export(config, oid, tenants, sys.stdout.buffer, witnessed))
        sys.stdout.buffer.flush()
    else:
        count = _export_to_file(config, oid, tenants, args.output, witnessed)
        sys.stderr.write(f"wrote {count} events to {args.output}\n")
    return 0


def _export_to_file(
    config: Config, oid: str, tenants: Sequence[str], output: str, witnessed: int | None
) -> int:
    """Write the bundle to ``output``: a file is written whole or not at all (a
    temporary beside it, renamed over it, with the permission bits of the file it
    replaces); through a symlink, to what it names; into a descriptor of this process
    (/dev/stdout) through it; into anything else (a device, a FIFO) as it comes, since
    renaming over a device or a pipe would replace it with a file."""
    fd = _own_descriptor(output)
    if fd is not None:
        with os.fdopen(os.dup(fd), "wb") as f:
            return asyncio.run(_export(config, oid, tenants, f, witnessed))
    with suppress(FileNotFoundError):
        if not stat.S_ISREG(os.stat(output).st_mode):
            with open(output, "wb") as f:
                return asyncio.run(_export(config, oid, tenants, f, witnessed))
    target = Path(os.path.realpath(output))
    tmp = target.with_name(target.name + ".tmp")
    mode = _replaced_mode(target)
    try:
        with tmp.open("wb") as f:
            if mode is not None:
                # Before any of the bundle is in it: a private file stays private.
                os.fchmod(f.fileno(), mode)
            count = asyncio.run(_export(config, oid, tenants, f, witnessed))
        os.replace(tmp, target)
    except BaseException:
        # Whatever stopped the export (no such orchestration, a bad ledger, ^C), a
        # partial bundle must not stay behind to be mistaken for one.
        with suppress(OSError):
            tmp.unlink()
        raise
    return count


def _replaced_mode(target: Path) -> int | None:
    """The permission bits of the regular file at ``target`` the export replaces, which
    the new file keeps (the temporary file gets the umask's); None if there is none. Its
    owner cannot be kept by an ordinary user, and is not."""
    try:
        st = os.stat(target)
    except FileNotFoundError:
        return None
    return stat.S_IMODE(st.st_mode) if stat.S_ISREG(st.st_mode) else None


def _own_descriptor(output: str) -> int | None:
    """The descriptor of this process that ``output`` names (/dev/stdout, /dev/fd/N,
    /proc/self/fd/N), if it does: written through it, never renamed over the name it
    resolves to (stdout redirected to a file: what the file held before, appended to
    with ``>>`` or written by the shell around this command, would be lost), nor
    opened anew (which truncates that file, and writes at an offset of its own)."""
    path = os.path.abspath(output)
    own = f"/proc/{os.getpid()}/fd"
    for _ in range(40):  # symlinks followed, as the kernel follows at most 40
        parent = os.path.realpath(os.path.dirname(path))
        name = os.path.basename(path)
        if parent == own and name.isascii() and name.isdigit():
            return int(name)
        try:
            link = os.readlink(path)
        except OSError:  # not a symlink, or not there
            return None
        path = os.path.join(parent, link)
    return None


# -- parser ----------------------------------------------------------------------------


def _help(name: str, text: str) -> str:
    return f"{text} (env {ENV_VARS[name]})"


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (the module's contract), not the usage."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="maip-ledger", description=__doc__.split("\n")[0].replace("``", ""))
    sub = p.add_subparsers(dest="command", required=True)

    def data_dir(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--data-dir", type=Path, help=_help("data_dir", "default ./data"))
        sp.add_argument(
            "--key-file",
            type=Path,
            help=_help("key_file", "signing key file; default DATA_DIR/log.key, made by serve"),
        )

    s = sub.add_parser("serve", help="run the HTTP API")
    data_dir(s)
    s.add_argument("--host", help=_help("host", "default 127.0.0.1"))
    s.add_argument("--port", type=int, help=_help("port", "default 8080"))
    s.add_argument("--origin", help=_help("origin", "the log's origin (key name)"))
    s.add_argument("--max-body-bytes", type=int, help=_help("max_body_bytes", "default 1 MiB"))
    s.add_argument("--rate-limit", type=float, help=_help("rate_limit", "per-key req/s; 0 off"))
    s.add_argument("--rate-burst", type=int, help=_help("rate_burst", "per-key burst"))
    s.add_argument("--jwt-hs256-secret", help=_help("jwt_hs256_secret", "HS256 JWT secret"))
    s.add_argument(
        "--jwt-eddsa-public-key", help=_help("jwt_eddsa_public_key", "EdDSA JWT key (PEM)")
    )
    s.add_argument("--jwt-audience", help=_help("jwt_audience", "required JWT aud"))
    s.add_argument("--jwt-issuer", help=_help("jwt_issuer", "required JWT iss"))
    s.add_argument(
        "--shutdown-grace-seconds", type=float, help=_help("shutdown_grace_seconds", "default 5")
    )
    s.add_argument(
        "--header-timeout-seconds",
        type=float,
        help=_help("header_timeout_seconds", "a request head must arrive within; default 20"),
    )
    s.add_argument("--max-connections", type=int, help=_help("max_connections", "default 1000"))
    s.add_argument(
        "--max-requests-per-tenant",
        type=int,
        help=_help("max_requests_per_tenant", "requests in progress per tenant; default 250"),
    )
    s.add_argument(
        "--hash-cache-mib",
        type=int,
        help=_help("hash_cache_mib", "tree hashes kept for proofs, MiB; default 128"),
    )
    s.add_argument(
        "--receipt-cache-entries",
        type=int,
        help=_help("receipt_cache_entries", "receipts kept for GET; default 65536"),
    )
    s.add_argument("--log-level", help=_help("log_level", "default info"))
    s.add_argument(
        "--provider-hosts",
        help=_help("provider_hosts", "hosts agents' providers may reach; default any public"),
    )
    s.add_argument(
        "--provider-private-hosts",
        help=_help("provider_private_hosts", "of those, hosts that may be private or loopback"),
    )
    s.add_argument(
        "--provider-keys",
        help=_help(
            "provider_keys", "key variables and their origins: NAME=https://h,http://h:p;N2=h"
        ),
    )
    s.add_argument(
        "--witness",
        dest="witnesses",
        action="append",
        metavar="URL=VKEY",
        help=_help(
            "witnesses",
            "a witness's add-checkpoint URL and cosignature vkey (repeatable; the variable: "
            "whitespace-separated)",
        ),
    )
    s.add_argument(
        "--demo", action="store_true", default=None, help=_help("demo", "seed tenant demo")
    )
    s.set_defaults(func=_cmd_serve)

    k = sub.add_parser("keys", help="manage API keys").add_subparsers(
        dest="keys_command", required=True
    )
    kc = k.add_parser("create", help="create an API key (printed once)")
    data_dir(kc)
    kc.add_argument("--tenant", required=True)
    kc.add_argument(
        "--scopes",
        default="orchestrations:write,orchestrations:read",
        help=f"comma-separated, of: {','.join(ALL_SCOPES)}",
    )
    kc.add_argument("--label")
    kc.add_argument("--json", action="store_true")
    kc.set_defaults(func=_cmd_keys_create)
    kl = k.add_parser("list", help="list API keys (never their secrets)")
    data_dir(kl)
    kl.add_argument("--tenant")
    kl.add_argument("--json", action="store_true")
    kl.set_defaults(func=_cmd_keys_list)
    kr = k.add_parser("revoke", help="revoke an API key, effective at once")
    data_dir(kr)
    kr.add_argument("key_id")
    kr.add_argument("--json", action="store_true")
    kr.set_defaults(func=_cmd_keys_revoke)

    f = sub.add_parser("fsck", help="check the whole ledger; exit 1 if tampered")
    data_dir(f)
    f.add_argument("--json", action="store_true")
    f.set_defaults(func=_cmd_fsck)

    e = sub.add_parser("export", help="write an orchestration's offline bundle (spec §6)")
    e.add_argument("orchestration_id", help="its UUID, or its maip-orch:<ULID> form (its id)")
    data_dir(e)
    e.add_argument("--tenant", help="the owning tenant (default: search tenants with keys)")
    e.add_argument("-o", "--output", default="-", help="file, or - for stdout (default)")
    e.add_argument(
        "--witnessed",
        action="store_true",
        help="prove it against the newest checkpoint witnesses cosigned (spec §9.6)",
    )
    e.add_argument(
        "--min-cosignatures",
        type=int,
        default=1,
        metavar="K",
        help="with --witnessed: cosigned by at least K witnesses (default 1)",
    )
    e.set_defaults(func=_cmd_export)
    return p


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        code: int = args.func(args, os.environ if env is None else env)
    except (ApiError, LedgerError, OSError) as e:
        sys.stderr.write(f"maip-ledger: error: {e}\n")
        return 2
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
