"""Run a whole training job on this machine: python -m runtime.launch --mode hfl --workers 2

Starts the PS (one or --ps-shards processes) and the workers as separate processes linked by RA-TLS (by default:
the sim provider with a throwaway sim CA, and a policy pinned to the MRENCLAVE measured over the runtime's
files), gives each worker its own synthetic data partition (or --data files), prints progress, and ends with a
report of held-out loss, accuracy and AUC, throughput, bytes on the wire and attestation times on the console,
as JSON (<out>/report.json) and in TensorBoard logs (<out>/tensorboard). Every child is stopped when the
launcher exits, fails or is interrupted. Child logs are in <out>/logs.

With --emulate-hosts (root only) every process runs on an emulated host of its own: a Linux network namespace named
after its role (ps0, chief, worker0, ...), with its own address on a bridge, which it binds and advertises
(runtime.netemu); --link shapes the hosts' links (rate, delay, loss). --network FILE places the processes into an
emulated network that another program made and shapes while the job runs (runtime.netemu.Network.save), as the
network-fault tests and WAN benchmarks do.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np

from runtime import metrics, netemu, transport
from runtime.data import (
    DataError,
    add_format_arguments,
    add_max_bad_fraction_argument,
    check_format,
    synthetic_partitions,
)
from runtime.model import add_model_arguments, model_config
from runtime.report import write_json_atomically

READY_TIMEOUT = 60.0
# The console shows the lines our processes print themselves; TensorFlow's start-up chatter stays in the logs.
_CONSOLE_PREFIXES = ("ps[", "chief", "worker", "warning:", "error:", "Traceback")


@dataclass
class Child:
    role: str
    argv: list[str]
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    log: IO[bytes] | None = None
    offset: int = 0
    partial: bytes = b""
    lines: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)

    def start(self) -> None:
        self.log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        # PR_SET_PDEATHSIG: a child dies with the launcher even if the launcher is killed outright.
        self.process = subprocess.Popen(self.argv, stdout=self.log, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent,
                                        env=dict(os.environ, PYTHONUNBUFFERED="1", **self.env))

    def new_lines(self) -> list[str]:
        """Complete lines the child wrote since the last call."""
        with open(self.log_path, "rb") as f:
            f.seek(self.offset)
            data = f.read()
        self.offset += len(data)
        data = self.partial + data
        *complete, self.partial = data.split(b"\n")
        return [line.decode("utf-8", "replace") for line in complete]

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        if self.log is not None:
            self.log.close()
            self.log = None


def _die_with_parent() -> None:
    import ctypes

    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG = 1


class LaunchError(Exception):
    pass


def _wait_ready(child: Child, ready_file: Path, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready_file.exists():
            return json.loads(ready_file.read_text())
        assert child.process is not None
        if child.process.poll() is not None:
            errors = [line for line in child.log_path.read_text(errors="replace").splitlines() if "error: " in line]
            raise LaunchError(f"{child.role} exited with code {child.process.returncode} before serving"
                              + (f" ({errors[-1]})" if errors else "") + f"; see {child.log_path}")
        time.sleep(0.05)
    raise LaunchError(f"{child.role} not serving after {timeout:.0f} s; see {child.log_path}")


@dataclass
class Security:
    """The children's transport: common options, per-role extras (a role on a sim platform of its own), and the
    sim PCCS the launcher runs for them."""

    argv: list[str]
    report: dict[str, Any]
    env: dict[str, str] = field(default_factory=dict)
    roles: dict[str, tuple[list[str], dict[str, str]]] = field(default_factory=dict)
    pccs: Any = None

    def for_role(self, role: str) -> tuple[list[str], dict[str, str]]:
        """The transport options (later ones win in argparse) and environment of one child."""
        extra_argv, extra_env = self.roles.get(role, ([], {}))
        return self.argv + extra_argv, {**self.env, **extra_env}

    def close(self) -> None:
        if self.pccs is not None:
            self.pccs.close()


def _parse_platform_tcb(values: list[str]) -> dict[str, str]:
    """--platform-tcb ROLE=STATUS values (ROLE: ps0, worker1, chief, ...)."""
    out = {}
    for value in values:
        role, sep, status = value.partition("=")
        if not sep or not role or not status:
            raise ValueError(f"--platform-tcb {value!r}: expected ROLE=STATUS, e.g. worker1=OutOfDate")
        out[role] = status
    return out


def _security_setup(args: argparse.Namespace, out: Path) -> Security:
    """Child transport options for the chosen --security, plus what the report should say about it."""
    if args.worker_tee == "tdx" and (args.security != "ratls" or args.enclave_way):
        raise ValueError("--worker-tee tdx: needs --security ratls with the sim providers (not --enclave-way)")
    if args.security == "insecure":
        return Security(["--security", "insecure"], {"security": "insecure"})
    if args.security == "tls":
        ca = transport.create_tls_ca(out / "tls-ca")
        return Security(["--security", "tls", "--tls-ca", str(ca)], {"security": "tls"})
    import ratls
    from runtime.measure import BASE_DIR, runtime_files

    if args.sim_ca is not None:
        sim_ca = ratls.SimCA(args.sim_ca)
    else:
        sim_ca = ratls.SimCA.init(out / "sim-ca")
    started = time.perf_counter()
    mrenclave = ratls.measure(runtime_files(), root=BASE_DIR).hex()
    measured = time.perf_counter() - started
    provider = "gramine" if args.enclave_way else "sim"
    security = Security(["--security", "ratls", "--provider", provider, "--sim-ca", str(sim_ca.path),
                         "--mrenclave", mrenclave],
                        {"security": "ratls", "provider": provider, "sim_ca": str(sim_ca.path), "mrenclave": mrenclave,
                         "measure_seconds": round(measured, 4)})
    if args.worker_tee == "tdx":
        # A mixed federation: the PS (and chief) as SGX enclaves, the workers as sim TDX TDs; every process admits
        # both TEEs, each pinned to this runtime's code (MRENCLAVE of its files, or their MRTD as a TD).
        security.argv += ["--peer-tees", "sgx,tdx"]
        for i in range(args.workers):
            security.roles[f"worker{i}"] = (["--provider", "sim-tdx"], {})
        security.report.update(worker_tee="tdx", mrtd=ratls.measure(runtime_files(), root=BASE_DIR, td=True).hex())
    platforms = _parse_platform_tcb(args.platform_tcb or [])
    collateral = args.pccs
    if args.sim_pccs or args.enclave_way or platforms:
        from ratls.sim_pccs import SimPCCS

        for role, status in platforms.items():
            platform = sim_ca.platform(role)
            sim_ca.set_tcb(status, platform=role)
            argv, env = security.roles.get(role, ([], {}))
            security.roles[role] = (argv + ["--sim-ca", str(platform)], {**env, "RATLS_SIM_CA_DIR": str(platform)})
        security.pccs = SimPCCS(sim_ca).start()
        collateral = security.pccs.url
        security.report["platform_tcb"] = platforms
    if collateral:
        security.argv += ["--collateral", collateral]
        security.report["collateral"] = collateral
    if args.enclave_way:
        # What a manifest fixes, with Gramine's library names served by our sim library: the gramine provider,
        # the peers' policy from RA_TLS_* (pinned to the measured MRENCLAVE, as the sim path pins it), and the
        # sim PCCS for TCB status.
        lib_dir = out / "gramine-lib"
        lib_dir.mkdir(exist_ok=True)
        attest_lib = lib_dir / "libra_tls_attest.so"
        shutil.copy(ratls.identity.SIM_LIBRARY, attest_lib)
        security.env.update(RATLS_GRAMINE_ATTEST_LIB=str(attest_lib), RATLS_SIM_CA_DIR=str(sim_ca.path),
                            RATLS_SIM_MRENCLAVE=mrenclave, RA_TLS_MRENCLAVE=mrenclave,
                            RA_TLS_MRSIGNER=sim_ca.mrsigner.hex(), RA_TLS_ISV_PROD_ID="any", RA_TLS_ISV_SVN="any",
                            RA_TLS_ALLOW_OUTDATED_TCB_INSECURE="0", RA_TLS_ALLOW_HW_CONFIG_NEEDED="0",
                            RA_TLS_ALLOW_SW_HARDENING_NEEDED="0", RA_TLS_ALLOW_DEBUG_ENCLAVE_INSECURE="0")
        security.report["enclave_way"] = True
    return security


@dataclass
class FederationSetup:
    """Who the children are in the federation: the plan they all run (None: no plan), the worker ids (the plan's
    worker participants), and each participant's key file."""

    plan: Path | None
    digest: str | None
    worker_ids: list[str]
    keys: dict[str, Path] = field(default_factory=dict)

    def for_ps(self, out: Path, shard: int) -> list[str]:
        if self.plan is None:
            return []
        return ["--plan", str(self.plan), "--audit-log", str(out / "audit" / f"ps{shard}.jsonl")]

    def for_participant(self, name: str) -> list[str]:
        if self.plan is None:
            return []
        return ["--plan", str(self.plan), "--participant-key", str(self.keys[name])]


