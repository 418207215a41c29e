'use strict';
// An RA-TLS certificate verifier written from ratls/PROTOCOL.md (sections 1.3 and 6) and the byte layouts of
// ../shared/docs/ratls-reference.md (RA-TLS certificate extensions: 1.2-1.6; SGX DCAP quote v3: 5.1-5.4), with
// node:crypto only. What it checks, in the order of PROTOCOL.md section 8, each failure a RatlsError with
// PROTOCOL.md's reason name:
//   the certificate: an EC P-256/P-384 key; its evidence: the DICE tagged-evidence extension 2.23.133.5.4.9 if
//     present (no fallback when it is bad), else Gramine's legacy quote extension, never critical, never twice;
//     valid now; signed by its own key;
//   the quote (v3, ECDSA P-256 attestation key, Intel's QE vendor id): the PCK certificate chain it carries
//     (certification data type 5) ends in one of the policy's roots, the QE report is signed by the PCK leaf
//     key, the QE report data binds the attestation key (its first 32 bytes are SHA-256(attestation key || QE
//     auth data)), and the ISV report (quote bytes 0..431) is signed by the attestation key;
//   the binding: report_data[0:32] = SHA-256(SPKI DER) (legacy), or = SHA-256(claims) with the claims'
//     pubkey-hash = hash(SPKI DER) (DICE);
//   the enclave: INIT and MODE64BIT set, PROVISION_KEY and EINITTOKEN_KEY clear, DEBUG clear unless allowed;
//   the policy: MRENCLAVE (and MRSIGNER, ISV_PROD_ID, minimum ISV_SVN when given).
// It does not evaluate the TCB status (no collateral): like the reference verifier without collateral, the
// status is "Unknown".

const crypto = require('node:crypto');
const { X509Certificate } = crypto;
const cbor = require('./cbor');
const { parseCertificate } = require('./der');
const { RatlsError } = require('./reasons');

// extnID contents (the bytes after 06 len). The legacy one is Gramine's 11-byte quirk: a whole OID TLV used as
// the content, which standard parsers show as 0.6.9.42.840.113741.1337.6 (ratls-reference.md 1.3).
const LEGACY_QUOTE_OID = Buffer.from('06092a864886f84d8a3906', 'hex');
const DICE_EVIDENCE_OID = Buffer.from('678105050409', 'hex'); // 2.23.133.5.4.9
const TEE_QUOTE_CBOR_TAG = 60000;
const INTEL_QE_VENDOR_ID = Buffer.from('939a7233f79c4ca9940a0db3957f0607', 'hex');
const QUOTE_MAX_SIZE = 8192;
const LEGACY_QUOTE_MIN_SIZE = 128; // Gramine's extraction rule (ratls-reference.md 1.6)
const QUOTE_HEADER_AND_BODY = 432; // 48-byte header + 384-byte ISV report body: what the ISV signature covers
const DICE_HASH_ALGS = { 1: ['sha256', 32], 7: ['sha384', 48], 8: ['sha512', 64] };
const SUPPORTED_CURVES = new Set(['prime256v1', 'secp384r1']);

const FLAGS = { INIT: 0x01n, DEBUG: 0x02n, MODE64BIT: 0x04n, PROVISION_KEY: 0x10n, EINITTOKEN_KEY: 0x20n };

const sha = (alg, ...parts) => {
  const h = crypto.createHash(alg);
  for (const p of parts) h.update(p);
  return h.digest();
};
const fail = (reason, message) => {
  throw new RatlsError(reason, message);
};

// The 384-byte SGX report body (ratls-reference.md 5.2), offsets relative to its start.
function reportBody(b) {
  return {
    cpusvn: b.subarray(0, 16),
    miscselect: b.readUInt32LE(16),
    flags: b.readBigUInt64LE(48),
    xfrm: b.readBigUInt64LE(56),
    mrenclave: b.subarray(64, 96),
    mrsigner: b.subarray(128, 160),
    isvProdId: b.readUInt16LE(256),
    isvSvn: b.readUInt16LE(258),
    reportData: b.subarray(320, 384),
  };
}

