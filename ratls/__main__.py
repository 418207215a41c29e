"""Command line: python -m ratls {inspect,probe,sim-ca,sim-pccs,measure}."""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import signal
import socket
import ssl
import sys
import threading

from ratls.address import default_attestation_port, join_host_port, split_host_port
from ratls.errors import CollateralValidityError, RatlsError, Reason, VerificationError
from ratls.evidence import Evidence, inspect_certificate, parse_quote, verify_certificate, verify_quote
from ratls.identity import measure
from ratls.policy import ALLOWABLE_TCB_STATUSES, TEE_NAMES, Policy
from ratls.simca import DEFAULT_VALIDITY, INTEL_TCB_STATUSES, SimCA


def _inspection_policy(sim_root: str | None) -> Policy:
    """Accepts either TEE, any measurement, debug and TCB status but Revoked: inspect shows what a certificate
    claims and whether its signature chain and key binding hold; deciding whether to trust it is a policy's job."""
    return Policy(tees=TEE_NAMES, allow_debug=True, allowed_tcb_statuses=ALLOWABLE_TCB_STATUSES,
                  allow_simulated=sim_root is not None, sim_root=sim_root)


# Certificates and quotes are KBs; inspect reads no more than this of a file (so not /dev/zero to exhaustion).
MAX_INSPECT_BYTES = 4 << 20


def _read_bounded(path: str, limit: int) -> bytes:
    with open(path, "rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise RatlsError(f"{path}: larger than {limit} bytes; inspect reads certificates and quotes, which are far "
                         "smaller")
    return data


def _looks_like_quote(data: bytes) -> bool:
    """A quote starts with its version, a little-endian u16 (3: SGX, 4 and 5: TDX; others are named and refused by
    the parser); a DER certificate starts 30 8x (u16 0x8x30) and a PEM one with text."""
    version = int.from_bytes(data[:2], "little")
    return len(data) >= 2 and not data.lstrip().startswith(b"-----BEGIN") and 0 < version < 0x100


def _inspect(args: argparse.Namespace) -> int:
    data = _read_bounded(args.file, MAX_INSPECT_BYTES)
    is_quote = _looks_like_quote(data)
    policy = _inspection_policy(args.sim_root)
    out: dict = {"file": args.file, "kind": "quote" if is_quote else "certificate"}
    raw_quote = data
    if not is_quote:
        try:
            info = inspect_certificate(data)
        except VerificationError as e:
            out["error"] = {"reason": e.reason.name, "message": e.message}
            return _emit(out, args.json, 1)
        raw_quote = info.quote
        out["certificate"] = {"sha256": info.cert_fingerprint.hex(), "evidence_extensions":
                              [n for n, q in (("dice", info.dice_claims), ("legacy", info.legacy_quote)) if q]}
    try:
        quote = parse_quote(raw_quote)
        out["quote_type"] = quote.description
        out["quote"] = quote.to_dict()
        out["quote"].pop("cert_data", None)
    except VerificationError as e:
        out["error"] = {"reason": e.reason.name, "message": e.message}
        return _emit(out, args.json, 1)
    try:
        ev: Evidence = (verify_quote(raw_quote, policy, now=args.time, collateral=args.collateral) if is_quote else
                        verify_certificate(data, policy, now=args.time, collateral=args.collateral))
        out["verification"] = {"ok": True, "evidence": ev.to_dict()}
    except VerificationError as e:
        out["verification"] = {"ok": False, "reason": e.reason.name, "message": e.message}
        if isinstance(e, CollateralValidityError):
            out["verification"]["hint"] = _time_hint(e)
    return _emit(out, args.json, 0 if out["verification"]["ok"] else 1)


def _time_hint(e: CollateralValidityError) -> str:
    """Collateral files age (Intel's are valid for about a month): the way to still use one is to verify as of a
    time it was valid, the last second before it expires being the closest to now."""
    from ratls.collateral import _utc  # loaded: the error came from it

    state = (f"collateral expired at {_utc(e.valid_until)}" if e.expired else
             f"collateral was issued at {_utc(e.valid_from)}, after the verification time")
    hint = f"{state}; to verify as of a time the collateral was valid, pass --time <unix seconds>"
    suggested = int(e.valid_until) - 1
    return f"{hint}, e.g. --time {suggested}" if suggested >= e.valid_from else hint


