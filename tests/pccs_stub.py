"""A local stand-in for a PCCS that serves one platform's collateral (a dcap-qvl QuoteCollateralV3 JSON) on the
PCS v4 paths, as Intel's PCCS lays it out, and can be told to misbehave per item."""

from __future__ import annotations

import http.server
import json
import threading
import time
import urllib.parse
from collections import Counter
from dataclasses import dataclass


@dataclass
class Fault:
    """How to spoil one item's response: `body(original) -> new body`, an HTTP status, a delay before the body,
    a Content-Length that announces more than is sent, or a drip of the body one byte per `drip` seconds."""

    body: object = None  # Callable[[bytes], bytes] | None
    status: int = 200
    delay: float = 0.0
    truncate_to: int | None = None
    drip: float = 0.0


class PccsStub:
    ITEMS = {"pckcrl": "PCK CRL", "tcb": "TCB Info", "qe/identity": "QE Identity", "rootcacrl": "root CA CRL"}

    def __init__(self, collateral_json: str, *, tee: str = "sgx") -> None:
        """`tee`: whose API serves the TCB Info and QE Identity (/tdx/certification/v4/ for TDX collateral); the
        CRLs are always under /sgx/certification/v4/, as at Intel's PCS."""
        c = json.loads(collateral_json)
        self.prefixes = {"pckcrl": "/sgx/certification/v4/", "rootcacrl": "/sgx/certification/v4/",
                         "tcb": f"/{tee}/certification/v4/", "qe/identity": f"/{tee}/certification/v4/"}
        quote = urllib.parse.quote
        self.responses = {
            "pckcrl": (bytes.fromhex(c["pck_crl"]), {"SGX-PCK-CRL-Issuer-Chain": quote(c["pck_crl_issuer_chain"])}),
            "tcb": (f'{{"tcbInfo":{c["tcb_info"]},"signature":"{c["tcb_info_signature"]}"}}'.encode(),
                    {"TCB-Info-Issuer-Chain": quote(c["tcb_info_issuer_chain"])}),
            "qe/identity": (f'{{"enclaveIdentity":{c["qe_identity"]},"signature":"{c["qe_identity_signature"]}"}}'
                            .encode(), {"SGX-Enclave-Identity-Issuer-Chain": quote(c["qe_identity_issuer_chain"])}),
            "rootcacrl": (c["root_ca_crl"].encode(), {}),
        }
        self.faults: dict[str, Fault] = {}
        self.requests: Counter[str] = Counter()
        stub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                full = urllib.parse.urlsplit(self.path).path
                path = full.rpartition("/certification/v4/")[2]
                stub.requests[path] += 1
                if path not in stub.responses or not full.startswith(stub.prefixes[path]):
                    self.send_error(404)
                    return
                body, headers = stub.responses[path]
                fault = stub.faults.get(path, Fault())
                if fault.body is not None:
                    body = fault.body(body)
                time.sleep(fault.delay)
                self.send_response(fault.status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                try:
                    if fault.drip:
                        for i in range(len(body)):
                            self.wfile.write(body[i:i + 1])
                            self.wfile.flush()
                            time.sleep(fault.drip)
                    else:
                        self.wfile.write(body[:fault.truncate_to] if fault.truncate_to is not None else body)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def log_message(self, *args) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)

    def __enter__(self) -> PccsStub:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
