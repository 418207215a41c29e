"""RA-TLS for gRPC: Gramine-compatible attestation certificates, SGX quote verification and policies."""
