"""Put a TCP server on this machine behind an emulated 5G/4G link: rate, latency, jitter, outages.

The uploader runs normally in the root network namespace and talks to ``http://10.203.S.2:PORT``
instead of the server's own address. That address lives in a network namespace we create,
at the far end of a veth pair:

    client (root ns) --veth, tbf at the uplink rate--> 10.203.S.2:PORT  [namespace ssbenchS]
        relay: holds each burst for the one-way delay, then forwards to the real server
        (e.g. 127.0.0.1:9000, root ns); replies come back the same way, the namespace side of
        the veth shaped at the downlink rate.

The rate is shaped in the kernel (tbf). This kernel has no ``netem``, so the relay adds the
latency: a delay per direction drawn afresh for each burst (mean +- jitter, uniform), never
reordering bytes, plus one round trip before a new connection's first byte (the TCP handshake
the relay answers locally). Where ``netem`` exists it delays packets in the kernel instead and
the relay only forwards. Outages take the namespace end of the veth down: packets are dropped
(static ARP entries keep it a black hole), open connections stall and retry, new ones time out.

The relay process stays in the root namespace (so it can reach a server on 127.0.0.1) and
opens its listening socket inside the link's namespace with setns(2).

    with EmulatedLink(profile="5g", target=("127.0.0.1", 9000)) as link:
        link.endpoint_url            # "http://10.203.0.2:18000"
        link.outage(seconds=30)      # or outage(30, wait=False) -> a Thread

    python bench/link.py up --profile 5g --target 127.0.0.1:9000   # Ctrl-C to stop
    python bench/link.py outage --seconds 30                        # on a running link
    python bench/link.py cleanup                                    # remove leftovers

Needs root and iproute2 (``apt-get install iproute2``).
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import os
import random
import re
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

CLONE_NEWNET = 0x40000000
PR_SET_PDEATHSIG = 1
CHUNK = 1 << 16
RUN_DIR = Path("/run")  # relay pid files, so `cleanup` can stop a relay a crashed run left


class LinkError(RuntimeError):
    """The emulated link cannot be set up or used."""


@dataclass(frozen=True)
class Profile:
    """A link's shape. Latency figures are round trips; each direction gets half."""

    name: str
    up_mbit: float
    down_mbit: float
    rtt_ms: float
    jitter_ms: float  # round-trip delay spreads over rtt_ms +- jitter_ms


PROFILES = {
    # uplinks from the field reports: 5G 58-77 Mbit/s measured, 100 Mbit/s the remote-pathology target
    "5g": Profile("5g", up_mbit=100, down_mbit=300, rtt_ms=20, jitter_ms=5),
    "4g": Profile("4g", up_mbit=20, down_mbit=50, rtt_ms=50, jitter_ms=15),
}


@dataclass(frozen=True)
class Names:
    """Namespace, interfaces and addresses of one link; `slot` keeps concurrent links apart."""

    slot: int

    @property
    def netns(self) -> str:
        return f"ssbench{self.slot}"

    @property
    def client_if(self) -> str:
        return f"ssb{self.slot}c"

    @property
    def server_if(self) -> str:
        return f"ssb{self.slot}s"

    @property
    def pidfile(self) -> Path:
        return RUN_DIR / f"ssbench-link{self.slot}.pid"

    @property
    def client_ip(self) -> str:
        return f"10.203.{self.slot}.1"

    @property
    def server_ip(self) -> str:
        return f"10.203.{self.slot}.2"


# ---------------------------------------------------------------- kernel side