def _federation_setup(args: argparse.Namespace, out: Path, security: Security) -> FederationSetup:
    """--plan FILE with --participant-keys DIR (a real federation's plan), or, by default under ratls, a plan the
    launcher writes for its local job (<out>/federation: one participant per worker and the chief, each with a
    fresh key; each role's enclave policy is the measured MRENCLAVE; no PS endpoints, which are chosen at start)."""
    from runtime.federation import RolePolicy, load_plan, write_local_plan

    local_ids = [f"worker{i}" for i in range(args.workers)]
    if args.security != "ratls" or args.no_plan:
        if args.plan is not None:
            raise ValueError("--plan needs --security ratls and no --no-plan")
        return FederationSetup(None, None, local_ids)
    if args.plan is not None:
        if args.participant_keys is None:
            raise ValueError("--plan needs --participant-keys DIR, holding <participant>.key.pem of each local "
                             "worker and of the chief")
        plan = load_plan(args.plan)
        workers = sorted(name for name, p in plan.participants.items() if "worker" in p.roles)
        if len(workers) < args.workers:
            raise ValueError(f"--plan {args.plan}: {len(workers)} participants may be workers, --workers is "
                             f"{args.workers}")
        names = workers[:args.workers] + (["chief"] if args.mode == "sdt" else [])
        keys = {name: args.participant_keys / f"{name}.key.pem" for name in names}
        missing = [str(path) for path in keys.values() if not path.exists()]
        if missing:
            raise ValueError(f"--participant-keys: missing {', '.join(missing)}")
        return FederationSetup(args.plan.resolve(), plan.digest_hex, workers[:args.workers], keys)
    measured = bytes.fromhex(security.report["mrenclave"])
    policy = RolePolicy(mrenclave=frozenset({measured}), mrsigner=None, min_isv_svn=0, allow_debug=False)
    worker_policy = policy
    if args.worker_tee == "tdx":
        worker_policy = dataclasses.replace(policy, admits_tdx=True,
                                            mrtd=frozenset({bytes.fromhex(security.report["mrtd"])}))
    path, keys = write_local_plan(out / "federation", f"local-{out.name}",
                                  {**{name: ("worker",) for name in local_ids}, "chief": ("chief",)},
                                  {"worker": worker_policy, "chief": policy}, ())
    return FederationSetup(path, load_plan(path).digest_hex, local_ids, keys)


