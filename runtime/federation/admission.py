"""Whether a join proves what it claims, the same rule for every server a participant joins (each PS shard, the SDT
chief): under this plan, the caller speaks for participant `name` in `role`, on this very connection, now."""

from __future__ import annotations

from runtime.federation.challenges import ChallengeBook
from runtime.federation.plan import Plan
from runtime.federation.proof import JoinStatement, ProofError, verify
from runtime.protocol import Caller, JoinProof


def join_refusal(plan: Plan, challenges: ChallengeBook, name: str, role: str, caller: Caller,
                 proof: JoinProof) -> tuple[str, str] | None:
    """None when the proof holds, else (reason, detail), in the order a joiner can act on them: its plan, its name,
    its role, its enclave, its challenge (spent by this call either way), its signature."""
    if proof.plan_digest != plan.digest:
        return "plan_mismatch", (f"JoinRequest.plan_digest: expected this server's plan {plan.digest_hex}, found "
                                 f"{proof.plan_digest.hex() or 'none'}")
    participant = plan.participant(name)
    if participant is None:
        return "not_in_plan", f"participant {name!r} is not in federation {plan.federation!r}"
    if role not in participant.roles:
        return "role_not_allowed", (f"participant {name!r} may take the roles {', '.join(participant.roles)}, not "
                                    f"{role!r}")
    if caller.fingerprint is None or caller.evidence is None:
        return "not_attested", "a federation join must come over an attested (RA-TLS) connection"
    problem = plan.roles[role].refusal(caller.evidence)
    if problem is not None:
        return "role_policy", f"the {role} role's enclave policy: {problem}"
    if not challenges.take(caller.fingerprint, proof.challenge):
        return "bad_challenge", ("JoinRequest.challenge: not a live challenge issued to this connection (each is "
                                 "usable once, for a short time: ask for a new one)")
    statement = JoinStatement(participant=name, role=role, federation=plan.federation, plan_digest=plan.digest,
                              cert_fingerprint=caller.fingerprint, challenge=proof.challenge)
    try:
        verify(participant, statement, proof.signature)
    except ProofError as error:
        return "bad_proof", (f"JoinRequest.signature: not participant {name!r}'s signature over this join on this "
                             f"connection ({error})")
    return None


def caller_fields(caller: Caller, plan: Plan | None) -> dict[str, str | None]:
    """What an audit record of a server says of a caller (runtime.federation.audit): its certificate, TEE, the
    measurement of its code (an SGX enclave's MRENCLAVE; a TDX TD's MRTD too) and TCB status as attested, and the
    plan in force."""
    evidence = caller.evidence
    fields = {"certificate": caller.fingerprint.hex() if caller.fingerprint is not None else None,
              "tee": evidence.tee if evidence is not None else None,
              "mrenclave": evidence.mrenclave.hex() if evidence is not None else None,
              "tcb_status": evidence.tcb_status if evidence is not None else None,
              "plan_digest": plan.digest_hex if plan is not None else None}
    if evidence is not None and evidence.tee == "tdx":
        fields["mrtd"] = evidence.mrtd.hex()
    return fields


def sign_join(plan: Plan, key, name: str, role: str, cert_fingerprint: bytes, challenge: bytes) -> JoinProof:
    """The joiner's side: its proof for `challenge` on the connection whose certificate has cert_fingerprint."""
    statement = JoinStatement(participant=name, role=role, federation=plan.federation, plan_digest=plan.digest,
                              cert_fingerprint=cert_fingerprint, challenge=challenge)
    return JoinProof(role=role, plan_digest=plan.digest, challenge=challenge, signature=key.sign(statement))
