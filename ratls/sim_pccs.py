"""A simulated PCCS: the PCS v4 API of a sim CA's collateral over HTTP, so collateral clients (ratls.collateral.PCCS,
dcap-qvl's get_collateral) fetch sim collateral exactly as they fetch Intel's.

    with SimPCCS(SimCA(dir)) as pccs:          # or: python -m ratls sim-pccs serve DIR --port 8081
        ... PCCS(pccs.url) ...

It serves, under /sgx/certification/v4/, tcb?fmspc=, qe/identity, pckcrl?ca=platform&encoding=der and rootcacrl, and
under /tdx/certification/v4/ TDX's tcb?fmspc= and (TD) qe/identity (SimCA.pcs_response says how), reading the CA's
TCB state on every request, so `SimCA.set_tcb` (or `python -m ratls sim-ca tcb`) shows in the next fetch. Its TCB
Info has a level for each of the CA's platforms (`SimCA.platform`), so one PCCS judges processes quoting through
different platform directories each at its platform's status. TCB Info and QE Identity are issued at the time of the
request and valid for `validity`. Plain HTTP on the loopback address by default: it is a test fixture.
"""

from __future__ import annotations

import collections
import datetime as dt
import http.server
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable

from ratls.errors import RatlsError
from ratls.simca import DEFAULT_VALIDITY, PCS_API, PCS_TDX_API, SimCA

_ENDPOINTS = ("tcb", "qe/identity", "pckcrl", "rootcacrl")


class SimPCCS:
    """A threaded HTTP server answering the PCS v4 API from a SimCA (see the module docstring).

    `url` is known once constructed (the port is bound then; port 0 picks a free one); `start()` serves in a
    daemon thread, `close()` stops; as a context manager it starts and closes. `requests` counts the requests
    per endpoint ("tcb", "qe/identity", "pckcrl", "rootcacrl"; TDX's "tdx/tcb", "tdx/qe/identity"; any other
    path under its own name)."""

    def __init__(self, ca: SimCA, *, host: str = "127.0.0.1", port: int = 0,
                 validity: dt.timedelta = DEFAULT_VALIDITY, clock: Callable[[], float] = time.time,
                 verbose: bool = False) -> None:
        ca._require_pcs()  # a CA directory without collateral fails here, with how to fix it, not per request
        self.ca = ca
        self.validity = validity
        self.clock = clock
        self.verbose = verbose
        self._counts: collections.Counter[str] = collections.Counter()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._server = http.server.ThreadingHTTPServer((host, port), _handler(self))
        self._server.daemon_threads = True

    @property
    def url(self) -> str:
        """The base URL to give a PCCS client, e.g. http://127.0.0.1:41234."""
        host, port = self._server.server_address[:2]
        host = f"[{host}]" if ":" in str(host) else host
        return f"http://{host}:{port}"

    @property
    def requests(self) -> collections.Counter[str]:
        """A snapshot of the number of requests served, per endpoint."""
        with self._lock:
            return collections.Counter(self._counts)

    def start(self) -> SimPCCS:
        if self._thread is None:
            # A short poll interval: close() (shutdown) waits for it.
            self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), name="sim-pccs",
                                            daemon=True)
            self._thread.start()
        return self

    def close(self) -> None:
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join()
            self._thread = None
        self._server.server_close()

    def __enter__(self) -> SimPCCS:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _count(self, path: str) -> None:
        rel = path
        if path.startswith(PCS_API + "/") and path[len(PCS_API) + 1:] in _ENDPOINTS:
            rel = path[len(PCS_API) + 1:]
        elif path.startswith(PCS_TDX_API + "/") and path[len(PCS_TDX_API) + 1:] in _ENDPOINTS[:2]:
            rel = "tdx/" + path[len(PCS_TDX_API) + 1:]
        with self._lock:
            self._counts[rel] += 1


def _handler(pccs: SimPCCS) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        server_version = "ratls-sim-pccs"
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            pccs._count(urllib.parse.urlsplit(self.path).path)
            try:
                status, headers, body = pccs.ca.pcs_response(self.path, now=pccs.clock(), validity=pccs.validity)
            except RatlsError as e:  # e.g. the CA directory was replaced by an old one meanwhile
                status, headers, body = 500, {"Content-Type": "text/plain; charset=utf-8"}, f"{e}\n".encode()
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (the base class's name)
            if pccs.verbose:
                sys.stderr.write(f"sim-pccs: {self.address_string()} {format % args}\n")

    return Handler
