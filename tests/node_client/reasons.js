'use strict';
// The reason codes of ratls/PROTOCOL.md section 3 (stable; new ones may be added, and a code this table does not
// know is still a refusal). The client's own verifier reports its verdicts on the server with the same names.

const REASONS = {
  1: 'INTERNAL',
  2: 'BAD_ARGUMENT',
  10: 'CERT_MALFORMED',
  11: 'CERT_KEY_UNSUPPORTED',
  12: 'CERT_SIGNATURE',
  13: 'CERT_EXPIRED',
  14: 'CERT_NOT_YET_VALID',
  15: 'CERT_TOO_LARGE',
  16: 'CHANNEL_CERT',
  17: 'ATTESTATION_REQUIRED',
  20: 'EVIDENCE_MISSING',
  21: 'EVIDENCE_CRITICAL',
  22: 'EVIDENCE_MALFORMED',
  30: 'QUOTE_MALFORMED',
  31: 'QUOTE_UNSUPPORTED_VERSION',
  32: 'QUOTE_UNSUPPORTED_KEY_TYPE',
  33: 'QUOTE_UNSUPPORTED_CERT_DATA',
  34: 'PCK_CHAIN_MALFORMED',
  35: 'PCK_CHAIN_UNTRUSTED',
  36: 'QE_REPORT_SIGNATURE',
  37: 'QE_REPORT_DATA',
  38: 'QUOTE_SIGNATURE',
  39: 'QE_VENDOR',
  40: 'REPORT_DATA_MISMATCH',
  41: 'ENCLAVE_ATTRIBUTES',
  42: 'DEBUG_ENCLAVE',
  43: 'SIMULATED_DENIED',
  44: 'MRENCLAVE',
  45: 'MRSIGNER',
  46: 'ISV_PROD_ID',
  47: 'ISV_SVN',
  48: 'TCB_STATUS',
  49: 'COLLATERAL',
  50: 'POLICY',
  60: 'PROVIDER',
  70: 'HANDSHAKE',
  71: 'TIMEOUT',
  72: 'IO',
  73: 'PEER_REFUSED',
};

// A verdict of ours (on the server's certificate) or a failure of the exchange, with a PROTOCOL.md reason name.
class RatlsError extends Error {
  constructor(reason, message) {
    super(message);
    this.reason = reason;
  }
}

module.exports = { REASONS, RatlsError };