@dataclass
class Placement:
    """Where the children run: on this machine's own network (hosts None), or each on its emulated host."""

    hosts: netemu.Hosts | None = None
    network: netemu.Network | None = None  # the one this launcher made, and closes

    def command(self, role: str, argv: list[str]) -> list[str]:
        return argv if self.hosts is None else self.hosts.command(role, argv)

    def listen(self, role: str) -> list[str]:
        """A server's --listen: its host's address (advertised as bound), or the loopback default."""
        return [] if self.hosts is None else ["--listen", f"{self.hosts.address(role)}:0"]

    def close(self) -> None:
        if self.network is not None:
            self.network.close()


def _placement(args: argparse.Namespace, roles: list[str], security: Security) -> Placement:
    """--emulate-hosts: a Network with a host per role, shaped by --link; --network FILE: the hosts of a network
    another program owns."""
    if not (args.emulate_hosts or args.network):
        if args.link:
            raise ValueError("--link needs --emulate-hosts")
        return Placement()
    if security.pccs is not None or args.pccs:
        # The hosts reach nothing outside their network, and the launcher's sim PCCS serves on loopback.
        raise ValueError("--emulate-hosts: a PCCS (--pccs, --sim-pccs, --platform-tcb, --enclave-way) is not reachable "
                         "from the emulated hosts")
    if args.network is not None:
        if args.link:
            raise ValueError("--link shapes a network the launcher makes; with --network FILE its owner shapes it")
        hosts = netemu.Hosts.load(args.network)
        missing = [role for role in roles if role not in hosts.namespaces]
        if missing:
            raise ValueError(f"--network {args.network}: no host for {', '.join(missing)}")
        return Placement(hosts)
    links = [netemu.parse_link(text) for text in args.link or []]
    for host, _ in links:
        if host is not None and host not in roles:
            raise ValueError(f"--link {host}=...: no such host; the hosts are {', '.join(roles)}")
    network = netemu.Network(roles)
    try:
        for host, shape in links:
            for role in roles if host is None else [host]:
                network.shape(role, shape.rate_mbit, shape.delay_ms, shape.loss_pct)
    except BaseException:
        network.close()
        raise
    return Placement(network.hosts, network)


def _data_setup(args: argparse.Namespace, out: Path) -> list[list[str]]:
    """Per-worker data options: own synthetic partitions, or shards of --data."""
    if args.data:
        eval_args = ["--eval-data", *map(str, args.eval_data)] if args.eval_data else []
        return [["--data", *map(str, args.data), "--data-shard", f"{i}/{args.workers}", *_reader_argv(args),
                 *eval_args] for i in range(args.workers)]
    rows = args.synthetic_rows or _samples_per_worker(args)
    started = time.perf_counter()
    train, held_out = synthetic_partitions(out / "data", args.workers, rows, args.eval_rows, args.data_seed,
                                           model_config(args))
    print(f"launch: synthetic data: {args.workers} x {rows} training rows + {args.workers} x {args.eval_rows} "
          f"held-out rows in {time.perf_counter() - started:.1f} s ({out / 'data'})", flush=True)
    return [["--data", str(t), "--eval-data", str(e), "--max-bad-fraction", str(args.max_bad_fraction)]
            for t, e in zip(train, held_out, strict=True)]


def _samples_per_worker(args: argparse.Namespace) -> int:
    """What one worker trains on in a synchronous job: a batch per local step of every round."""
    return args.steps * args.local_steps * args.batch_size


def _reader_argv(args: argparse.Namespace) -> list[str]:
    """How workers (HFL) or the chief (SDT) read --data: layout, format and the bad-line bound."""
    return ["--layout", args.layout, "--format", args.file_format, "--max-bad-fraction", str(args.max_bad_fraction)]