def run(*args: str, netns: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run an iproute2 command (inside `netns` if given); a failure is a one-line LinkError."""
    cmd = [args[0], "-n", netns, *args[1:]] if netns else list(args)
    result = subprocess.run(cmd, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise LinkError(f"`{' '.join(cmd)}` failed: {result.stderr.strip() or result.returncode}")
    return result


def require_privileges() -> None:
    """Namespaces need root and iproute2: say so plainly rather than fail half-way."""
    if os.geteuid() != 0:
        raise LinkError("bench/link.py needs root (it creates a network namespace and a veth pair)")
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            raise LinkError(f"the `{tool}` command is missing: apt-get install iproute2")


def cleanup(slot: int | None = None) -> list[str]:
    """Remove what a link left behind (all slots if None); safe to repeat and after a crash."""
    removed = []
    namespaces = run("ip", "netns", "list", check=False).stdout.split()
    links = re.findall(r"^\d+: (ssb\d+c)[@:]", run("ip", "-o", "link", "show", check=False).stdout, re.M)
    pidfiles = [p.name for p in RUN_DIR.glob("ssbench-link*.pid")]
    found = [re.fullmatch(r"ssbench(\d+)|ssb(\d+)c|ssbench-link(\d+)\.pid", n) for n in [*namespaces, *links, *pidfiles]]
    slots = {slot} if slot is not None else {int(next(g for g in m.groups() if g)) for m in found if m}
    for s in sorted(slots):
        names = Names(s)
        if stop_pidfile(names.pidfile):
            removed.append(f"relay of slot {s}")
        if names.client_if in links and run("ip", "link", "del", names.client_if, check=False).returncode == 0:
            removed.append(names.client_if)
        if names.netns in namespaces and run("ip", "netns", "del", names.netns, check=False).returncode == 0:
            removed.append(names.netns)
    return removed


def stop_pidfile(pidfile: Path) -> bool:
    """Stop the relay recorded in `pidfile`, if that pid is still our relay; remove the file."""
    try:
        pid = int(pidfile.read_text())
    except (OSError, ValueError):
        return False
    pidfile.unlink(missing_ok=True)
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    if b"link.py" not in cmdline or b"relay" not in cmdline:
        return False  # the pid was reused by something else: leave it alone
    os.kill(pid, signal.SIGTERM)
    return True


def has_netem(dev: str, netns: str | None) -> bool:
    """Whether this kernel has the netem qdisc (probed on our own interface)."""
    probe = run("tc", "qdisc", "add", "dev", dev, "root", "handle", "9:", "netem", "delay", "1ms", netns=netns, check=False)
    if probe.returncode == 0:
        run("tc", "qdisc", "del", "dev", dev, "root", netns=netns)
        return True
    return False


def shape(dev: str, netns: str | None, mbit: float, delay_ms: float, jitter_ms: float, netem: bool) -> None:
    """tbf at `mbit` on dev's egress, with netem delay under it when the kernel has netem."""
    rate_bytes = mbit * 1e6 / 8
    burst = max(32 * 1024, int(rate_bytes * 0.002))  # >= 2 ms of data and several full packets
    run("tc", "qdisc", "replace", "dev", dev, "root", "handle", "1:", "tbf", "rate", f"{mbit}mbit",
        "burst", str(burst), "latency", "50ms", netns=netns)
    if netem:
        run("tc", "qdisc", "add", "dev", dev, "parent", "1:1", "handle", "10:", "netem",
            "delay", f"{delay_ms}ms", f"{jitter_ms}ms", netns=netns)


def mac(dev: str, netns: str | None) -> str:
    return run("ip", "-o", "link", "show", dev, netns=netns).stdout.split("link/ether ")[1].split()[0]


def create(names: Names, profile: Profile, use_netem: bool | None) -> bool:
    """Create namespace, veth pair, addresses and shaping; returns whether netem does the delay."""
    ns, c, s = names.netns, names.client_if, names.server_if
    run("ip", "netns", "add", ns)
    run("ip", "link", "add", c, "type", "veth", "peer", "name", s, "netns", ns)
    run("ip", "addr", "add", f"{names.client_ip}/30", "dev", c)
    run("ip", "addr", "add", f"{names.server_ip}/30", "dev", s, netns=ns)
    run("ip", "link", "set", c, "up")
    run("ip", "link", "set", s, "up", netns=ns)
    run("ip", "link", "set", "lo", "up", netns=ns)
    # static neighbours: during an outage packets are silently lost instead of failing ARP
    run("ip", "neigh", "replace", names.server_ip, "lladdr", mac(s, ns), "dev", c, "nud", "permanent")
    run("ip", "neigh", "replace", names.client_ip, "lladdr", mac(c, None), "dev", s, "nud", "permanent", netns=ns)
    netem = has_netem(c, None) if use_netem is None else use_netem
    half_rtt, half_jitter = profile.rtt_ms / 2, profile.jitter_ms / 2
    shape(c, None, profile.up_mbit, half_rtt, half_jitter, netem)
    shape(s, ns, profile.down_mbit, half_rtt, half_jitter, netem)
    return netem


def set_link(names: Names, up: bool) -> None:
    """Take the namespace end of the veth down (outage) or up again."""
    run("ip", "link", "set", names.server_if, "up" if up else "down", netns=names.netns)


# ---------------------------------------------------------------- the relay


class Delay:
    """One direction's one-way delay: a fresh jittered value per burst, never reordering.

    A burst starts when everything sent before has been delivered; within a burst all data
    keeps the delay drawn at its start, so bytes stay in order and the mean stays the mean.
    """

    def __init__(self, mean_s: float, jitter_s: float) -> None:
        self.mean, self.jitter = mean_s, jitter_s
        self.current = mean_s
        self.due = 0.0

    def sample(self) -> float:
        return max(0.0, self.mean + random.uniform(-self.jitter, self.jitter))

    def schedule(self, now: float) -> float:
        """When data arriving now is to be delivered."""
        if now >= self.due:
            self.current = self.sample()
        self.due = max(now + self.current, self.due)
        return self.due


async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: Delay) -> None:
    """Copy one direction, each chunk held until its due time; EOF is passed on after the data."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue(maxsize=256)  # <= 16 MiB in flight

    async def pump() -> None:
        try:
            while chunk := await reader.read(CHUNK):
                await queue.put((delay.schedule(loop.time()), chunk))
        except ConnectionError:
            pass
        await queue.put((delay.schedule(loop.time()), b""))

    pumping = asyncio.create_task(pump())
    try:
        while True:
            due, chunk = await queue.get()
            if (wait := due - loop.time()) > 0:
                await asyncio.sleep(wait)
            if not chunk:
                if writer.can_write_eof():
                    writer.write_eof()
                return
            writer.write(chunk)
            await writer.drain()
    finally:
        pumping.cancel()


async def relay(listen: socket.socket, target: tuple[str, int], one_way_s: float, jitter_s: float) -> None:
    """Serve forever: every accepted connection is forwarded to `target` through two Delays."""

    async def handle(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            server_r, server_w = await asyncio.open_connection(*target)
        except OSError:
            client_w.close()
            return
        up, down = Delay(one_way_s, jitter_s), Delay(one_way_s, jitter_s)
        await asyncio.sleep(up.sample() + down.sample())  # the handshake round trip
        tasks = [asyncio.create_task(pipe(client_r, server_w, up)), asyncio.create_task(pipe(server_r, client_w, down))]
        try:
            await asyncio.gather(*tasks)
        except (ConnectionError, OSError):
            pass
        finally:
            for task in tasks:
                task.cancel()
            for w in (client_w, server_w):
                w.close()

    server = await asyncio.start_server(handle, sock=listen)
    async with server:
        await server.serve_forever()


def listen_in_netns(netns: str, host: str, port: int) -> socket.socket:
    """A listening socket inside `netns` while this process stays in its own namespace."""
    libc = ctypes.CDLL(None, use_errno=True)
    with open("/proc/self/ns/net", "rb") as own, open(f"/run/netns/{netns}", "rb") as target:
        if libc.setns(target.fileno(), CLONE_NEWNET) != 0:
            raise LinkError(f"setns into {netns} failed: {os.strerror(ctypes.get_errno())}")
        try:
            return socket.create_server((host, port), backlog=256)
        finally:
            if libc.setns(own.fileno(), CLONE_NEWNET) != 0:
                raise LinkError(f"setns back from {netns} failed: {os.strerror(ctypes.get_errno())}")


# ---------------------------------------------------------------- the link


class EmulatedLink:
    """Context manager: a shaped path from this namespace to `target`, torn down on exit."""

    def __init__(
        self,
        profile: str | Profile = "5g",
        target: tuple[str, int] = ("127.0.0.1", 9000),
        *,
        port: int = 18000,
        slot: int = 0,
        use_netem: bool | None = None,
    ) -> None:
        if isinstance(profile, str) and profile not in PROFILES:
            raise LinkError(f"unknown profile {profile!r}; known: {', '.join(PROFILES)}")
        if not 0 <= slot <= 255:
            raise LinkError(f"slot must be 0..255, not {slot}")
        self.profile = PROFILES[profile] if isinstance(profile, str) else profile
        self.target = target
        self.port = port
        self.names = Names(slot)
        self.use_netem = use_netem
        self.netem = False
        self._relay: subprocess.Popen[str] | None = None

    @property
    def endpoint_url(self) -> str:
        return f"http://{self.names.server_ip}:{self.port}"

    def __enter__(self) -> EmulatedLink:
        require_privileges()
        cleanup(self.names.slot)
        try:
            self.netem = create(self.names, self.profile, self.use_netem)
            self._start_relay()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.close()

    def _start_relay(self) -> None:
        delay = 0.0 if self.netem else self.profile.rtt_ms / 2000
        jitter = 0.0 if self.netem else self.profile.jitter_ms / 2000
        cmd = [
            sys.executable, str(Path(__file__).resolve()), "relay",
            "--netns", self.names.netns,
            "--listen", f"{self.names.server_ip}:{self.port}",
            "--target", f"{self.target[0]}:{self.target[1]}",
            "--one-way-ms", str(delay * 1000), "--jitter-ms", str(jitter * 1000),
        ]  # fmt: skip
        self._relay = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.names.pidfile.write_text(str(self._relay.pid))
        assert self._relay.stdout is not None
        if self._relay.stdout.readline().strip() != "ready":
            self._relay.wait(timeout=5)
            raise LinkError(f"relay did not start: {self._relay.stderr.read().strip() if self._relay.stderr else ''}")

    def outage(self, seconds: float, *, wait: bool = True) -> threading.Thread | None:
        """Cut the link for `seconds`; with wait=False return at once (join the thread to wait)."""
        set_link(self.names, up=False)

        def restore() -> None:
            time.sleep(seconds)
            set_link(self.names, up=True)

        if wait:
            restore()
            return None
        thread = threading.Thread(target=restore, name="link-outage", daemon=True)
        thread.start()
        return thread

    def close(self) -> None:
        """Stop the relay and remove namespace and veth; idempotent."""
        if self._relay is not None:
            self._relay.terminate()
            try:
                self._relay.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._relay.kill()
                self._relay.wait()
            for stream in (self._relay.stdout, self._relay.stderr):
                if stream:
                    stream.close()
            self._relay = None
        self.names.pidfile.unlink(missing_ok=True)
        cleanup(self.names.slot)


# ---------------------------------------------------------------- command line


def host_port(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host, int(port)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="bring a link up, print its endpoint URL, hold it until Ctrl-C")
    up.add_argument("--profile", choices=sorted(PROFILES), default="5g")
    up.add_argument("--target", type=host_port, default=("127.0.0.1", 9000), help="the real server")
    up.add_argument("--port", type=int, default=18000, help="port of the emulated endpoint")
    up.add_argument("--slot", type=int, default=0, help="0-255: several links side by side")
    up.add_argument("--no-netem", action="store_true", help="delay in the relay even if netem exists")
    out = sub.add_parser("outage", help="cut a running link for some seconds")
    out.add_argument("--seconds", type=float, required=True)
    out.add_argument("--slot", type=int, default=0)
    clean = sub.add_parser("cleanup", help="remove namespaces, veths and relays left behind")
    clean.add_argument("--slot", type=int, default=None, help="default: every slot")
    rel = sub.add_parser("relay")  # internal: started by EmulatedLink
    rel.add_argument("--netns", required=True)
    rel.add_argument("--listen", type=host_port, required=True)
    rel.add_argument("--target", type=host_port, required=True)
    rel.add_argument("--one-way-ms", type=float, required=True)
    rel.add_argument("--jitter-ms", type=float, required=True)
    args = parser.parse_args(argv)
    try:
        if args.command == "relay":
            # die with the process that started us, so a crashed benchmark leaves no relay behind
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
            signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
            listen = listen_in_netns(args.netns, *args.listen)
            print("ready", flush=True)
            # select() wakes within ~0.2 ms; epoll rounds timeouts up to whole ms, which adds ~1 ms
            # of extra delay per direction once delays are jittered (fine below 1024 descriptors)
            with asyncio.Runner(loop_factory=lambda: asyncio.SelectorEventLoop(selectors.SelectSelector())) as runner:
                runner.run(relay(listen, args.target, args.one_way_ms / 1000, args.jitter_ms / 1000))
        elif args.command == "up":
            with EmulatedLink(args.profile, args.target, port=args.port, slot=args.slot,
                              use_netem=False if args.no_netem else None) as link:  # fmt: skip
                p = link.profile
                how = "netem" if link.netem else "relay"
                print(link.endpoint_url, flush=True)
                print(f"{p.name}: up {p.up_mbit:g} Mbit/s, down {p.down_mbit:g} Mbit/s, RTT {p.rtt_ms:g} "
                      f"+- {p.jitter_ms:g} ms ({how} delay) -> {args.target[0]}:{args.target[1]}; Ctrl-C stops",
                      file=sys.stderr)  # fmt: skip
                signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
                signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started with SIGINT ignored
                try:
                    signal.pause()
                except KeyboardInterrupt:
                    pass
        elif args.command == "outage":
            require_privileges()
            names = Names(args.slot)
            if names.netns not in run("ip", "netns", "list").stdout.split():
                raise LinkError(f"no link in slot {args.slot}: start one with `bench/link.py up`")
            set_link(names, up=False)
            try:
                time.sleep(args.seconds)
            finally:
                set_link(names, up=True)
        elif args.command == "cleanup":
            require_privileges()
            removed = cleanup(args.slot)
            print("removed: " + (", ".join(removed) if removed else "nothing"))
    except LinkError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
