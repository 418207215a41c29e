"""Emulated hosts: each process in a Linux network namespace of its own, on links that can be slowed, delayed,
made lossy or cut while a job runs. Root only (CAP_NET_ADMIN); needs `ip` and `tc` (iproute2) and `nft` (nftables).

    with Network(["ps0", "worker0", "worker1"]) as net:
        ps = net.run("ps0", [sys.executable, "-m", "runtime.ps", "--listen", f"{net.address('ps0')}:0", ...])
        net.shape("worker1", rate_mbit=100, delay_ms=25, loss_pct=2)   # any time, as often as wanted
        net.cut("worker1"); ...; net.heal("worker1")

Layout: a hub namespace holds a bridge; each host is a namespace with loopback up and one veth pair to the bridge
(`eth0` inside, with an address in a private 10.77.X.0/24 that no route of this machine overlaps). Traffic between
hosts stays inside namespaces the Network made, and nothing is routed out of them. Namespace names start with
`netemu-<creator's PID namespace>-<creator pid>-<4 hex>-`; close() removes every namespace (with its veths,
bridge, nftables tables and qdiscs) and stops every process left in them, on exceptions, Ctrl-C and SIGTERM too;
cleanup_stale() (also run by every new Network, and `python -m runtime.netemu cleanup`) removes those of creators
that died without cleaning up (SIGKILL).

A host's link has three properties (Network.shape), each applying to both directions through it; a path between two
hosts crosses both their links, so its one-way delay is the sum of theirs and the loss compounds:
- rate: tbf on both ends of the veth (egress of each end: the host's upload and its download);
- loss: nftables in the hub, `numgen random mod 10000 < N` drop of frames to and from the host's bridge port;
- delay: netem on both ends of the veth where the kernel has it (probed once per process); otherwise a delay
  relay. The relay emulates latency at the TCP-stream level, not per packet: an nftables rule in each host's
  namespace redirects the TCP connections it opens to other hosts to a relay process in that namespace
  (transparently: clients dial the real address, and the relay finds it with SO_ORIGINAL_DST), which connects on
  and holds the bytes of each direction for the path's one-way delay in a timestamped queue, so throughput is not
  limited by the delay (the queue holds a bandwidth-delay product, up to 64 MiB per direction). Packets are not
  delayed: TCP's handshakes, acknowledgements and retransmissions run at the links' own round trip, so loss costs
  less than on a real long link, and a connection attempt to a cut host is accepted locally and then closed
  instead of timing out. A delay set or raised from zero applies to connections opened after it; relayed
  connections follow every change.
Cut (Network.cut / heal): nftables drops every frame to and from the host's bridge port, as a cable pulled at the
switch: the host's own stack sees silence, not errors.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import contextlib
import ipaddress
import json
import os
import random
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PREFIX = "netemu-"
_NAME = re.compile(r"netemu-(\d+)-(\d+)-[0-9a-f]{4}-")
_HOST = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,31}")
_HUB = "hub"  # the hub namespace's suffix, so no host may be called that
_BRIDGE = "br0"
_TABLE = "netemu"
RELAY_MARK = 0x4E45  # on the relay's own connections, so the redirect rule lets them through
_SO_ORIGINAL_DST = 80  # linux/netfilter_ipv4.h
_RELAY_CHUNK = 1 << 18
_RELAY_QUEUE_BYTES = 64 << 20
_TOOLS = {"ip": "iproute2", "tc": "iproute2", "nft": "nftables"}


class NetworkError(RuntimeError):
    """Emulated hosts cannot be set up or changed here (privileges, tools, or a command that failed)."""


def namespaces_unavailable() -> str | None:
    """Why this process cannot create network namespaces (not root, or `ip netns add` fails), or None. Creates and
    removes one to find out. (Missing tc or nft is not such a reason: Network then fails, naming the package.)"""
    if os.geteuid() != 0:
        return "network namespaces need root (CAP_SYS_ADMIN and CAP_NET_ADMIN)"
    name = f"{_prefix()}probe"
    try:
        _cmd("ip", "netns", "add", name)
    except NetworkError as error:
        return f"cannot create a network namespace: {error}"
    _remove_namespace(name)
    return None


def _check_tools() -> None:
    if os.geteuid() != 0:
        raise NetworkError("emulated hosts need root (CAP_SYS_ADMIN and CAP_NET_ADMIN, for network namespaces)")
    missing = sorted({package for tool, package in _TOOLS.items() if shutil.which(tool) is None})
    if missing:
        raise NetworkError(f"emulated hosts need the Debian packages {', '.join(missing)} (apt-get install -y "
                           f"{' '.join(missing)})")


def _cmd(*argv: str, input: str | None = None) -> str:
    """Run a command; its stdout, or NetworkError with its stderr."""
    try:
        done = subprocess.run(argv, input=input, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise NetworkError(f"{' '.join(argv)}: {error}") from None
    if done.returncode != 0:
        raise NetworkError(f"{' '.join(argv)}: {done.stderr.strip() or f'exit status {done.returncode}'}")
    return done.stdout


@dataclass(frozen=True)
class Shape:
    """A host link's properties: rate in Mbit/s each way (None: unlimited), added one-way delay in ms, loss in %
    of frames each way."""

    rate_mbit: float | None = None
    delay_ms: float = 0.0
    loss_pct: float = 0.0

    def __post_init__(self) -> None:
        if self.rate_mbit is not None and not self.rate_mbit > 0:
            raise ValueError(f"rate: expected Mbit/s > 0, found {self.rate_mbit}")
        if not 0 <= self.delay_ms <= 60_000:
            raise ValueError(f"delay: expected 0..60000 ms, found {self.delay_ms}")
        if not 0 <= self.loss_pct <= 100:
            raise ValueError(f"loss: expected 0..100 %, found {self.loss_pct}")


def parse_link(text: str) -> tuple[str | None, Shape]:
    """`[HOST=]rate=MBIT,delay=MS,loss=PCT` (any of the three, in any order) -> (host or None for every host, Shape).
    """
    host, sep, rest = text.partition("=")
    if sep and host in ("rate", "delay", "loss"):
        host, rest = "", text
    values: dict[str, float] = {}
    for part in rest.split(","):
        key, sep, value = part.strip().partition("=")
        if key not in ("rate", "delay", "loss") or not sep or key in values:
            raise ValueError(f"link {text!r}: expected [HOST=]rate=MBIT,delay=MS,loss=PCT (each at most once)")
        try:
            values[key] = float(value)
        except ValueError:
            raise ValueError(f"link {text!r}: {key}={value!r} is not a number") from None
    shape = Shape(values.get("rate"), values.get("delay", 0.0), values.get("loss", 0.0))
    return host or None, shape


@dataclass(frozen=True)
class Hosts:
    """Where each emulated host is: its namespace and address. What a process needs to place roles into a Network
    that another process owns (Network.save writes it, Hosts.load reads it)."""

    namespaces: dict[str, str]
    addresses: dict[str, str]

    def address(self, host: str) -> str:
        return self.addresses[self._known(host)]

    def command(self, host: str, argv: Sequence[str]) -> list[str]:
        """argv run inside the host's namespace."""
        return ["ip", "netns", "exec", self.namespaces[self._known(host)], *argv]

    def _known(self, host: str) -> str:
        if host not in self.namespaces:
            raise KeyError(f"no emulated host {host!r} (hosts: {', '.join(sorted(self.namespaces))})")
        return host

    def to_dict(self) -> dict[str, Any]:
        return {"hosts": {h: {"namespace": self.namespaces[h], "address": self.addresses[h]} for h in self.namespaces}}

    @classmethod
    def load(cls, path: str | os.PathLike) -> Hosts:
        try:
            hosts = json.loads(Path(path).read_text())["hosts"]
            return cls({h: str(v["namespace"]) for h, v in hosts.items()},
                       {h: str(v["address"]) for h, v in hosts.items()})
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
            raise ValueError(f"{path}: not an emulated network written by Network.save ({error!r})") from None