// An SGX DCAP quote v3 (ratls-reference.md 5.1-5.3); QUOTE_* reasons for what is not one.
function parseQuote(q) {
  if (q.length < 436) fail('QUOTE_MALFORMED', `quote is ${q.length} bytes, shorter than header, report and length`);
  const version = q.readUInt16LE(0);
  if (version !== 3) fail('QUOTE_UNSUPPORTED_VERSION', `quote version ${version}, expected 3`);
  const keyType = q.readUInt16LE(2);
  if (keyType !== 2) fail('QUOTE_UNSUPPORTED_KEY_TYPE', `attestation key type ${keyType}, expected 2 (ECDSA P-256)`);
  const sigLen = q.readUInt32LE(432);
  if (436 + sigLen > q.length) fail('QUOTE_MALFORMED', `signature data of ${sigLen} bytes runs past the ${q.length}-byte quote`);
  const s = q.subarray(436, 436 + sigLen);
  let o = 0;
  const take = (n, what) => {
    if (o + n > s.length) fail('QUOTE_MALFORMED', `quote signature data too short for the ${what}`);
    const out = s.subarray(o, o + n);
    o += n;
    return out;
  };
  const isvSignature = take(64, 'ISV report signature');
  const attestationKey = take(64, 'attestation key');
  const qeReport = take(384, 'QE report');
  const qeReportSignature = take(64, 'QE report signature');
  const qeAuthData = take(take(2, 'QE auth data size').readUInt16LE(0), 'QE auth data');
  const certType = take(2, 'certification data type').readUInt16LE(0);
  const certData = take(take(4, 'certification data size').readUInt32LE(0), 'certification data');
  return {
    version,
    qeVendorId: q.subarray(12, 28),
    signed: q.subarray(0, QUOTE_HEADER_AND_BODY),
    body: reportBody(q.subarray(48, 432)),
    isvSignature,
    attestationKey,
    qeReport,
    qe: reportBody(qeReport),
    qeReportSignature,
    qeAuthData,
    certType,
    certData,
  };
}

// The raw X||Y P-256 attestation key as a KeyObject.
function p256Key(xy) {
  const b64u = (b) => b.toString('base64url');
  return crypto.createPublicKey({
    key: { kty: 'EC', crv: 'P-256', x: b64u(xy.subarray(0, 32)), y: b64u(xy.subarray(32, 64)) },
    format: 'jwk',
  });
}

const rawVerify = (data, key, signature) =>
  crypto.verify('sha256', data, { key, dsaEncoding: 'ieee-p1363' }, signature);

function validAt(cert, now) {
  const { notBefore, notAfter } = parseCertificate(cert.raw); // not validFrom/validTo: strings in a local format
  return notBefore.getTime() <= now && now <= notAfter.getTime();
}

// The PCK chain of certification data type 5: exactly three PEM certificates (leaf, intermediate, root) separated
// by whitespace only, optionally NUL-terminated. The leaf must verify through the intermediate to one of `roots`
// (X509Certificate) at `now`, with the chain's third certificate that very root.
const PEM_BLOCK = /^\s*-----BEGIN CERTIFICATE-----\r?\n([A-Za-z0-9+/=\r\n]+)-----END CERTIFICATE-----/;

