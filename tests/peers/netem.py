#!/usr/bin/env python3
"""A user-space netem: a network namespace wired to the host through two TUN devices, with
every packet passing through this process, which delays, drops, reorders, duplicates or
holds it (link down) as told.

Why not `tc qdisc ... netem`: the kernels this project is tested on (CI and development VMs)
are built without sch_netem ("Specified qdisc kind is unknown"). This does the same to real IP
packets of real TCP connections (the kernels' TCP stacks on both sides see the loss, delay and
reordering), with the same knobs.

    netem.py NS SUBNET CONTROL
      NS       network namespace to create (deleted again on exit)
      SUBNET   first three octets, e.g. 10.77.3: the namespace gets .2, the host side .1
      CONTROL  JSON file, re-read whenever it changes (write a temp file and rename it):
               {"loss": 0.05, "delay_ms": 40, "jitter_ms": 30, "reorder": 0.1,
                "duplicate": 0.01, "down": false}
               loss/reorder/duplicate are per-packet probabilities; `reorder` sends a packet
               at once, ahead of the delayed ones (netem's meaning); `down` drops everything
               (a cut cable: TCP keeps retransmitting until it is up again).

Prints "ready" once the namespace is up; on SIGTERM prints the packet counts as one JSON
line and removes the namespace. Linux only, needs root (CAP_NET_ADMIN).
"""

import fcntl
import heapq
import json
import os
import random
import select
import signal
import struct
import subprocess
import sys
import time

TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000


def sh(*args):
    subprocess.run(args, check=True, stdout=subprocess.DEVNULL)


def tun(name):
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI))
    return fd


class Control:
    def __init__(self, path):
        self.path = path
        self.mtime = None
        self.cfg = {}

    def get(self):
        try:
            m = os.stat(self.path).st_mtime_ns
        except FileNotFoundError:
            return self.cfg
        if m != self.mtime:
            try:
                with open(self.path) as f:
                    self.cfg = json.load(f)
                self.mtime = m
            except (OSError, ValueError):
                pass  # half-written: keep the last one
        return self.cfg


def main():
    ns, subnet, control = sys.argv[1], sys.argv[2], Control(sys.argv[3])
    tag = ns[-8:]
    inner, outer = f"ti{tag}", f"to{tag}"
    subprocess.run(["ip", "netns", "del", ns], stderr=subprocess.DEVNULL)
    sh("ip", "netns", "add", ns)
    fds = {}
    try:
        fds["in"] = tun(inner)
        fds["out"] = tun(outer)
        sh("ip", "link", "set", inner, "netns", ns)
        sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh("ip", "-n", ns, "addr", "add", f"{subnet}.2", "peer", f"{subnet}.1", "dev", inner)
        sh("ip", "-n", ns, "link", "set", inner, "up")
        sh("ip", "addr", "add", f"{subnet}.1", "peer", f"{subnet}.2", "dev", outer)
        sh("ip", "link", "set", outer, "up")
        run(fds, control)
    finally:
        for fd in fds.values():
            os.close(fd)
        subprocess.run(["ip", "netns", "del", ns], stderr=subprocess.DEVNULL)


def run(fds, control):
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    signal.signal(signal.SIGINT, lambda *_: stop.append(1))
    rng = random.Random(int(os.environ.get("NETEM_SEED", "1")))
    # (due time, tie-breaker, destination fd, packet)
    queue = []
    n = 0
    counts = {k: 0 for k in ("packets", "forwarded", "lost", "down", "reordered", "duplicated")}
    peer = {fds["in"]: fds["out"], fds["out"]: fds["in"]}
    print("ready", flush=True)
    while not stop:
        now = time.monotonic()
        timeout = 0.1 if not queue else max(0.0, min(0.1, queue[0][0] - now))
        try:
            readable, _, _ = select.select(list(peer), [], [], timeout)
        except InterruptedError:
            continue
        cfg = control.get()
        for src in readable:
            for _ in range(256):
                try:
                    pkt = os.read(src, 65536)
                except BlockingIOError:
                    break
                counts["packets"] += 1
                if cfg.get("down"):
                    counts["down"] += 1
                    continue
                if rng.random() < cfg.get("loss", 0.0):
                    counts["lost"] += 1
                    continue
                copies = 2 if rng.random() < cfg.get("duplicate", 0.0) else 1
                counts["duplicated"] += copies - 1
                for _ in range(copies):
                    delay = cfg.get("delay_ms", 0.0)
                    jitter = cfg.get("jitter_ms", 0.0)
                    if rng.random() < cfg.get("reorder", 0.0) and delay > 0:
                        delay = 0.0
                        counts["reordered"] += 1
                    elif jitter:
                        delay = max(0.0, rng.uniform(delay - jitter, delay + jitter))
                    n += 1
                    heapq.heappush(queue, (time.monotonic() + delay / 1000.0, n, peer[src], pkt))
        now = time.monotonic()
        while queue and queue[0][0] <= now:
            _, _, dst, pkt = heapq.heappop(queue)
            if control.get().get("down"):
                counts["down"] += 1
                continue
            try:
                os.write(dst, pkt)
                counts["forwarded"] += 1
            except OSError:
                counts["lost"] += 1
    print(json.dumps(counts), flush=True)


if __name__ == "__main__":
    main()
