"""Whole jobs run the enclave way (python -m runtime.launch --enclave-way): the gramine provider code path over
the sim library under Gramine's file names, peers' policy from RA_TLS_* as a manifest fixes it, and TCB status
from a sim PCCS the launcher runs, evaluated in every attestation. A worker whose platform is OutOfDate is
refused by the PS, both logs say TCB_STATUS, and the job's report says so."""

from __future__ import annotations

import json

from test_hfl import launch

QUICK = ["--mode", "hfl", "--workers", "2", "--model", "small", "--steps", "20", "--batch-size", "32",
         "--eval-rows", "512", "--threads", "1"]


def test_hfl_job_the_enclave_way_completes_with_tcb_status_from_the_sim_pccs(tmp_path):
    report, console = launch(tmp_path / "run", *QUICK, "--enclave-way")
    att = report["attestation"]
    assert att["provider"] == "gramine" and att["enclave_way"] and att["collateral"].startswith("http://127.0.0.1:")
    assert f"TCB status from {att['collateral']}" in console
    assert report["steps"] == 20 and report["held_out"]["auc"] > 0.5
    (ps,) = report["ps"]
    assert ps["transport"]["tcb_statuses"] == ["UpToDate"]  # Gramine's RA_TLS_* table: no ALLOW flag set
    (port,) = ps["transport"]["attestation_ports"]
    assert port["attested"] >= 2 and port["rejected"] == 0
    for worker in report["workers"]:
        assert worker["transport"]["provider"] == "gramine"
        assert worker["transport"]["collateral"] == att["collateral"]


def test_a_worker_on_an_out_of_date_platform_is_refused_and_the_report_says_so(tmp_path):
    out = tmp_path / "run"
    # worker1 never joins, so each round waits out --round-timeout: few steps.
    report, console = launch(out, *QUICK, "--steps", "6", "--enclave-way", "--platform-tcb", "worker1=OutOfDate",
                             "--min-workers", "1", "--round-timeout", "1", "--worker-timeout", "3")
    assert report["attestation"]["platform_tcb"] == {"worker1": "OutOfDate"}
    (lost,) = report["lost_workers"]
    assert lost["role"] == "worker1" and "refused our certificate: TCB_STATUS" in lost["error"]
    (port,) = report["ps"][0]["transport"]["attestation_ports"]
    assert port["rejected"] >= 1 and port["last_rejection"] == "TCB_STATUS"
    assert "TCB status OutOfDate is not allowed" in port["last_rejection_message"]
    assert [w["worker_id"] for w in report["workers"]] == ["worker0"] and report["steps"] == 6
    assert "ps0 refused" in console and "lost worker1" in console
    # Both logs say why.
    ps_log = (out / "logs" / "ps0.log").read_text()
    worker_log = (out / "logs" / "worker1.log").read_text()
    assert "TCB_STATUS: TCB status OutOfDate is not allowed by the policy" in ps_log
    assert "TCB_STATUS" in worker_log
    assert json.loads((out / "report.json").read_text())["lost_workers"] == report["lost_workers"]
