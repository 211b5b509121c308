"""A key/value integration service that guests reach on port 5001 (host: hvsock://.../5001)."""

import sys

import hvsock

store: dict[str, str] = {}


def put(conn: hvsock.Connection, params: dict[str, str]) -> str:
    store[params["key"]] = params["value"]
    conn.log.info("%s set %s", conn.peer, params["key"])
    return "ok"


def get(conn: hvsock.Connection, params: dict[str, str]) -> str:
    if params["key"] not in store:
        raise hvsock.RemoteError("not_found", f"no key {params['key']!r}")
    return store[params["key"]]


service = hvsock.Service("Example KV", 5001, hvsock.rpc_handler({"put": put, "get": get}))

if __name__ == "__main__":
    host = hvsock.ServiceHost(ready_file=sys.argv[2] if len(sys.argv) > 2 else None)
    host.add(service, sys.argv[1] if len(sys.argv) > 1 else None)  # default: vsock/Hyper-V
    host.run()  # until SIGTERM / Ctrl-C, then a graceful stop
