"""``hvsock kvp``: the KVP pools from the command line, on a guest or from a host.

On a guest the actions work on the pool files (``--dir``, default /var/lib/hyperv).
With ``--vm vsock://3`` (any address) they go to the guest's ``hvsock kvp serve``;
with ``--vm NAME`` on a Hyper-V host they go through PowerShell/CIM (``--export ps1``
prints that script instead). Thin: parse, call :mod:`hvsock.kvp`, print.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING, Any, TextIO

from .._core import kvp as codec
from .._core.kvp import Pool
from .._errors import ArgumentError, UnsupportedError
from . import args as cliargs
from .args import Handler, allow_rule

if TYPE_CHECKING:
    from .._builtin.kvp import service as kvp_service_mod
    from .._builtin.kvp import store

# The library's defaults, repeated so that building the parser imports nothing heavy
# (tests/unit/test_cli_imports.py checks they match).
DEFAULT_DIRECTORY = "/var/lib/hyperv"
DEFAULT_LOCK_TIMEOUT = 5.0
DEFAULT_WATCH_INTERVAL = 0.25
KVP_PORT = 5010

EXIT_OK = 0
EXIT_MISSING = 1  # get: no such key

ACTIONS = ("get", "set", "delete", "list", "watch", "clear", "host-info", "serve")


def pool_arg(text: str) -> Pool:
    try:
        return codec.parse_pool(text)
    except ArgumentError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _common(p: argparse.ArgumentParser, default: Any) -> None:
    # The same options before and after the action (`hvsock kvp --pool 3 list` and
    # `hvsock kvp list --pool 3`); after it they default to SUPPRESS so they do not
    # overwrite what was given before it.
    p.add_argument(
        "--pool",
        type=pool_arg,
        default=default,
        help="external|guest|auto|auto-external|auto-internal or 0-4 "
        "(default: guest to read and to write on a guest, external to write "
        "from a host)",
    )
    p.add_argument(
        "--dir",
        dest="directory",
        default=default,
        metavar="DIR",
        help=f"the pool directory (default {DEFAULT_DIRECTORY})",
    )
    p.add_argument("--json", action="store_true", default=default, help="print JSON")
    p.add_argument(
        "--vm",
        metavar="ADDRESS_OR_NAME",
        default=default,
        help="from a host: a guest's `hvsock kvp serve` (vsock://3, "
        "hybrid:///run/fc.sock, tcp://..., unix://...; port 5010 when none), "
        "or a Hyper-V VM's name or id (Windows host)",
    )
    p.add_argument(
        "--lock-timeout",
        type=cliargs.positive_float,
        default=default,
        help=f"seconds to wait for a pool's lock (default {DEFAULT_LOCK_TIMEOUT:g})",
    )
    p.add_argument(
        "--timeout",
        type=cliargs.positive_float,
        default=default,
        help="with --vm: seconds for the connection and each answer (default 10)",
    )


def _host_pool(p: argparse.ArgumentParser, default: Any) -> None:
    # A global option like --pool (usage lists it there), accepted after a write action
    # too; after it SUPPRESS keeps it from undoing one given before the action.
    p.add_argument(
        "--host-pool",
        action="store_true",
        default=default,
        help="allow writing a pool that is not the guest's (0, 2, 3, 4)",
    )


def _writes(p: argparse.ArgumentParser) -> None:
    _host_pool(p, argparse.SUPPRESS)
    p.add_argument(
        "--export",
        choices=("ps1",),
        help="with --vm NAME: print the PowerShell script for the Hyper-V host",
    )


#: The commands this group adds (main.py builds only the chosen command's group).
COMMANDS = ("kvp",)


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> dict[str, Handler]:
    """Add ``kvp`` to *sub*; return its handler."""
    kvp = sub.add_parser(
        "kvp",
        help="Hyper-V KVP pools: get, set, list, watch (and over vsock elsewhere)",
        description="Read and write the key/value pools Hyper-V exchanges with a guest "
        "(and, with `hvsock kvp serve`, KVM and Firecracker guests). Pools: 0 external "
        "(host -> guest), 1 guest (guest -> host: the one to write), 2 auto, "
        "3 auto-external (host facts), 4 auto-internal. See docs/kvp.md.",
    )
    _common(kvp, None)
    _host_pool(kvp, False)
    actions = kvp.add_subparsers(
        dest="kvp_action", required=True, metavar="ACTION", parser_class=cliargs.Parser
    )
    suppress = argparse.SUPPRESS

    p = actions.add_parser("get", help="print the value of KEY (exit 1 when missing)")
    p.add_argument("key")
    _common(p, suppress)

    p = actions.add_parser("set", help="set KEY to VALUE (replacing duplicates)")
    p.add_argument("key")
    p.add_argument("value")
    p.add_argument(
        "--append",
        action="store_true",
        help="add a record even when KEY is there (as cloud-init does)",
    )
    p.add_argument(
        "--full",
        action="store_true",
        help="allow the on-disk sizes (511/2047 bytes) instead of what the host "
        "receives intact (254/1022 UTF-16 units)",
    )
    _writes(p)
    _common(p, suppress)

    p = actions.add_parser("delete", help="remove every record of KEY")
    p.add_argument("key")
    _writes(p)
    _common(p, suppress)

    p = actions.add_parser("list", help="print every item (KEY=VALUE)")
    p.add_argument("--all", action="store_true", help="every record in file order, duplicates too")
    _common(p, suppress)

    p = actions.add_parser("watch", help="print changes as they happen")
    p.add_argument(
        "--count", type=cliargs.non_negative_int, default=None, help="stop after this many changes"
    )
    p.add_argument(
        "--for",
        dest="duration",
        type=cliargs.positive_float,
        default=None,
        metavar="SECONDS",
        help="stop after this many seconds",
    )
    p.add_argument(
        "--interval",
        type=cliargs.positive_float,
        default=DEFAULT_WATCH_INTERVAL,
        help="seconds between looks",
    )
    _common(p, suppress)

    p = actions.add_parser("clear", help="remove every record of the pool")
    p.add_argument(
        "--stale",
        action="store_true",
        help="instead: clear every non-empty pool written before this boot",
    )
    _writes(p)
    _common(p, suppress)

    p = actions.add_parser("host-info", help="what the host says (pool 3): VM name, id, ...")
    _common(p, suppress)

    p = actions.add_parser(
        "serve",
        help="serve the pools to the host over vsock (KVM, Firecracker)",
        description="Run the KVP service: the host reads this guest's pools and writes "
        "pools 0 and 3 with `hvsock kvp --vm ADDRESS ...`. Only the host (CID 2 / the "
        "Hyper-V parent) may connect unless --allow says otherwise.",
    )
    p.add_argument(
        "--listen",
        metavar="ADDR",
        default=None,
        help=f"where to listen (default vsock://any:{KVP_PORT})",
    )
    p.add_argument(
        "--allow",
        action="append",
        type=allow_rule,
        metavar="RULE",
        help="who may connect: a CID, uid:N (Unix), a host, a VM id, or 'any'; "
        "repeat for more (default: the host only)",
    )
    p.add_argument("--ready-file", help="write JSON {pid, services} here once listening")
    cliargs.add_grace(p, "in-flight requests")
    _common(p, suppress)
    return {"kvp": cmd_kvp}


# -- dispatch --------------------------------------------------------------------------


def cmd_kvp(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    for name in ("pool", "directory", "json", "vm", "lock_timeout", "timeout"):
        if not hasattr(args, name):
            setattr(args, name, None)
    action = args.kvp_action
    if getattr(args, "export", None) and not _hyperv_vm(args.vm):
        raise ArgumentError("--export ps1 goes with --vm NAME (a Hyper-V VM)")
    if args.vm is not None:
        if action == "serve":
            raise ArgumentError("serve runs on the guest: drop --vm")
        if args.directory is not None:
            raise ArgumentError("--dir is the guest's business: with --vm drop it")
        if _hyperv_vm(args.vm):
            return _on_hyperv_host(args, out, err)
        return _over_service(args, out, err)
    if action == "serve":
        return _serve(args, out, err)
    return _local(args, out, err)


def _hyperv_vm(vm: str | None) -> bool:
    return vm is not None and "://" not in vm


def _read_pool(args: argparse.Namespace) -> Pool:
    return args.pool if args.pool is not None else Pool.GUEST


def _write_pool(args: argparse.Namespace, *, remote: bool) -> Pool:
    if args.pool is not None:
        return Pool(args.pool)
    return Pool.EXTERNAL if remote else Pool.GUEST


def _local_store(args: argparse.Namespace, pool: Pool) -> Any:
    from .._builtin.kvp import store
    from .._builtin.kvp.registry import RegistryKvpStore

    limits = codec.FULL if getattr(args, "full", False) else codec.SAFE
    host_pool = bool(getattr(args, "host_pool", False))
    if sys.platform == "win32" and args.directory is None:  # pragma: no cover - Windows
        from .._windows.registry import default_backend

        return RegistryKvpStore(default_backend(), pool, limits, host_pool)
    return store.KvpStore(
        pool,
        args.directory or DEFAULT_DIRECTORY,
        limits,
        args.lock_timeout or DEFAULT_LOCK_TIMEOUT,
        host_pool,
    )


def _local(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    action = args.kvp_action
    if action in ("get", "list", "watch"):
        target = _local_store(args, _read_pool(args))
    elif action == "host-info":
        target = _local_store(args, Pool.AUTO_EXTERNAL)
    elif action == "clear" and args.stale:
        return _clear_stale(args, out, err)
    else:
        pool = _write_pool(args, remote=False)
        if pool != Pool.GUEST and not args.host_pool:
            raise ArgumentError(
                f"pool {int(pool)} ({pool.cli_name}) belongs to the host or the daemon; a "
                "guest program writes pool 1 (guest). To write it anyway add --host-pool"
            )
        target = _local_store(args, pool)
    return _run(action, target, args, out, err)


def _clear_stale(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from .._builtin.kvp import store

    directory = args.directory or DEFAULT_DIRECTORY
    cleared = []
    for found in store.stale_pools(directory):
        writable = store.KvpStore(
            found.pool,
            directory,
            lock_timeout=args.lock_timeout or DEFAULT_LOCK_TIMEOUT,
            allow_host_pool=True,
        )
        cleared.append({"pool": int(found.pool), "records": writable.clear()})
    if args.json:
        cliargs.print_json({"cleared": cleared}, out)
    elif not cleared:
        err.write("hvsock: no pool is older than this boot; nothing to do\n")
    for item in [] if args.json else cleared:
        err.write(f"hvsock: cleared pool {item['pool']} ({item['records']} records)\n")
    return EXIT_OK


def _run(action: str, target: Any, args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """One action on a local store or a remote client (the same methods)."""
    from .._builtin.kvp import store

    pool = getattr(target, "pool", None)
    pool_name = pool.cli_name if isinstance(pool, Pool) else "?"
    if action == "get":
        value = target.get(args.key)
        if value is None:
            err.write(f"hvsock: {args.key!r} is not in pool {pool_name}\n")
            return EXIT_MISSING
        if args.json:
            cliargs.print_json({"key": args.key, "value": value, "pool": pool_name}, out)
        else:
            out.write(f"{value}\n")
    elif action == "set":
        (target.append if args.append else target.set)(args.key, args.value)
    elif action == "delete":
        count = target.delete(args.key)
        if args.json:
            cliargs.print_json({"key": args.key, "removed": count}, out)
        elif not count:
            err.write(f"hvsock: {args.key!r} is not in pool {pool_name}; nothing to do\n")
    elif action == "list":
        _print_items(target.items() if args.all else list(target.as_dict().items()), args, out)
    elif action == "clear":
        count = target.clear()
        if args.json:
            cliargs.print_json({"pool": pool_name, "removed": count}, out)
        else:
            err.write(f"hvsock: cleared pool {pool_name} ({count} records)\n")
    elif action == "host-info":
        _print_facts(store.HostFacts.from_items(target.as_dict()), args, out)
    elif action == "watch":
        _watch(target, args, out)
    return EXIT_OK


def _print_items(items: list[tuple[str, str]], args: argparse.Namespace, out: TextIO) -> None:
    if args.json:
        cliargs.print_json([{"key": k, "value": v} for k, v in items], out)
        return
    for key, value in items:
        out.write(f"{key}={value}\n")


def _print_facts(facts: store.HostFacts, args: argparse.Namespace, out: TextIO) -> None:
    from .._builtin.kvp import store

    info = facts.as_dict()
    if args.json:
        cliargs.print_json(info, out)
        return
    for name in store.HOST_FACT_KEYS:
        value = info[name]
        out.write(f"{name.replace('_', ' ')}: {'-' if value is None else value}\n")


def _watch(target: Any, args: argparse.Namespace, out: TextIO) -> None:
    changes = target.watch(
        interval=args.interval, timeout=args.duration, max_changes=args.count or None
    )
    for change in changes:
        if args.json:
            import json

            out.write(json.dumps(change.as_dict(), sort_keys=True) + "\n")
        elif change.kind == "set":
            out.write(f"set {change.key}={change.value}\n")
        else:
            out.write(f"delete {change.key}\n")
        out.flush()


# -- from a host --------------------------------------------------------------------


class _RemotePool:
    """A guest's pool through its KVP service, with the store's method names."""

    def __init__(self, client: kvp_service_mod.KvpClient, pool: Pool) -> None:
        self.client = client
        self.pool = pool

    def items(self) -> list[tuple[str, str]]:
        return self.client.items(self.pool)

    def as_dict(self) -> dict[str, str]:
        return self.client.as_dict(self.pool)

    def get(self, key: str) -> str | None:
        return self.client.get(key, self.pool)

    def set(self, key: str, value: str) -> None:
        self.client.set(key, value, self.pool)

    def append(self, key: str, value: str) -> None:
        raise ArgumentError("--append is for a guest's own pool; from a host use set")

    def delete(self, key: str) -> int:
        return self.client.delete(key, self.pool)

    def clear(self) -> int:
        return self.client.clear(self.pool)

    def watch(self, **kwargs: Any) -> Any:
        from .._builtin.kvp import store

        return store.poll_changes(self.as_dict, self.as_dict, **kwargs)


def _over_service(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from .._builtin.kvp import service as kvp_service_mod

    action = args.kvp_action
    if action == "clear" and args.stale:
        raise ArgumentError("--stale clears this machine's pools: run it on the guest")
    pool = (
        Pool.AUTO_EXTERNAL
        if action == "host-info"
        else _read_pool(args)
        if action in ("get", "list", "watch")
        else _write_pool(args, remote=True)
    )
    with kvp_service_mod.KvpClient(args.vm, timeout=args.timeout or 10.0) as client:
        return _run(action, _RemotePool(client, pool), args, out, err)


def _on_hyperv_host(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from .._builtin.kvp import hyperv_host

    action = args.kvp_action
    vm = args.vm
    export = getattr(args, "export", None)
    if action in ("set", "delete"):
        pool = _write_pool(args, remote=True)
        if pool != Pool.EXTERNAL:
            raise ArgumentError(
                "from a Hyper-V host, hvsock writes the host's items (pool 0, external) only"
            )
        if getattr(args, "append", False):
            raise ArgumentError("--append is for a guest's own pool; from a host use set")
        items = [(args.key, args.value)] if action == "set" else [(args.key, "")]
        how = "set" if action == "set" else "remove"
        if export == "ps1":
            out.write(hyperv_host.change_script(how, vm, items))
            return EXIT_OK
        hyperv_host.change_host_items(how, vm, items)
        return EXIT_OK
    if action not in ("get", "list", "watch"):
        raise UnsupportedError(
            f"`hvsock kvp {action}` with a Hyper-V VM name is not "
            "supported; get, list, set and delete are"
        )
    if action == "watch":
        raise UnsupportedError(
            "watch with a Hyper-V VM name is not supported; poll `hvsock kvp --vm NAME list`"
        )
    pool = _read_pool(args)
    if pool not in (Pool.GUEST, Pool.AUTO):
        raise ArgumentError(
            "from a Hyper-V host the guest's items are pool 1 (guest) and "
            "its intrinsics pool 2 (auto)"
        )
    found = hyperv_host.read_guest_items(vm)
    chosen = found.guest if pool == Pool.GUEST else found.intrinsic
    return _run(action, _Listed(pool, [(i.name, i.data) for i in chosen]), args, out, err)


class _Listed:
    """Items read once (a Hyper-V VM's), with the store's reading methods."""

    def __init__(self, pool: Pool, items: list[tuple[str, str]]) -> None:
        self.pool = pool
        self._items = items

    def items(self) -> list[tuple[str, str]]:
        return list(self._items)

    def as_dict(self) -> dict[str, str]:
        return codec.latest(self._items)

    def get(self, key: str) -> str | None:
        return self.as_dict().get(key)


# -- serve ----------------------------------------------------------------------------


def _serve(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    import asyncio

    from .._builtin.kvp import service as kvp_service_mod
    from .._service.host import ServiceHost

    rules = args.allow
    allow: Any
    if rules is None:
        allow = kvp_service_mod.DEFAULT_ALLOW
    elif "any" in rules:
        allow = None
    else:
        allow = set(rules)
    directory = args.directory or DEFAULT_DIRECTORY
    service = kvp_service_mod.kvp_service(pool_dir=directory, allow=allow)

    def ready(addresses: dict[str, Any]) -> None:
        err.write(
            f"hvsock: listening on {addresses[service.name]} (pools in "
            f"{os.path.abspath(directory)})\n"
        )
        err.flush()

    host = ServiceHost(grace=args.grace, ready_file=args.ready_file, on_ready=ready)
    host.add(service, args.listen)
    asyncio.run(host.serve())
    return EXIT_OK
