"""RA-TLS for gRPC: Gramine-compatible attestation certificates, SGX quote verification and policies.

    identity = ratls.Identity.create(provider="sim", sim_ca=DIR, measured_files=[...])
    evidence = ratls.verify_certificate(peer_cert, ratls.Policy(mrenclave=..., ...))
"""

from ratls._grpc_channel import AttestationRpcError, PinnedChannel
from ratls._replicas import ReplicaStatus
from ratls.address import ServerAddress
from ratls.aio import AioAttestationError, AioPinnedChannel
from ratls.credentials import AttestationStats, Credentials, credentials, peer
from ratls.errors import PolicyError, ProviderError, RatlsError, Reason, UnattestedCallerError, VerificationError
from ratls.evidence import (
    CertificateInfo,
    Evidence,
    Quote,
    ReportBody,
    Unattested,
    inspect_certificate,
    parse_quote,
    verify_certificate,
    verify_quote,
)
from ratls.identity import Identity, in_sgx_enclave, measure
from ratls.policy import TCB_STATUSES, Policy
from ratls.simca import SimCA

__all__ = [
    "TCB_STATUSES",
    "AioAttestationError",
    "AioPinnedChannel",
    "AttestationRpcError",
    "AttestationStats",
    "CertificateInfo",
    "Credentials",
    "Evidence",
    "Identity",
    "PinnedChannel",
    "Policy",
    "PolicyError",
    "ProviderError",
    "Quote",
    "RatlsError",
    "Reason",
    "ReplicaStatus",
    "ReportBody",
    "ServerAddress",
    "SimCA",
    "Unattested",
    "UnattestedCallerError",
    "VerificationError",
    "credentials",
    "in_sgx_enclave",
    "inspect_certificate",
    "measure",
    "parse_quote",
    "peer",
    "verify_certificate",
    "verify_quote",
]