def _start_chief(args: argparse.Namespace, out: Path, addresses: list[str], security: Security,
                 federation: FederationSetup, placement: Placement) -> Child:
    """SDT: the chief, holding the data (--data files, or synthetic rows it generates in <out>/chief) and, at the
    end, the model (<out>/chief/model) and its final evaluation on the held-out data (--eval-data, or synthetic)."""
    if args.data:
        data = ["--data", *map(str, args.data), *_reader_argv(args)]
        data += ["--eval-data", *map(str, args.eval_data)] if args.eval_data else []
    else:
        data = ["--synthetic", str(args.synthetic_rows or _samples_per_worker(args)), "--data-seed",
                str(args.data_seed), "--eval-rows", str(args.eval_rows), "--max-bad-fraction",
                str(args.max_bad_fraction)]
    argv = [sys.executable, "-m", "runtime.chief", "--ps", ",".join(addresses), "--workers", str(args.workers),
            "--steps", str(args.steps), "--batch-size", str(args.batch_size), "--out", str(out / "chief"),
            "--ready-file", str(out / "chief.ready.json"), "--report-file", str(out / "chief.report.json"),
            "--timeout", str(args.timeout), "--worker-ids", ",".join(federation.worker_ids), *data, *_model_argv(args),
            *federation.for_participant("chief"),
            *(["--audit-log", str(out / "audit" / "chief.jsonl")] if federation.plan else []),
            *placement.listen("chief")]
    security_argv, env = security.for_role("chief")
    child = Child("chief", placement.command("chief", argv + security_argv), out / "logs" / "chief.log", env=env)
    (out / "chief.ready.json").unlink(missing_ok=True)
    child.start()
    return child


def _model_argv(args: argparse.Namespace) -> list[str]:
    argv = ["--model", args.model, "--max-table-size", str(args.max_table_size), "--learning-rate",
            str(args.learning_rate), "--lr-decay", str(args.lr_decay), "--seed", str(args.seed)]
    return argv + (["--model-config", str(args.model_config)] if args.model_config else [])


def combined_report(out: Path, ps_reports: list[dict[str, Any]], worker_reports: list[dict[str, Any]],
                    wall_seconds: float, security: dict[str, Any]) -> dict[str, Any]:
    """One report for the run: pooled held-out metrics over every worker's scores, totals, per-process parts."""
    labels, scores = [], []
    for w in worker_reports:
        path = out / f"scores-{w['worker_id']}.npz"
        if path.exists():
            with np.load(path) as data:
                labels.append(data["labels"])
                scores.append(data["scores"])
    held_out: dict[str, Any] = {"examples": 0}
    if labels and sum(len(y) for y in labels):
        y, p = np.concatenate(labels), np.concatenate(scores)
        held_out = {"examples": int(y.size), "log_loss": metrics.log_loss(y, p),
                    "accuracy": metrics.accuracy(y, p), "auc": metrics.auc(y, p) if 0 < y.sum() < y.size else None,
                    "constant_baseline_log_loss": metrics.log_loss(y, np.full_like(p, y.mean())),
                    "constant_baseline_accuracy": float(max(y.mean(), 1 - y.mean())),
                    # Each worker evaluated one version (runtime.worker checks it); pooled, they must agree.
                    "parameter_versions": sorted({tuple(w["eval"]["versions"]) for w in worker_reports
                                                  if w["eval"].get("examples")})}
    examples = sum(w["examples"] for w in worker_reports)
    train_seconds = max((w["train_seconds"] for w in worker_reports), default=0.0)
    wire = sum(w["bytes_sent"] + w["bytes_received"] for w in worker_reports)
    steps = max((p["version"] for p in ps_reports), default=0)
    attestation = [t for w in worker_reports for t in w["transport"].get("client_attestation_seconds", [])]
    steady_parts = [w["steady"] for w in worker_reports if w.get("steady", {}).get("steps")]
    steady: dict[str, Any] = {"workers": len(steady_parts)}
    if steady_parts:
        per_step = sum(p["bytes_per_step"] for p in steady_parts)
        minimum = sum(p["min_bytes_per_step"] for p in steady_parts)
        steady.update({
            "samples_per_s": round(sum(p["samples_per_s"] for p in steady_parts), 1),
            "step_ms": {k: round(float(np.mean([p["step_ms"][k] for p in steady_parts])), 3)
                        for k in steady_parts[0]["step_ms"]},
            "bytes_per_step": round(per_step, 1), "min_bytes_per_step": round(minimum, 1),
            "wire_over_min": round(per_step / minimum, 4)})
    return {
        "held_out": held_out,
        "plan_digest": ps_reports[0].get("plan_digest") if ps_reports else None,
        "participants": _participants(ps_reports),
        "steps": steps,
        "local_steps": ps_reports[0].get("local_steps", 1) if ps_reports else 1,
        "rounds": sum(p["stats"].get("rounds", 0) for p in ps_reports[:1]),
        # Every PS shard's bytes (both ways, as the workers count them) per round.
        "bytes_per_round": round(wire / steps, 1) if steps else 0.0,
        "short_rounds": max((p["stats"].get("short_rounds", 0) for p in ps_reports), default=0),
        "examples": examples,
        "samples_per_s": round(examples / train_seconds, 1) if train_seconds else 0.0,
        "wall_seconds": round(wall_seconds, 2),
        "bytes_on_wire": wire,
        "bytes_on_wire_per_step": round(wire / steps, 1) if steps else 0.0,
        "steady": steady,
        "attestation": dict(security, client_attestation_seconds=attestation,
                            identity_seconds=[w["transport"].get("identity_seconds") for w in worker_reports
                                              if "identity_seconds" in w["transport"]]),
        "ps": ps_reports,
        "workers": worker_reports,
    }


