"""The agent in L2, as users run it: exec, cp and kvp enabled, reached from L1 (CID 2).

Built in-process (``build_agent`` on a config from ``parse_config``), not as
``hvsock agent``: another Python start in L2 costs minutes. Its files and KVP pools
live on L2's writable tmpfs (/tmp; the root is L1's, read-only over 9p).
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

from . import BACKGROUND, step

#: Where the agent's cp root and KVP pools are (on L2's tmpfs /tmp, see l2-init.sh).
AGENT_DIR = "/tmp/hvsock-agent"
FILES_DIR = f"{AGENT_DIR}/files"
POOL_DIR = f"{AGENT_DIR}/kvp"
#: The agent's shared address (exec behind the hello); cp and kvp keep their own
#: well-known ports (5005, 5010), as `hvsock agent` serves them.
AGENT_PORT = 5100


def agent_config() -> str:
    return f"""\
[agent]
listen = "vsock://any:{AGENT_PORT}"
allow = [2]

[exec]
# exec's default allow, host:privileged: L1's tests run as root and hvsock.exec binds a
# reserved source port when it can.
enabled = true

[cp]
enabled = true
roots = ["{FILES_DIR}"]

[kvp]
enabled = true
pool_dir = "{POOL_DIR}"
"""


@step
async def start_agent() -> dict[str, Any]:
    """Start the agent once (later calls find it running); returns where it serves."""
    if "agent" not in BACKGROUND:
        from hvsock._builtin.agent.config import parse_config
        from hvsock._builtin.agent.host import build_agent

        os.makedirs(FILES_DIR, exist_ok=True)
        os.makedirs(POOL_DIR, exist_ok=True)
        agent = build_agent(parse_config(agent_config(), "hypervisor-tier agent.toml"))
        await agent.host.start()
        BACKGROUND["agent"] = agent.host
    return {"files": FILES_DIR, "pool_dir": POOL_DIR, "port": AGENT_PORT}


#: A second agent whose exec lets in only root on the host (its default on vsock).
PRIVILEGED_PORT = 5106


@step
async def start_privileged_exec() -> int:
    """Start an agent serving exec with its default allow (``host:privileged``)."""
    if "privileged" not in BACKGROUND:
        from hvsock._builtin.agent.config import parse_config
        from hvsock._builtin.agent.host import build_agent

        agent = build_agent(
            parse_config(
                f'[agent]\nlisten = "vsock://any:{PRIVILEGED_PORT}"\n[exec]\nenabled = true\n',
                "privileged agent.toml",
            )
        )
        assert agent.services["exec"].allow is not None
        await agent.host.start()
        BACKGROUND["privileged"] = agent.host
    return PRIVILEGED_PORT


@step
def write_file(path: str, size: int, seed: int) -> str:
    """Write *size* reproducible bytes to *path* in L2; returns their SHA-256."""
    from . import payload

    data = payload(size, seed)
    with open(path, "wb") as f:
        f.write(data)
    return hashlib.sha256(data).hexdigest()


@step
def file_sha256(path: str) -> dict[str, Any]:
    """The SHA-256 and size of the file at *path* in L2."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
            size += len(block)
    return {"sha256": digest.hexdigest(), "size": size}


@step
def kvp_write_guest(items: dict[str, str]) -> None:
    """Write *items* into the guest pool (1) with hvsock.kvp's store, as a guest program would."""
    import hvsock.kvp

    hvsock.kvp.open_pool(hvsock.kvp.Pool.GUEST, directory=POOL_DIR).update(items)


@step
def kvp_read(pool: int) -> dict[str, str]:
    """Pool *pool* as the guest's store reads it (what the host wrote lands in pool 0)."""
    import hvsock.kvp

    return hvsock.kvp.open_pool(pool, directory=POOL_DIR).as_dict()
