"""Who is who in a federation: the plan, join proofs, challenges and the audit log.

RA-TLS proves which code runs, not which company runs it. A participant's host chooses the enclave's arguments,
so a worker_id string proves nothing: any host running the approved worker enclave could claim any name. A
worker therefore proves that it speaks for participant P by signing, with P's provisioned key, a statement
binding P, its role, the federation and the plan digest to the RA-TLS certificate of the very connection it
speaks on and a fresh challenge from the PS. The PS checks the signature against the key the plan lists for P,
binds P to that connection and records the join in an append-only audit log.

    plan.py        the plan file: participants, their keys and roles, per-role enclave policies, PS endpoints
    proof.py       the signed join statement, participant keys, verification
    challenges.py  fresh single-use challenges per connection certificate
    audit.py       the fsynced JSON-lines audit log
"""

from runtime.federation.audit import AuditLog, read_audit
from runtime.federation.challenges import ChallengeBook
from runtime.federation.plan import ROLES, Participant, Plan, PlanError, RolePolicy, load_plan, write_local_plan
from runtime.federation.proof import JoinStatement, ParticipantKey, ProofError, verify

__all__ = [
    "ROLES",
    "AuditLog",
    "ChallengeBook",
    "JoinStatement",
    "Participant",
    "ParticipantKey",
    "Plan",
    "PlanError",
    "ProofError",
    "RolePolicy",
    "load_plan",
    "read_audit",
    "verify",
    "write_local_plan",
]