def _participants(ps_reports: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per participant: samples and pushes as PS shard 0 counted them (a worker's step pushes to every shard, and
    each shard checks and counts on its own: ps[i].participants has each shard's figures), bytes summed over the
    shards. They add up to shard 0's totals (stats: samples, pushes) and, with each shard's "unattributed", to
    the bytes every shard counted."""
    if not ps_reports:
        return []
    combined = {p["name"]: dict(p) for p in ps_reports[0].get("participants", [])}
    for report in ps_reports[1:]:
        for p in report.get("participants", []):
            entry = combined.setdefault(p["name"], {**p, "bytes_received": 0, "bytes_sent": 0})
            entry["bytes_received"] += p["bytes_received"]
            entry["bytes_sent"] += p["bytes_sent"]
    return [combined[name] for name in sorted(combined)]


def tensorboard_command(logdir: Path) -> str:
    """The command that shows a run's logs, as it works here: TensorFlow no longer brings TensorBoard (the project's
    viz extra does), and a virtual environment's scripts are not on PATH unless it is activated."""
    if shutil.which("tensorboard"):
        return f"tensorboard --logdir {logdir}"
    if importlib.util.find_spec("tensorboard") is not None:
        return f"{sys.executable} -m tensorboard.main --logdir {logdir}"
    return f'tensorboard --logdir {logdir} (not installed here: python -m pip install -e ".[viz]" first)'


def _summary(report: dict[str, Any]) -> str:
    h = report["held_out"]
    lines = ["== report =="]
    if h.get("examples"):
        auc = f"{h['auc']:.4f}" if h.get("auc") is not None else "n/a"
        lines.append(f"held-out: {h['examples']} examples, loss {h['log_loss']:.4f} (constant baseline "
                     f"{h['constant_baseline_log_loss']:.4f}), accuracy {h['accuracy']:.4f} (baseline "
                     f"{h['constant_baseline_accuracy']:.4f}), AUC {auc}; parameters of version "
                     f"{' and '.join('/'.join(map(str, v)) for v in h['parameter_versions'])}")
    fedavg = f" of FedAvg ({report['local_steps']} local steps each)" if report.get("local_steps", 1) > 1 else ""
    lines.append(f"training: {report['steps']} steps{fedavg}, {report['examples']} examples, "
                 f"{report['samples_per_s']:.0f} samples/s, {report['short_rounds']} short rounds, "
                 f"{report['bytes_per_round'] / 1e3:.1f} kB per round, wall {report['wall_seconds']:.1f} s")
    steady = report["steady"]
    if steady.get("workers"):
        ms = steady["step_ms"]
        lines.append(f"steady state: {steady['samples_per_s']:.0f} samples/s; per step (ms): data {ms['data_ms']:.1f}"
                     f", pull {ms['pull_ms']:.1f}, compute {ms['compute_ms']:.1f}, push {ms['push_ms']:.1f}, wait "
                     f"{ms['wait_ms']:.1f}")
        lines.append(f"wire: {report['bytes_on_wire'] / 1e6:.1f} MB total; per step "
                     f"{steady['bytes_per_step'] / 1e3:.1f} kB, {steady['wire_over_min']:.3f} x the minimum "
                     f"{steady['min_bytes_per_step'] / 1e3:.1f} kB")
    else:
        lines.append(f"wire: {report['bytes_on_wire'] / 1e6:.1f} MB total, "
                     f"{report['bytes_on_wire_per_step'] / 1e3:.1f} kB per step")
    first_shard = report["ps"][0] if report["ps"] else {}
    if first_shard.get("synchronous") is False:
        lines.append("asynchronous: pushes accepted by ps[0], by versions behind: " + ", ".join(
            f"{behind}: {count}" for behind, count in first_shard.get("push_staleness", {}).items()))
    refused = [f"{worker} {reason} {count}" for ps in report["ps"] for worker, reasons in
               ps.get("refused_pushes", {}).items() for reason, count in reasons.items()]
    if refused:
        lines.append("refused pushes (worker, reason, count): " + "; ".join(refused))
    data = [w["data"] for w in report["workers"]]
    if data:
        lines.append(f"data: {sum(d['lines'] for d in data)} lines in one pass over the workers' data, "
                     f"{sum(d['bad_lines'] for d in data)} bad (skipped)")
    for worker in report.get("lost_workers", []):
        lines.append(f"lost {worker['role']} (exit code {worker['exit_code']}): {worker['error'] or 'see its log'}")
    for ps in report["ps"]:
        for port in ps.get("transport", {}).get("attestation_ports", []):
            if port["rejected"]:
                lines.append(f"ps{ps.get('shard', 0)} refused {port['rejected']} attestation(s), the last for "
                             f"{port['last_rejection']}: {port['last_rejection_message']}")
    att = report["attestation"]
    times = att.get("client_attestation_seconds") or []
    if att.get("security") == "ratls":
        tcb = f", TCB status from {att['collateral']}" if att.get("collateral") else ", no collateral (TCB Unknown)"
        tdx = f" (workers as TDX TDs, MRTD {att['mrtd'][:16]}...)" if att.get("worker_tee") == "tdx" else ""
        lines.append(f"attestation: {att['provider']} provider{tdx}, MRENCLAVE {att['mrenclave'][:16]}..., "
                     f"{len(times)} client attestations, median {np.median(times) * 1000 if times else 0:.1f} ms{tcb}")
    else:
        lines.append(f"security: {att.get('security')}")
    if report.get("plan_digest"):
        lines.append(f"federation: plan {report['plan_digest'][:16]}...; " + ", ".join(
            f"{p['name']} {p['samples']} samples, {p['pushes_accepted']} pushes"
            + (f" ({p['pushes_refused']} refused)" if p["pushes_refused"] else "")
            for p in report["participants"] if p["samples"] or p["pushes_refused"] or p["joins"]))
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--mode", choices=("hfl", "sdt"), default="hfl",
                        help="hfl: PS + workers, each worker training on its own data (default); sdt: PS + chief "
                             "+ workers, the chief holding the data and streaming each worker its shard")
    parser.add_argument("--workers", type=int, default=2, help="default 2")
    parser.add_argument("--ps-shards", type=int, default=1, help="PS processes sharing the parameters (default 1)")
    parser.add_argument("--steps", type=int, default=400,
                        help="parameter updates: synchronous rounds (FedAvg rounds with --local-steps), or "
                             "asynchronous pushes (default 400)")
    parser.add_argument("--batch-size", type=int, default=128, help="per worker (default 128)")
    parser.add_argument("--out", type=Path, help="run directory (default runs/<mode>-<time>)")
    parser.add_argument("--timeout", type=float, default=1800.0, help="stop everything after this many seconds")
    data = parser.add_argument_group("data")
    data.add_argument("--data", type=Path, nargs="+",
                      help="Criteo TSV files, line-sharded over the workers (default: synthetic partitions)")
    data.add_argument("--eval-data", type=Path, nargs="+", help="held-out Criteo TSV files for every worker")
    add_format_arguments(data)
    add_max_bad_fraction_argument(data)
    data.add_argument("--synthetic-rows", type=int, help="synthetic training rows per worker "
                                                         "(default: steps x batch size)")
    data.add_argument("--eval-rows", type=int, default=8192, help="synthetic held-out rows per worker")
    data.add_argument("--data-seed", type=int, default=1, help="synthetic data seed (default 1)")
    train = parser.add_argument_group("training")
    train.add_argument("--min-workers", type=int, help="synchronous quorum (default: all workers)")
    train.add_argument("--round-timeout", type=float, help="seconds before a round closes with the quorum")
    train.add_argument("--staleness", type=int, help="asynchronous updates with this staleness bound")
    train.add_argument("--local-steps", type=int, default=1, metavar="K",
                       help="FedAvg: each worker takes K SGD steps on its own copy of the parameters per round (K "
                            "batches, the rows they touch pulled once) and pushes the model delta; the PS adds the "
                            "sample-weighted mean delta (each row over the workers that touched it). One round trip "
                            "per K batches: pays over slow links. Synchronous and --optimizer sgd only; --steps "
                            "counts rounds. Default 1: every push is one batch's gradients (synchronous SGD)")
    train.add_argument("--pipeline", action="store_true",
                       help="asynchronous: workers overlap pushing and pulling with computing (see runtime.worker)")
    train.add_argument("--worker-timeout", type=float, default=10.0, help="seconds before a silent worker is "
                                                                          "dropped (default 10)")
    train.add_argument("--optimizer", choices=("sgd", "adagrad"), default="sgd")
    train.add_argument("--max-grad-norm", type=float, default=100.0,
                       help="the PS refuses a push whose gradient L2 norm is larger, and one claiming more than "
                            "--batch-size examples (honest DLRM gradients are about 1); 0: no norm bound "
                            "(default 100)")
    train.add_argument("--wire-dtype", choices=("fp32", "fp16", "bf16"), default="fp32")
    train.add_argument("--chunk-bytes", type=int, help="chunk size for PS and workers (default 4 MiB)")
    train.add_argument("--checkpoint-every", type=int, default=100, help="default 100")
    train.add_argument("--warmup-steps", type=int, default=5,
                       help="steps left out of the steady-state figures of the report (default 5)")
    train.add_argument("--threads", type=int,
                       help="TensorFlow threads per worker (intra-op and inter-op pools); 0: TensorFlow's default, "
                            "the number of cores "
                            "(default: cores / workers, at least 1, as the workers share this machine's cores)")
    add_model_arguments(parser)
    group = parser.add_argument_group("transport security")
    group.add_argument("--security", choices=transport.SECURITY_MODES, default="ratls",
                       help="ratls (default), tls or insecure (the last two for overhead measurements)")
    group.add_argument("--sim-ca", type=Path, help="ratls: an existing sim CA (default: a fresh one in <out>)")
    group.add_argument("--pccs", help="ratls: a PCCS URL the processes take peers' TCB status from")
    group.add_argument("--sim-pccs", action="store_true",
                       help="ratls: run a sim PCCS for the sim CA and judge every peer's TCB status by it "
                            "(UpToDate only)")
    group.add_argument("--platform-tcb", action="append", metavar="ROLE=STATUS",
                       help="ratls: put ROLE (ps0, worker1, chief, ...) on a sim platform of its own judged at "
                            "STATUS (e.g. worker1=OutOfDate); implies --sim-pccs; repeatable")
    group.add_argument("--worker-tee", choices=("sgx", "tdx"), default="sgx",
                       help="ratls, sim: run the workers as SGX enclaves (default) or as Intel TDX TDs (the sim-tdx "
                            "provider) beside an SGX PS and chief, every process admitting both, each pinned to "
                            "this runtime's code")
    group.add_argument("--enclave-way", action="store_true",
                       help="ratls: run the processes as in an enclave, without SGX: the gramine provider code path "
                            "over the sim library under Gramine's file names, peers' policy from RA_TLS_* as a "
                            "manifest fixes it, and a sim PCCS for TCB status")
    group = parser.add_argument_group("federation (README 'Federation plans')")
    group.add_argument("--plan", type=Path,
                       help="ratls: a federation plan to run under (default: one the launcher writes for this local "
                            "job, in <out>/federation); the workers are its first --workers worker participants")
    group.add_argument("--participant-keys", type=Path, metavar="DIR",
                       help="with --plan: <participant>.key.pem for each local worker (and the chief in sdt mode)")
    group.add_argument("--no-plan", action="store_true",
                       help="ratls: no federation plan: any attested worker may join under any free worker id "
                            "(worker ids are still bound to the connection that joined)")
    group = parser.add_argument_group("emulated hosts (runtime.netemu: root, iproute2 and nftables)")
    group.add_argument("--emulate-hosts", action="store_true",
                       help="run every process on an emulated host of its own: a network namespace named after its "
                            "role (ps0, chief, worker0, ...) with its own address on a bridge, which the process "
                            "binds and advertises")
    group.add_argument("--link", action="append", metavar="[HOST=]rate=MBIT,delay=MS,loss=PCT",
                       help="with --emulate-hosts: shape a host's link (without HOST=, every host's): rate in Mbit/s "
                            "each way, one-way delay in ms, loss in %% of frames each way; a path crosses two links, "
                            "so its delay is the sum of both hosts' (delay=12.5 on every host: a 50 ms round trip); "
                            "repeatable: a later one replaces the shape of its hosts")
    group.add_argument("--network", type=Path, metavar="FILE",
                       help="run the processes on the hosts of an emulated network another program made, and may "
                            "shape or cut while the job runs (runtime.netemu.Network.save writes FILE); it needs a "
                            "host per role")


