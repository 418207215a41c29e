"""What ratls tells the operator through Python's logging, on the logger "ratls.attestation" (README.md):

- every client an attestation port refused, at WARNING: "refused attestation from <ip:port>: <REASON>: <message>",
  with the record attributes `ratls_peer` (the address) and `ratls_reason` (the reason code, a ratls.Reason when
  known). The message is the server's own and stays on the server: the client only gets the reason code.
- the first simulated evidence this process accepts (a verification or an attestation handshake, either side), at
  WARNING, once per process: simulated attestation proves nothing about a real enclave.

Logging rather than the warnings module: these notices come from handshake and gRPC threads, where a "-W error"
filter must not turn them into exceptions, and without any logging configuration Python still prints WARNING
records to stderr."""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING

from ratls.errors import Reason

if TYPE_CHECKING:
    from ratls.evidence import Evidence

LOGGER_NAME = "ratls.attestation"
LOGGER = logging.getLogger(LOGGER_NAME)

SIMULATED_NOTICE = ("accepted simulated SGX evidence (it chains to a simulation root): simulated attestation proves "
                    "nothing about a real enclave; use it for development and testing only (logged once per process)")

_sim_lock = threading.Lock()
_sim_noticed = False


def note_accepted(evidence: Evidence) -> Evidence:
    """Called with every Evidence a verification or handshake accepted: the first simulated one is logged."""
    global _sim_noticed
    if evidence.simulated and not _sim_noticed:
        with _sim_lock:
            first, _sim_noticed = not _sim_noticed, True
        if first:
            LOGGER.warning(SIMULATED_NOTICE)
    return evidence


def reason_or_code(code: int) -> Reason | int:
    try:
        return Reason(code)
    except ValueError:
        return code


def log_refusal(address: str, code: int, message: str) -> None:
    reason = reason_or_code(code)
    name = reason.name if isinstance(reason, Reason) else f"reason code {code}"
    LOGGER.warning("refused attestation from %s: %s: %s", address, name, message,
                   extra={"ratls_peer": address, "ratls_reason": reason})
