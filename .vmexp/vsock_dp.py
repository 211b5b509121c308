"""In the test VM only: x16 throughput into vsock, relay --data-path splice vs copy vs socat."""
import json, os, subprocess, sys, time
import hvsock
from hvsock._builtin import bench
assert os.path.isdir("/sys/module/vsock_loopback")
PY = sys.executable
HZ = os.sysconf("SC_CLK_TCK")
def cpu(pid):
    pids = [pid] + [int(c) for t in os.listdir(f"/proc/{pid}/task") for c in open(f"/proc/{pid}/task/{t}/children").read().split()]
    s = 0
    for p in pids:
        try:
            f = open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split(); s += sum(int(x) for x in f[11:15])
        except OSError: pass
    return s / HZ
def start(argv, ready):
    p = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(600):
        if os.path.exists(ready): return p, json.load(open(ready))
        time.sleep(0.1)
    raise SystemExit("no start")
srv, info = start([PY, "-m", "hvsock", "bench", "server", "vsock://any:any", "--ready-file", "/tmp/s.json"], "/tmp/s.json")
port = hvsock.parse_address(info["address"]).port
target = f"vsock://1:{port}"
variants = {}
for name, extra in (("splice", ["--data-path", "splice"]), ("copy", ["--data-path", "copy"])):
    p, i = start([PY, "-m", "hvsock", "relay", "tcp://127.0.0.1:0", target, "--quiet", "--idle-timeout", "0", *extra, "--ready-file", f"/tmp/{name}.json"], f"/tmp/{name}.json")
    variants[name] = (p, i["listen"])
sp = subprocess.Popen(["socat", "TCP-LISTEN:18000,fork,reuseaddr,backlog=1024", f"VSOCK-CONNECT:1:{port}"])
time.sleep(2)
variants["socat"] = (sp, "tcp://127.0.0.1:18000")
res = {k: [] for k in variants}
for r in range(3):
    for name, (p, addr) in variants.items():
        c0 = cpu(p.pid)
        try:
            b = bench.throughput(addr, duration=1.5, streams=16)
            c1 = cpu(p.pid)
            mb = b.details["bytes"] / 1e6
            res[name].append((b.value, round((c1 - c0) / mb * 1e3, 1)))
        except Exception as e:
            res[name].append(("error", str(e)[:80]))
        print(name, res[name][-1], flush=True)
for name, (p, addr) in variants.items(): p.terminate()
srv.terminate()
print("RESULT", json.dumps(res))
