"""The federation's command-line options, shared by the PS, the worker and the chief: --plan (every role), and
--participant-key (the roles that join: worker, chief)."""

from __future__ import annotations

import argparse
from pathlib import Path

from runtime.client.ps import Federation
from runtime.federation.plan import Plan, PlanError, load_plan
from runtime.federation.proof import ParticipantKey, ProofError


def add_arguments(parser: argparse.ArgumentParser, *, joins: bool, audit: bool) -> None:
    group = parser.add_argument_group("federation (who is who: README 'Federation plans')")
    group.add_argument("--plan", type=Path,
                       help="the federation plan (TOML or JSON): the participants, their keys and roles, each role's "
                            "enclave policy and the PS endpoints; its digest is in every join and in the report. In "
                            "an enclave it is a trusted file of the manifest. Needs --security ratls")
    if joins:
        group.add_argument("--participant-key", type=Path,
                           help="with --plan: this participant's private key (PEM), which signs every join; in an "
                                "enclave an encrypted or provisioned file (manifests/README.md)")
    if audit:
        group.add_argument("--audit-log", type=Path,
                           help="append every join, rejoin, leave, timeout and refusal of a caller here, as fsynced "
                                "JSON lines")


def plan_from_args(args: argparse.Namespace) -> Plan | None:
    """The plan of --plan, checked against the transport: binding joins to connections needs attestation."""
    if args.plan is None:
        return None
    if args.security != "ratls":
        raise ValueError(f"--plan needs --security ratls: a federation join is bound to an attested connection "
                         f"(this process runs {args.security})")
    try:
        return load_plan(args.plan)
    except PlanError as error:
        raise ValueError(str(error)) from None


def federation_from_args(args: argparse.Namespace, role: str) -> Federation | None:
    """How this process joins (--plan with --participant-key), or None without a plan."""
    plan = plan_from_args(args)
    if plan is None:
        if args.participant_key is not None:
            raise ValueError("--participant-key needs --plan")
        return None
    if args.participant_key is None:
        raise ValueError("--plan needs --participant-key: the key that proves which participant this process is")
    try:
        key = ParticipantKey.load(args.participant_key)
    except ProofError as error:
        raise ValueError(f"--participant-key {args.participant_key}: {error}") from None
    return Federation(plan, key, role)