def _emit(out: dict, as_json: bool, rc: int) -> int:
    if as_json:
        print(json.dumps(out, indent=2))
        return rc
    print(f"{out['kind']}: {out['file']}")
    if "error" in out:
        print(f"  unreadable: {out['error']['reason']}: {out['error']['message']}")
        return rc
    if "certificate" in out:
        print(f"  sha256:        {out['certificate']['sha256']}")
        print(f"  evidence:      {', '.join(out['certificate']['evidence_extensions'])}")
    print(f"  quote:         {out['quote_type']}")
    body, td = out["quote"]["body"], out["quote"]["td_report"]
    if td is not None:
        for field in ("mrtd", "rtmr", "mrseam", "report_data"):
            values = td[field] if field == "rtmr" else [td[field]]
            for i, value in enumerate(values):
                name = f"rtmr{i}" if field == "rtmr" else field
                print(f"  {name + ':':<14} {value}")
        print(f"  debug:         {bool(td['td_attributes'] & 1)} (TD attributes 0x{td['td_attributes']:016x})")
    else:
        for field in ("mrenclave", "mrsigner", "isv_prod_id", "isv_svn", "report_data"):
            print(f"  {field + ':':<14} {body[field]}")
        print(f"  debug:         {bool(body['flags'] & 2)} (attributes 0x{body['flags']:x})")
    v = out["verification"]
    if v["ok"]:
        ev = v["evidence"]
        print(f"  signatures:    valid, chain to the {'SIMULATION' if ev['provider'] == 'sim' else 'Intel SGX'} root")
        print(f"  TCB status:    {ev['tcb_status']} {' '.join(ev['advisory_ids'])}")
    else:
        print(f"  verification:  FAILED {v['reason']}: {v['message']}")
        if "hint" in v:
            print(f"  hint:          {v['hint']}")
    return rc


def _served_certificate(host: str, port: int, timeout: float) -> bytes:
    """The certificate a gRPC port presents, read over a TLS 1.3 handshake that verifies nothing (the port then
    refuses us: we present no client certificate): the probe verifies it itself, so it can show a server's claims
    even when they fail the policy, and compare it with the certificate the attestation port presented."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.set_alpn_protocols(["h2"])
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock, \
                context.wrap_socket(sock, server_hostname=host) as tls:
            der = tls.getpeercert(binary_form=True)
    except (OSError, ssl.SSLError) as e:
        raise RatlsError(f"gRPC port {join_host_port(host, port)}: {e}") from None
    if not der:
        raise RatlsError(f"gRPC port {join_host_port(host, port)} presented no certificate")
    return der


def _probe(args: argparse.Namespace) -> int:
    """Attests a live endpoint as a one-way client (no enclave here) and shows the server's evidence and verdicts."""
    from ratls.collateral import from_spec
    from ratls.credentials import credentials

    host, port = split_host_port(args.target)
    att_port = args.attestation_port if args.attestation_port is not None else default_attestation_port(port)
    policy = Policy.from_file(args.policy) if args.policy else _inspection_policy(args.sim_root)
    collateral = from_spec(args.collateral) if args.collateral else None
    attestation_target = join_host_port(host, att_port)
    out: dict = {"target": args.target, "attestation_port": attestation_target,
                 "policy": args.policy or "any measurement (no --policy)"}
    # The protocol itself, as a one-way client: does the server pass our policy in the handshake, and does it
    # admit a client without attestation?
    attested_der = None
    try:
        attested = credentials(policy, provider="none", collateral=collateral).attest(attestation_target,
                                                                                     timeout=args.timeout)
        attested_der = attested.certificate_der
        out["handshake"] = {"ok": True, "admitted": True, "trust_ttl_s": attested.trust_ttl}
    except VerificationError as e:
        out["handshake"] = {"ok": e.reason == Reason.PEER_REFUSED, "admitted": False, "reason": e.reason.name,
                            "message": e.message,
                            "peer_reason": e.peer_reason.name if e.peer_reason is not None else None}
    # What the gRPC port serves, verified here: the server's claims, even when they fail the policy.
    try:
        der = _served_certificate(host, port, args.timeout)
    except RatlsError as e:
        out["grpc_port"] = {"error": str(e)}
        return _emit_probe(out, args.json, 1)
    out["grpc_port"] = {"certificate_sha256": hashlib.sha256(der).hexdigest(),
                        "same_as_attested": None if attested_der is None else der == attested_der}
    try:
        out["server"] = {"ok": True, "evidence": verify_certificate(der, policy, collateral=collateral).to_dict()}
    except VerificationError as e:
        out["server"] = {"ok": False, "reason": e.reason.name, "message": e.message}
    ok = out["server"]["ok"] and out["handshake"]["ok"] and out["grpc_port"]["same_as_attested"] is not False
    return _emit_probe(out, args.json, 0 if ok else 1)