function verifyPckChain(quote, roots, now) {
  if (quote.certType !== 5) {
    fail('QUOTE_UNSUPPORTED_CERT_DATA', `certification data type ${quote.certType}, expected 5 (PCK certificate chain)`);
  }
  let data = quote.certData;
  if (data.length && data[data.length - 1] === 0) data = data.subarray(0, data.length - 1);
  if (data.includes(0)) fail('PCK_CHAIN_MALFORMED', 'PCK chain: NUL byte inside the PEM text');
  let text = data.toString('latin1');
  const chain = [];
  while (text.trim() !== '') {
    const m = PEM_BLOCK.exec(text);
    if (!m || chain.length === 3) {
      fail('PCK_CHAIN_MALFORMED', 'PCK chain: expected three PEM certificates (leaf, intermediate, root) and nothing else');
    }
    try {
      chain.push(x509FromDer(Buffer.from(m[1].replace(/\s+/g, ''), 'base64')));
    } catch (e) {
      fail('PCK_CHAIN_MALFORMED', `PCK chain: certificate ${chain.length + 1} does not parse: ${e.message}`);
    }
    text = text.slice(m[0].length);
  }
  if (chain.length !== 3) fail('PCK_CHAIN_MALFORMED', `PCK chain: expected 3 certificates, found ${chain.length}`);
  const [leaf, intermediate, top] = chain;
  const name = (c) => `"${c.subject.replace(/\n/g, ', ')}"`;
  const root = roots.find((r) => r.raw.equals(top.raw));
  if (!root) {
    fail('PCK_CHAIN_UNTRUSTED', `the quote's PCK chain ends in ${name(top)} (SHA-256 ` +
      `${top.fingerprint256.replace(/:/g, '').toLowerCase().slice(0, 16)}...), which is not a root of the policy`);
  }
  const links = [[leaf, intermediate], [intermediate, root], [root, root]];
  for (const [cert, issuer] of links) {
    if (!validAt(cert, now)) fail('PCK_CHAIN_UNTRUSTED', `PCK chain: ${name(cert)} is not valid now`);
    if (!issuer.ca || !cert.checkIssued(issuer) || !cert.verify(issuer.publicKey)) {
      fail('PCK_CHAIN_UNTRUSTED', `PCK chain: ${name(cert)} is not issued and signed by the CA ${name(issuer)}`);
    }
  }
  return { leaf, root };
}

// The evidence extension of a certificate: {format: 'dice'|'legacy', quote, claims?}.
function extractEvidence(cert) {
  let legacy = null;
  let dice = null;
  for (const ext of cert.extensions) {
    const which = ext.oid.equals(DICE_EVIDENCE_OID) ? 'dice' : ext.oid.equals(LEGACY_QUOTE_OID) ? 'legacy' : null;
    if (!which) continue;
    const name = which === 'dice' ? 'DICE tagged-evidence (2.23.133.5.4.9)' : 'legacy SGX quote';
    if ((which === 'dice' ? dice : legacy) !== null) fail('EVIDENCE_MALFORMED', `the ${name} extension appears twice`);
    if (ext.critical) fail('EVIDENCE_CRITICAL', `the ${name} extension is marked critical`);
    if (which === 'dice') dice = ext.value;
    else legacy = ext.value;
  }
  if (dice !== null) return { format: 'dice', ...parseDice(dice) }; // preferred; a bad one is not rescued
  if (legacy !== null) {
    if (legacy.length < LEGACY_QUOTE_MIN_SIZE || legacy.length > QUOTE_MAX_SIZE) {
      fail('EVIDENCE_MALFORMED', `legacy quote extension is ${legacy.length} bytes, expected ${LEGACY_QUOTE_MIN_SIZE}..${QUOTE_MAX_SIZE}`);
    }
    return { format: 'legacy', quote: legacy };
  }
  return fail('EVIDENCE_MISSING', 'no RA-TLS evidence: neither the DICE 2.23.133.5.4.9 nor the legacy SGX quote extension');
}

