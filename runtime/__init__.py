"""Secure parameter-server runtime for DLRM over RA-TLS gRPC."""