def _emit_probe(out: dict, as_json: bool, rc: int) -> int:
    if as_json:
        print(json.dumps(out, indent=2))
        return rc
    print(f"probe: {out['target']} (attestation port {out['attestation_port']})")
    hs = out["handshake"]
    if hs["admitted"]:
        print(f"  handshake:     attested; the server admits unattested clients (for {hs['trust_ttl_s']:.0f} s)")
    elif hs["ok"]:
        print(f"  handshake:     the server passed our policy and refused us (no enclave here): {hs['peer_reason']}")
    else:
        print(f"  handshake:     FAILED {hs['reason']}: {hs['message']}")
    grpc_port = out["grpc_port"]
    if "error" in grpc_port:
        print(f"  gRPC port:     unreachable: {grpc_port['error']}")
        return rc
    same = {True: "the attested one", False: "NOT the attested one (another server answers the gRPC port: an L4 "
            "balancer without client affinity?)", None: "not compared"}[grpc_port["same_as_attested"]]
    print(f"  certificate:   sha256 {grpc_port['certificate_sha256']}, {same}")
    server = out["server"]
    if server["ok"]:
        ev = server["evidence"]
        for field in ("provider", "mrenclave", "mrsigner", "isv_prod_id", "isv_svn", "debug", "tcb_status"):
            print(f"  {field + ':':<14} {ev[field]}")
        print(f"  policy:        passed ({out['policy']})")
    else:
        print(f"  policy:        FAILED {server['reason']}: {server['message']}")
    return rc


def _sim_ca_tcb(args: argparse.Namespace) -> int:
    ca = SimCA(args.dir)
    if args.status is None:
        if args.advisory:
            raise RatlsError("--advisory needs --status")
        state = ca.tcb(platform=args.platform)
        verb = "is judged"
    else:
        state = ca.set_tcb(args.status, args.advisory, platform=args.platform)
        verb = "will be judged, from the next collateral fetch on,"
    which = "the default simulated platform" if args.platform is None else f"the simulated platform {args.platform}"
    print(f"{which} of {ca.path} {verb} {state.status}"
          f"{' with ' + ', '.join(state.advisory_ids) if state.advisory_ids else ''} "
          f"(TCB evaluation data number {state.tcb_evaluation_data_number})")
    return 0