def run(args: argparse.Namespace) -> int:
    out = args.out or Path("runs") / f"{args.mode}-{time.strftime('%Y%m%d-%H%M%S')}"
    out.mkdir(parents=True, exist_ok=True)
    (out / "logs").mkdir(exist_ok=True)
    out = out.resolve()
    started = time.monotonic()
    children: list[Child] = []
    security: Security | None = None
    placement = Placement()
    try:
        if args.data:  # one error now, not one per worker or shard stream later
            check_format([*args.data, *(args.eval_data or [])], args.file_format)
        security = _security_setup(args, out)
        federation = _federation_setup(args, out, security)
        worker_data = _data_setup(args, out) if args.mode == "hfl" else []
        roles = [f"ps{shard}" for shard in range(args.ps_shards)] + (["chief"] if args.mode == "sdt" else []) \
            + federation.worker_ids
        placement = _placement(args, roles, security)
        ps_children = []
        common_ps = ["--steps", str(args.steps), "--workers", str(args.workers), "--num-shards",
                     str(args.ps_shards), "--worker-timeout", str(args.worker_timeout), "--optimizer",
                     args.optimizer, "--checkpoint-every", str(args.checkpoint_every), "--batch-size",
                     str(args.batch_size), "--max-grad-norm", str(args.max_grad_norm),
                     "--local-steps", str(args.local_steps)]
        for flag, value in (("--min-workers", args.min_workers), ("--round-timeout", args.round_timeout),
                            ("--staleness", args.staleness), ("--chunk-bytes", args.chunk_bytes)):
            if value is not None:
                common_ps += [flag, str(value)]
        if args.mode == "sdt":
            common_ps += ["--linger", "10"]  # time for the chief to join and pull the final model
        for shard in range(args.ps_shards):
            argv = [sys.executable, "-m", "runtime.ps", *common_ps, "--shard", str(shard),
                    "--ready-file", str(out / f"ps{shard}.ready.json"), "--report-file",
                    str(out / f"ps{shard}.report.json"), "--checkpoint-dir", str(out / "checkpoints" / f"ps{shard}"),
                    *_model_argv(args), *federation.for_ps(out, shard), *placement.listen(f"ps{shard}")]
            security_argv, env = security.for_role(f"ps{shard}")
            child = Child(f"ps{shard}", placement.command(f"ps{shard}", argv + security_argv),
                          out / "logs" / f"ps{shard}.log", env=env)
            (out / f"ps{shard}.ready.json").unlink(missing_ok=True)
            child.start()
            children.append(child)
            ps_children.append(child)
        addresses = [_wait_ready(c, out / f"{c.role}.ready.json", READY_TIMEOUT)["address"] for c in ps_children]
        chief_children = []
        if args.mode == "sdt":
            chief = _start_chief(args, out, addresses, security, federation, placement)
            children.append(chief)
            chief_children.append(chief)
            chief_address = _wait_ready(chief, out / "chief.ready.json", READY_TIMEOUT)["address"]
            worker_data = [["--chief", chief_address]] * args.workers
        worker_children = []
        threads = args.threads if args.threads is not None else max(1, len(os.sched_getaffinity(0)) // args.workers)
        for i in range(args.workers):
            worker_id = federation.worker_ids[i]
            job = (["--ps", ",".join(addresses), "--batch-size", str(args.batch_size)] if args.mode == "hfl"
                   else [])
            argv = [sys.executable, "-m", "runtime.worker", *job, "--worker-id", worker_id,
                    "--wire-dtype", args.wire_dtype,
                    "--threads", str(threads), "--warmup-steps", str(args.warmup_steps),
                    "--report-file", str(out / f"{worker_id}.report.json"),
                    "--scores-file", str(out / f"scores-{worker_id}.npz"),
                    "--logdir", str(out / "tensorboard"), *worker_data[i], *federation.for_participant(worker_id)]
            security_argv, env = security.for_role(worker_id)
            argv += security_argv
            if args.chunk_bytes is not None:
                argv += ["--chunk-bytes", str(args.chunk_bytes)]
            if args.pipeline:
                argv.append("--pipeline")
            child = Child(worker_id, placement.command(worker_id, argv), out / "logs" / f"{worker_id}.log", env=env)
            child.start()
            children.append(child)
            worker_children.append(child)
        write_json_atomically(out / "processes.json", {c.role: c.process.pid for c in children if c.process})
        chief_part = " + chief" if chief_children else ""
        hosts = placement.hosts
        where = "" if hosts is None else " on emulated hosts (" + ", ".join(
            f"{role} {hosts.address(role)}" for role in roles) + ")"
        print(f"launch: {args.ps_shards} PS{chief_part} + {args.workers} workers over {args.security}{where}, "
              f"{args.steps} steps; run directory {out}", flush=True)
        lost: list[dict[str, Any]] = []
        failures = _supervise(children, worker_children, args, started, lost)
        if failures:
            return 1
        ps_reports = [json.loads((out / f"{c.role}.report.json").read_text()) for c in ps_children]
        worker_reports = [json.loads(p.read_text()) for c in worker_children
                          if (p := out / f"{c.role}.report.json").exists()]
        report = combined_report(out, ps_reports, worker_reports, time.monotonic() - started, security.report)
        report["lost_workers"] = lost
        if chief_children:
            report["chief"] = json.loads((out / "chief.report.json").read_text())
        report["command"] = sys.argv
        if hosts is not None:
            report["emulated_hosts"] = {role: hosts.address(role) for role in roles}
            if placement.network is not None:
                report["links"] = {role: vars(placement.network.link_shape(role)) for role in roles}
        write_json_atomically(out / "report.json", report)
        print(_summary(report), flush=True)
        print(f"report: {out / 'report.json'}  TensorBoard: {tensorboard_command(out / 'tensorboard')}", flush=True)
        return 0
    except (LaunchError, OSError, ValueError, DataError, netemu.NetworkError) as error:
        print(f"launch: error: {error}", file=sys.stderr, flush=True)
        return 1
    finally:
        for child in children:
            child.stop()
        placement.close()
        if security is not None:
            security.close()


def _supervise(children: list[Child], workers: list[Child], args: argparse.Namespace, started: float,
               lost: list[dict[str, Any]]) -> list[str]:
    """Relay progress until every child has exited; returns descriptions of failures that sink the run, and adds
    to `lost` the workers the run went on without (with the error each printed last)."""
    tolerated = args.workers - (args.min_workers or args.workers)
    failures: list[str] = []
    lost_workers = 0
    running = {c.role for c in children}
    while running:
        for child in children:
            for line in child.new_lines():
                if line.startswith(_CONSOLE_PREFIXES):
                    print(line if line.startswith(child.role) else f"[{child.role}] {line}", flush=True)
            assert child.process is not None
            code = child.process.poll()
            if child.role in running and code is not None:
                running.discard(child.role)
                if code == 0:
                    continue
                if child in workers and lost_workers < tolerated:
                    lost_workers += 1
                    errors = [line for line in child.log_path.read_text(errors="replace").splitlines()
                              if " error: " in line or line.startswith("error:")]
                    lost.append({"role": child.role, "exit_code": code, "error": errors[-1] if errors else None})
                    print(f"launch: {child.role} exited with code {code}; continuing (--min-workers "
                          f"{args.min_workers})", flush=True)
                    continue
                failures.append(f"{child.role} exited with code {code}")
                print(f"launch: {child.role} failed with code {code}; last lines of {child.log_path}:", flush=True)
                for line in child.log_path.read_text(errors="replace").splitlines()[-15:]:
                    print(f"    {line}", flush=True)
                return failures
        if time.monotonic() - started > args.timeout:
            failures.append(f"timeout after {args.timeout:.0f} s")
            print(f"launch: timeout after {args.timeout:.0f} s; stopping", flush=True)
            return failures
        time.sleep(0.2)
    return failures


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m runtime.launch", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    add_arguments(parser)
    args = parser.parse_args(argv)
    if args.min_workers is not None and not 1 <= args.min_workers <= args.workers:
        parser.error(f"--min-workers must be in 1..{args.workers}")
    if args.file_format != "tsv" and not args.data:
        parser.error("--format applies to --data files (the built-in synthetic data is TSV)")
    # Ctrl-C and SIGTERM unwind through run()'s finally, which stops every child.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        return run(args)
    except KeyboardInterrupt:
        print("launch: interrupted; children stopped", file=sys.stderr, flush=True)
        return 130


if __name__ == "__main__":
    sys.exit(main())