@dataclass
class _Relay:
    """A host's delay relay process and the port its redirect rule sends connections to."""

    process: subprocess.Popen[str]
    port: int


@dataclass
class _Link:
    index: int
    shape: Shape = field(default_factory=Shape)
    cut: bool = False
    qdisc: tuple[Any, ...] | None = None  # what _set_qdiscs last put on both ends


class Network:
    """Emulated hosts on one bridge (module docstring). Use as a context manager, or call close()."""

    def __init__(self, hosts: Sequence[str]) -> None:
        _check_tools()
        cleanup_stale()
        names = list(hosts)
        for host in names:
            if not _HOST.fullmatch(host) or host == _HUB:
                raise ValueError(f"host name {host!r}: expected {_HOST.pattern}, not {_HUB!r}")
        if len(set(names)) != len(names) or not 1 <= len(names) <= 250:
            raise ValueError(f"hosts: expected 1..250 distinct names, found {names}")
        self.prefix = _prefix()
        self.hub = self.prefix + _HUB
        self.subnet = _free_subnet()
        self.hosts = Hosts({h: self.prefix + h for h in names},
                           {h: str(self.subnet.network_address + i + 1) for i, h in enumerate(names)})
        self._links = {h: _Link(i) for i, h in enumerate(names)}
        self._relays: dict[str, _Relay] = {}
        self._lock = threading.Lock()
        self._created: list[str] = []
        self._closed = False
        self._sigterm: Any = None
        atexit.register(self.close)
        if threading.current_thread() is threading.main_thread() and \
                signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
            # SIGTERM unwinds like Ctrl-C, through the owner's finally blocks and so through close().
            self._sigterm = signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
        try:
            self._create()
        except BaseException:
            self.close()
            raise

    def _create(self) -> None:
        hub = self.hub
        self._add_namespace(hub)
        _cmd("ip", "-n", hub, "link", "set", "lo", "up")
        _cmd("ip", "-n", hub, "link", "add", _BRIDGE, "type", "bridge", "forward_delay", "0", "stp_state", "0")
        _cmd("ip", "-n", hub, "link", "set", _BRIDGE, "up")
        for host, link in self._links.items():
            namespace = self.hosts.namespaces[host]
            self._add_namespace(namespace)
            port = _port(link.index)
            _cmd("ip", "link", "add", port, "netns", hub, "type", "veth", "peer", "name", "eth0", "netns", namespace)
            _cmd("ip", "-n", hub, "link", "set", port, "master", _BRIDGE, "up")
            _cmd("ip", "-n", namespace, "link", "set", "lo", "up")
            _cmd("ip", "-n", namespace, "addr", "add", f"{self.hosts.addresses[host]}/{self.subnet.prefixlen}",
                 "dev", "eth0")
            _cmd("ip", "-n", namespace, "link", "set", "eth0", "up")
        # Every frame to or from a host's port goes through that host's chain, which holds its loss or cut rule.
        rules = [f"add table bridge {_TABLE}",
                 f"add chain bridge {_TABLE} links {{ type filter hook forward priority 0; policy accept; }}"]
        for link in self._links.values():
            chain, port = f"h{link.index}", _port(link.index)
            rules += [f"add chain bridge {_TABLE} {chain}",
                      f"add rule bridge {_TABLE} links iifname {port} jump {chain}",
                      f"add rule bridge {_TABLE} links oifname {port} jump {chain}"]
        _nft(hub, rules)

    def _add_namespace(self, name: str) -> None:
        _cmd("ip", "netns", "add", name)
        self._created.append(name)

    # -- placing processes -----------------------------------------------------------------------------------

    def address(self, host: str) -> str:
        """The host's address, which every other host reaches it at."""
        return self.hosts.address(host)

    def endpoint(self, server_host: str, port: int) -> str:
        """What a client dials for a server's port: the server's own address (delay relays are transparent)."""
        return f"{self.address(server_host)}:{port}"

    def command(self, host: str, argv: Sequence[str]) -> list[str]:
        """argv run inside the host's namespace (for callers that start the process themselves)."""
        return self.hosts.command(host, argv)

    def run(self, host: str, argv: Sequence[str], **popen_kwargs: Any) -> subprocess.Popen:
        """subprocess.Popen of argv inside the host's namespace; the process id is argv's own (`ip netns exec`
        execs it). The caller reaps it; close() kills whatever is still running in the namespaces."""
        return subprocess.Popen(self.command(host, argv), **popen_kwargs)

    def save(self, path: str | os.PathLike) -> Path:
        """Write where each host is (Hosts.load reads it), for a process that places roles in this network, like
        `python -m runtime.launch --network FILE`."""
        path = Path(path)
        path.write_text(json.dumps(self.hosts.to_dict(), indent=2) + "\n")
        return path

    # -- shaping ---------------------------------------------------------------------------------------------

    def shape(self, host: str, rate_mbit: float | None = None, delay_ms: float = 0.0, loss_pct: float = 0.0) -> None:
        """Set the host link's rate (Mbit/s each way; None: unlimited), added one-way delay (ms) and loss (% of
        frames each way), replacing what was set before."""
        shape = Shape(rate_mbit, delay_ms, loss_pct)
        with self._lock:
            link = self._link(host)
            link.shape = shape
            netem = shape.delay_ms > 0 and netem_available()
            qdisc = ("netem", shape.delay_ms, shape.rate_mbit) if netem else ("tbf", shape.rate_mbit) \
                if shape.rate_mbit else None
            if qdisc != link.qdisc:
                self._set_qdiscs(host, link, shape, netem)
                link.qdisc = qdisc
            self._set_filter(link)
            if (shape.delay_ms and not netem) or self._relays:
                self._set_relays()

    def link_shape(self, host: str) -> Shape:
        """What shape() last set for the host's link."""
        with self._lock:
            return self._link(host).shape

    def cut(self, host: str) -> None:
        """Drop every frame to and from the host until heal()."""
        with self._lock:
            link = self._link(host)
            link.cut = True
            self._set_filter(link)

    def heal(self, host: str) -> None:
        with self._lock:
            link = self._link(host)
            link.cut = False
            self._set_filter(link)

    def _link(self, host: str) -> _Link:
        if self._closed:
            raise NetworkError("the network is closed")
        self.hosts.address(host)  # KeyError naming the hosts
        return self._links[host]

    def _set_qdiscs(self, host: str, link: _Link, shape: Shape, netem: bool) -> None:
        ends = ((self.hub, _port(link.index)), (self.hosts.namespaces[host], "eth0"))
        for namespace, device in ends:
            subprocess.run(["ip", "netns", "exec", namespace, "tc", "qdisc", "del", "dev", device, "root"],
                           capture_output=True, timeout=30)  # none there is fine
            if netem:
                rate = ["rate", f"{shape.rate_mbit}mbit"] if shape.rate_mbit else []
                _cmd("ip", "netns", "exec", namespace, "tc", "qdisc", "add", "dev", device, "root", "netem",
                     "delay", f"{shape.delay_ms}ms", *rate, "limit", "100000")
            elif shape.rate_mbit:
                # burst: 10 ms at the rate (tbf's timer must be able to keep up), at least 64 KiB (a GSO frame).
                burst = max(64 << 10, int(shape.rate_mbit * 1e6 / 8 / 100))
                _cmd("ip", "netns", "exec", namespace, "tc", "qdisc", "add", "dev", device, "root", "tbf",
                     "rate", f"{shape.rate_mbit}mbit", "burst", str(burst), "latency", "100ms")

    def _set_filter(self, link: _Link) -> None:
        chain = f"h{link.index}"
        rules = [f"flush chain bridge {_TABLE} {chain}"]
        if link.cut:
            rules.append(f"add rule bridge {_TABLE} {chain} drop")
        elif link.shape.loss_pct:
            rules.append(f"add rule bridge {_TABLE} {chain} numgen random mod 10000 < "
                         f"{round(link.shape.loss_pct * 100)} drop")
        _nft(self.hub, rules)

    def _set_relays(self) -> None:
        """Start the hosts' delay relays (with their redirect rules) if not running, and tell each the delays."""
        for host in self._links:
            if host not in self._relays:
                self._relays[host] = self._start_relay(host)
        delays = json.dumps({self.hosts.addresses[h]: link.shape.delay_ms for h, link in self._links.items()})
        for host, relay in self._relays.items():
            try:
                assert relay.process.stdin is not None
                relay.process.stdin.write(delays + "\n")
                relay.process.stdin.flush()
            except OSError as error:
                raise NetworkError(f"the delay relay of {host} is gone ({error})") from None

    def _start_relay(self, host: str) -> _Relay:
        namespace, own = self.hosts.namespaces[host], self.hosts.addresses[host]
        process = subprocess.Popen(
            self.command(host, [sys.executable, "-m", "runtime.netemu", "relay", "--own", own]),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parents[1])
        assert process.stdout is not None
        line = process.stdout.readline()  # the relay's first line: its port (it exits on a closed stdin)
        if not line.startswith("port "):
            process.kill()
            process.wait(10)
            raise NetworkError(f"the delay relay of {host} did not start (exit status {process.returncode})")
        relay = _Relay(process, int(line.split()[1]))
        _nft(namespace, [
            f"add table ip {_TABLE}",
            f"add chain ip {_TABLE} relay {{ type nat hook output priority -100; policy accept; }}",
            f"add rule ip {_TABLE} relay meta mark {RELAY_MARK} return",
            f"add rule ip {_TABLE} relay ip daddr {own} return",
            f"add rule ip {_TABLE} relay ip daddr {self.subnet} ip protocol tcp redirect to :{relay.port}"])
        return relay

    # -- cleanup ---------------------------------------------------------------------------------------------

    def close(self) -> None:
        """Stop the relays and every process left in the namespaces, and remove the namespaces (their veths,
        bridge, nftables tables and qdiscs go with them). Safe to call more than once."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            for relay in self._relays.values():
                with contextlib.suppress(OSError):
                    assert relay.process.stdin is not None
                    relay.process.stdin.close()
                relay.process.kill()
                relay.process.wait(10)
            for namespace in reversed(self._created):
                _remove_namespace(namespace)
            atexit.unregister(self.close)
            if self._sigterm is not None and threading.current_thread() is threading.main_thread():
                signal.signal(signal.SIGTERM, self._sigterm)

    def __enter__(self) -> Network:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _prefix() -> str:
    """netemu-<creator's PID namespace>-<creator's pid>-<4 hex>-: cleanup_stale() judges only names of its own PID
    namespace, where a pid it cannot see is a dead one."""
    return f"{PREFIX}{os.stat('/proc/self/ns/pid').st_ino}-{os.getpid()}-{secrets.token_hex(2)}-"


def _port(index: int) -> str:
    """A host's bridge port in the hub namespace (interface names: at most 15 characters)."""
    return f"p{index}"