// tag 60000 ([bstr quote, bstr claims]); claims = serialized map {"pubkey-hash": bstr([uint alg, bstr hash]), ...}.
function parseDice(value) {
  try {
    const top = cbor.decode(value);
    if (!(top instanceof cbor.Tagged) || top.tag !== TEE_QUOTE_CBOR_TAG) throw new Error(`expected CBOR tag ${TEE_QUOTE_CBOR_TAG}`);
    const arr = top.value;
    if (!Array.isArray(arr) || arr.length !== 2 || !Buffer.isBuffer(arr[0]) || !Buffer.isBuffer(arr[1])) {
      throw new Error('expected exactly [bstr quote, bstr claims]');
    }
    const [quote, claims] = arr;
    if (quote.length < 436 || quote.length > QUOTE_MAX_SIZE) throw new Error(`quote is ${quote.length} bytes`);
    const map = cbor.decode(claims);
    if (!(map instanceof cbor.CborMap) || map.entries.length === 0) throw new Error('claims: expected a non-empty map');
    let pubkeyHash = null;
    for (const [k, v] of map.entries) {
      if (typeof k !== 'string' || !Buffer.isBuffer(v)) throw new Error('claims: an entry is not text key -> byte string');
      if (k !== 'pubkey-hash') continue;
      if (pubkeyHash) throw new Error('claims: pubkey-hash appears twice');
      const entry = cbor.decode(v);
      if (!Array.isArray(entry) || entry.length !== 2 || !Number.isInteger(entry[0]) || !Buffer.isBuffer(entry[1])) {
        throw new Error('claims: pubkey-hash is not [uint alg, bstr hash]');
      }
      const alg = DICE_HASH_ALGS[entry[0]];
      if (!alg || alg[1] !== entry[1].length) {
        throw new Error(`claims: pubkey-hash algorithm ${entry[0]} with a ${entry[1].length}-byte hash is not supported`);
      }
      pubkeyHash = { alg: alg[0], hash: entry[1] };
    }
    if (!pubkeyHash) throw new Error('claims: no pubkey-hash claim');
    return { quote, claims, pubkeyHash };
  } catch (e) {
    if (e instanceof RatlsError) throw e;
    return fail('EVIDENCE_MALFORMED', `DICE evidence: ${e.message}`);
  }
}

const hex = (b) => Buffer.from(b).toString('hex');

// An X509Certificate of exactly these DER bytes. Not `new X509Certificate(der)`: Node tries PEM first, and an
// RA-TLS certificate's DER contains PEM text (the PCK chain in the quote's certification data), so Node would
// parse the embedded PCK leaf certificate instead. Wrapping the DER in PEM ourselves leaves nothing to guess.
function x509FromDer(der) {
  const lines = Buffer.from(der).toString('base64').match(/.{1,64}/g) || [];
  const x509 = new X509Certificate(`-----BEGIN CERTIFICATE-----\n${lines.join('\n')}\n-----END CERTIFICATE-----\n`);
  if (!x509.raw.equals(der)) throw new Error('the certificate is not exactly one DER certificate');
  return x509;
}