def _sim_pccs_serve(args: argparse.Namespace) -> int:
    from ratls.sim_pccs import SimPCCS

    if not args.validity_days > 0:
        raise RatlsError("--validity-days must be positive")
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    with SimPCCS(SimCA(args.dir), host=args.host, port=args.port,
                 validity=dt.timedelta(days=args.validity_days), verbose=args.verbose) as pccs:
        print(f"simulated PCCS for {args.dir} at {pccs.url}", flush=True)
        print("WARNING: simulated collateral judges simulated platforms only; it says nothing about real ones",
              flush=True)
        while not stop.wait(3600):
            pass
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ratls", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("inspect", help="show the evidence in an RA-TLS certificate (PEM/DER) or an SGX quote")
    p.add_argument("file", help=f"the certificate or quote file (at most {MAX_INSPECT_BYTES >> 20} MiB)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--sim-root", help="also accept this simulation root (sim-ca directory or root PEM)")
    p.add_argument("--collateral", help="DCAP collateral JSON (dcap-qvl QuoteCollateralV3) for the TCB status")
    p.add_argument("--time", type=int, help="verification time, Unix seconds (default: now)")
    p = sub.add_parser("probe", help="attest a live RA-TLS endpoint (as a client without an enclave) and show the "
                       "server's evidence, whether it passes a policy, and whether it admits unattested clients")
    p.add_argument("target", help="HOST:PORT of the gRPC port")
    p.add_argument("--attestation-port", type=int, metavar="N", help="the attestation port (default: PORT + 1)")
    p.add_argument("--policy", metavar="FILE", help="a TOML policy file (Policy.from_file; default: any measurement, "
                   "debug allowed, every TCB status but Revoked)")
    p.add_argument("--sim-root", help="without --policy: also accept this simulation root (sim-ca directory or PEM)")
    p.add_argument("--collateral", metavar="SPEC", help="TCB collateral: 'gramine', a PCCS URL, or a "
                   "QuoteCollateralV3 JSON file or directory")
    p.add_argument("--timeout", type=float, default=5.0, help="seconds per connection (default: 5)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p = sub.add_parser("sim-ca", help="manage a simulation CA")
    actions = p.add_subparsers(dest="action", required=True)
    a = actions.add_parser("init", help="create a simulation CA in DIR")
    a.add_argument("dir")
    a.add_argument("--force", action="store_true", help="replace an existing CA in DIR")
    a = actions.add_parser("tcb", help="set (or, without --status, show) the TCB status a sim platform is judged "
                           "at by its collateral, from the next fetch on")
    a.add_argument("dir")
    a.add_argument("--platform", metavar="NAME", help="a platform made by `sim-ca platform` (default: the CA's "
                   "default platform, the CA directory itself)")
    a.add_argument("--status", help=f"one of {', '.join(INTEL_TCB_STATUSES)}")
    a.add_argument("--advisory", action="append", default=[], metavar="INTEL-SA-NNNNN",
                   help="an advisory id of that status (repeat for several)")
    a = actions.add_parser("platform", help="create (if needed) the sim platform NAME of the CA in DIR, a sim-ca "
                           "directory of its own at a TCB level of its own, and print its directory")
    a.add_argument("dir")
    a.add_argument("name", help="[A-Za-z0-9_-], 1 to 32 characters")
    p = sub.add_parser("sim-pccs", help="serve a simulation CA's collateral as a PCCS (PCS v4 API)")
    actions = p.add_subparsers(dest="action", required=True)
    a = actions.add_parser("serve", help="serve until SIGINT/SIGTERM")
    a.add_argument("dir", help="the sim-ca directory")
    a.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    a.add_argument("--port", type=int, default=0, help="port to listen on (default: any free one)")
    a.add_argument("--validity-days", type=float, default=DEFAULT_VALIDITY.days,
                   help=f"validity of the TCB Info and QE Identity served (default: {DEFAULT_VALIDITY.days})")
    a.add_argument("--verbose", action="store_true", help="log every request to stderr")
    p = sub.add_parser("measure", help="print the simulated MRENCLAVE of files/directories")
    p.add_argument("files", nargs="+")
    p.add_argument("--root", help="measure names relative to this directory")
    args = parser.parse_args(argv)
    try:
        if args.command == "inspect":
            return _inspect(args)
        if args.command == "probe":
            return _probe(args)
        if args.command == "sim-ca" and args.action == "init":
            ca = SimCA.init(args.dir, force=args.force)
            print(f"simulation CA created in {ca.path}")
            print(f"MRSIGNER of its signer: {ca.mrsigner.hex()}")
            print("WARNING: simulated attestation proves nothing about real enclaves; use it for development only")
            return 0
        if args.command == "sim-ca" and args.action == "platform":
            print(SimCA(args.dir).platform(args.name))
            return 0
        if args.command == "sim-ca":
            return _sim_ca_tcb(args)
        if args.command == "sim-pccs":
            return _sim_pccs_serve(args)
        print(measure(args.files, args.root).hex())
        return 0
    except (RatlsError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