def _nft(namespace: str, rules: list[str]) -> None:
    """Apply nftables commands in a namespace as one transaction."""
    _cmd("ip", "netns", "exec", namespace, "nft", "-f", "-", input="\n".join(rules) + "\n")


def _raise_keyboard_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _free_subnet() -> ipaddress.IPv4Network:
    """A 10.77.X.0/24 that no route of this machine overlaps (the hosts' namespaces route nothing outside it, but
    an overlap would make addresses in logs ambiguous)."""
    routes = json.loads(_cmd("ip", "-j", "-4", "route", "show", "table", "all") or "[]")
    used = []
    for route in routes:
        with contextlib.suppress(ValueError):
            if route.get("dst", "default") != "default":
                used.append(ipaddress.ip_network(route["dst"], strict=False))
    candidates = list(range(1, 255))
    random.shuffle(candidates)
    for third in candidates:
        subnet = ipaddress.ip_network(f"10.77.{third}.0/24")
        if not any(subnet.overlaps(u) for u in used):
            return subnet
    raise NetworkError("no free 10.77.X.0/24 subnet: every one overlaps a route of this machine")


_netem: bool | None = None


def netem_available() -> bool:
    """Whether this kernel has netem (probed once per process, on a scratch namespace's loopback)."""
    global _netem
    if _netem is None:
        name = f"{_prefix()}probe"
        _cmd("ip", "netns", "add", name)
        try:
            probe = subprocess.run(["ip", "netns", "exec", name, "tc", "qdisc", "add", "dev", "lo", "root", "netem",
                                    "delay", "1ms"], capture_output=True, timeout=30)
            _netem = probe.returncode == 0
        finally:
            _remove_namespace(name)
    return _netem