// Verifies an RA-TLS certificate (DER) under `policy` = {roots: [X509Certificate], mrenclave: [Buffer],
// mrsigner: [Buffer], isvProdId: number|null, minIsvSvn: number|null, allowDebug: bool}; returns its evidence or
// throws RatlsError.
function verifyCertificate(der, policy, now = Date.now()) {
  let x509;
  let cert;
  try {
    cert = parseCertificate(der);
    x509 = x509FromDer(der);
  } catch (e) {
    fail('CERT_MALFORMED', `the certificate does not parse: ${e.message}`);
  }
  const key = x509.publicKey;
  if (key.asymmetricKeyType !== 'ec' || !SUPPORTED_CURVES.has(key.asymmetricKeyDetails.namedCurve)) {
    fail('CERT_KEY_UNSUPPORTED', 'the certificate key must be EC P-256 or P-384');
  }
  const evidence = extractEvidence(cert);
  if (now < cert.notBefore.getTime()) fail('CERT_NOT_YET_VALID', `the certificate is valid from ${cert.notBefore.toISOString()}`);
  if (now > cert.notAfter.getTime()) fail('CERT_EXPIRED', `the certificate expired at ${cert.notAfter.toISOString()}`);
  if (!x509.verify(key)) fail('CERT_SIGNATURE', 'the certificate is not signed by its own key');

  const quote = parseQuote(evidence.quote);
  if (!quote.qeVendorId.equals(INTEL_QE_VENDOR_ID)) fail('QE_VENDOR', `QE vendor id ${hex(quote.qeVendorId)} is not Intel's`);
  const { leaf, root } = verifyPckChain(quote, policy.roots, now);
  if (!rawVerify(quote.qeReport, leaf.publicKey, quote.qeReportSignature)) {
    fail('QE_REPORT_SIGNATURE', 'the QE report is not signed by the PCK certificate key');
  }
  const qeBinding = sha('sha256', quote.attestationKey, quote.qeAuthData);
  if (!quote.qe.reportData.subarray(0, 32).equals(qeBinding)) {
    fail('QE_REPORT_DATA', 'the QE report data does not start with SHA-256(attestation key || QE auth data)');
  }
  let attestationKey;
  try {
    attestationKey = p256Key(quote.attestationKey);
  } catch (e) {
    fail('QUOTE_MALFORMED', `the attestation key is not a P-256 point: ${e.message}`);
  }
  if (!rawVerify(quote.signed, attestationKey, quote.isvSignature)) {
    fail('QUOTE_SIGNATURE', 'the ISV report is not signed by the attestation key');
  }

  const reportData = quote.body.reportData.subarray(0, 32);
  const spkiSha256 = sha('sha256', cert.spki);
  if (evidence.format === 'legacy') {
    if (!reportData.equals(spkiSha256)) {
      fail('REPORT_DATA_MISMATCH', `report_data ${hex(reportData)} is not SHA-256 of the certificate key ${hex(spkiSha256)}`);
    }
  } else {
    const claimsHash = sha('sha256', evidence.claims);
    if (!reportData.equals(claimsHash)) {
      fail('REPORT_DATA_MISMATCH', `report_data ${hex(reportData)} is not SHA-256 of the DICE claims ${hex(claimsHash)}`);
    }
    if (!sha(evidence.pubkeyHash.alg, cert.spki).equals(evidence.pubkeyHash.hash)) {
      fail('REPORT_DATA_MISMATCH', 'the DICE pubkey-hash claim is not the hash of the certificate key');
    }
  }

  const b = quote.body;
  if (!(b.flags & FLAGS.INIT) || !(b.flags & FLAGS.MODE64BIT)) {
    fail('ENCLAVE_ATTRIBUTES', `enclave attributes 0x${b.flags.toString(16)} lack INIT or MODE64BIT`);
  }
  if (b.flags & (FLAGS.PROVISION_KEY | FLAGS.EINITTOKEN_KEY)) {
    fail('ENCLAVE_ATTRIBUTES', `enclave attributes 0x${b.flags.toString(16)} grant PROVISION_KEY or EINITTOKEN_KEY`);
  }
  const debug = (b.flags & FLAGS.DEBUG) !== 0n;
  if (debug && !policy.allowDebug) fail('DEBUG_ENCLAVE', 'the enclave is a debug enclave (ATTRIBUTES.DEBUG), which the policy denies');
  if (policy.mrenclave.length && !policy.mrenclave.some((m) => m.equals(b.mrenclave))) {
    fail('MRENCLAVE', `MRENCLAVE ${hex(b.mrenclave)} is not the expected ${policy.mrenclave.map(hex).join(' or ')}`);
  }
  if (policy.mrsigner.length && !policy.mrsigner.some((m) => m.equals(b.mrsigner))) {
    fail('MRSIGNER', `MRSIGNER ${hex(b.mrsigner)} is not the expected ${policy.mrsigner.map(hex).join(' or ')}`);
  }
  if (policy.isvProdId != null && b.isvProdId !== policy.isvProdId) {
    fail('ISV_PROD_ID', `ISV_PROD_ID ${b.isvProdId} is not the expected ${policy.isvProdId}`);
  }
  if (policy.minIsvSvn != null && b.isvSvn < policy.minIsvSvn) {
    fail('ISV_SVN', `ISV_SVN ${b.isvSvn} is below the required ${policy.minIsvSvn}`);
  }
  return {
    format: evidence.format,
    mrenclave: hex(b.mrenclave),
    mrsigner: hex(b.mrsigner),
    isvProdId: b.isvProdId,
    isvSvn: b.isvSvn,
    debug,
    tcbStatus: 'Unknown',
    spkiSha256: hex(spkiSha256),
    commonName: commonName(x509),
    root: root.subject.replace(/\n/g, ', '),
  };
}

// The subject CN (exactly one), which gRPC uses as the TLS target name.
function commonName(x509) {
  const cns = x509.subject.split('\n').filter((l) => l.startsWith('CN=')).map((l) => l.slice(3));
  if (cns.length !== 1) fail('CERT_MALFORMED', `the certificate subject has ${cns.length} common names, expected 1`);
  return cns[0];
}

module.exports = { verifyCertificate, commonName, x509FromDer };