def _remove_namespace(name: str) -> None:
    """Kill what runs in a namespace (a process keeps its namespace, and so the veths, alive), then delete it."""
    pids = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True, timeout=30).stdout.split()
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), signal.SIGKILL)
    subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=30)


def cleanup_stale() -> list[str]:
    """Remove the namespaces of Networks whose creating process is gone (killed before it could clean up), and
    what runs in them; returns their names."""
    listing = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=30).stdout
    pid_namespace = str(os.stat("/proc/self/ns/pid").st_ino)
    removed = []
    for line in listing.splitlines():
        name = line.split(" ", 1)[0]
        match = _NAME.match(name)
        if match is None or match.group(1) != pid_namespace or _alive(int(match.group(2))):
            continue
        _remove_namespace(name)
        removed.append(name)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# ------------------------------------------------------------------------------------------------------------
# the delay relay (runs inside a host's namespace: python -m runtime.netemu relay --own ADDRESS)


class _DelayRelay:
    """Accepts the connections the redirect rule sends it, connects each to its original destination, and holds
    each direction's bytes for the path's one-way delay: own link's plus the destination's (ms, by address, as
    JSON lines on stdin)."""

    def __init__(self, own: str) -> None:
        self.own = own
        self.delays: dict[str, float] = {}

    def delay(self, destination: str) -> float:
        return (self.delays.get(self.own, 0.0) + self.delays.get(destination, 0.0)) / 1000.0

    async def serve(self) -> None:
        loop = asyncio.get_running_loop()
        server = await asyncio.start_server(self._connection, "127.0.0.1", 0)
        print(f"port {server.sockets[0].getsockname()[1]}", flush=True)
        closed = asyncio.Event()

        def read_config() -> None:
            for line in sys.stdin:
                delays = {str(k): float(v) for k, v in json.loads(line).items()}
                loop.call_soon_threadsafe(setattr, self, "delays", delays)
            loop.call_soon_threadsafe(closed.set)  # the owner is gone

        threading.Thread(target=read_config, daemon=True).start()
        await closed.wait()
        server.close()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        client = writer.get_extra_info("socket")
        try:
            raw = client.getsockopt(socket.SOL_IP, _SO_ORIGINAL_DST, 16)
            destination, port = socket.inet_ntoa(raw[4:8]), int.from_bytes(raw[2:4], "big")
            upstream = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            upstream.setsockopt(socket.SOL_SOCKET, getattr(socket, "SO_MARK", 36), RELAY_MARK)
            upstream.setblocking(False)
            await asyncio.get_running_loop().sock_connect(upstream, (destination, port))
        except OSError:
            writer.close()  # as a refused or unreachable connection would end
            return
        for sock in (client, upstream):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        up_reader, up_writer = await asyncio.open_connection(sock=upstream)
        pumps = [asyncio.create_task(self._pump(reader, up_writer, destination)),
                 asyncio.create_task(self._pump(up_reader, writer, destination))]
        done, pending = await asyncio.wait(pumps, return_when=asyncio.FIRST_EXCEPTION)
        for task in pending:
            task.cancel()
        failed = any(task.exception() is not None for task in done)
        for w in (writer, up_writer):
            if failed:
                w.transport.abort()  # a reset on one side is a reset on the other
            else:
                w.close()

    async def _pump(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter, destination: str) -> None:
        """source's bytes to sink, each chunk sent once the delay has passed since it arrived (EOF likewise)."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
        room = asyncio.Event()
        room.set()
        queued = 0

        async def send() -> None:
            nonlocal queued
            while True:
                due, data = await queue.get()
                wait = due - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                if not data:
                    if sink.can_write_eof():
                        sink.write_eof()
                    return
                sink.write(data)
                await sink.drain()
                queued -= len(data)
                if queued <= _RELAY_QUEUE_BYTES:
                    room.set()

        sender = asyncio.create_task(send())
        try:
            while True:
                data = await source.read(_RELAY_CHUNK)
                queue.put_nowait((loop.time() + self.delay(destination), data))
                if not data:
                    break
                queued += len(data)
                if queued > _RELAY_QUEUE_BYTES:
                    room.clear()
                    await room.wait()
            await sender
        finally:
            sender.cancel()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m runtime.netemu", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("cleanup", help="remove the namespaces of emulated networks whose creator is gone")
    relay = commands.add_parser("relay", help="(internal) a host's delay relay; Network starts it")
    relay.add_argument("--own", required=True, help="this host's address")
    args = parser.parse_args(argv)
    if args.command == "cleanup":
        for name in cleanup_stale():
            print(f"removed {name}")
        return 0
    asyncio.run(_DelayRelay(args.own).serve())
    return 0


if __name__ == "__main__":
    sys.exit(main())
