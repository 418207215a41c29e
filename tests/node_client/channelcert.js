'use strict';
// The channel certificate of a one-way client (ratls/PROTOCOL.md section 2, "An unattested client"): a fresh EC
// P-256 key and a self-signed X.509 v3 certificate over it, built here in DER by hand (node:crypto signs but
// builds no certificates): subject = issuer = exactly CN=RATLS-<first 16 lower-case hex digits of SHA-256 of the
// SubjectPublicKeyInfo DER>-channel, a random positive 64-bit serial, valid from a minute ago for a day, no
// extensions, signed ecdsa-with-SHA256.

const crypto = require('node:crypto');
const der = require('./der');

const ECDSA_WITH_SHA256 = der.seq(der.oid('1.2.840.10045.4.3.2')); // no parameters (RFC 5758)
const COMMON_NAME = '2.5.4.3';
const VALID_BEFORE_NOW_MS = 60 * 1000;
const VALID_AFTER_NOW_MS = 24 * 3600 * 1000;

function channelCommonName(spkiDer) {
  return `RATLS-${crypto.createHash('sha256').update(spkiDer).digest('hex').slice(0, 16)}-channel`;
}

// {keyPem (PKCS#8), certDer, certPem, commonName} for a new key.
function makeOneWayIdentity(now = Date.now()) {
  const { privateKey, publicKey } = crypto.generateKeyPairSync('ec', { namedCurve: 'prime256v1' });
  const spki = publicKey.export({ type: 'spki', format: 'der' });
  const cn = channelCommonName(spki);
  const name = der.seq(der.set(der.seq(der.oid(COMMON_NAME), der.utf8String(cn))));
  const serial = crypto.randomBytes(8);
  serial[0] = (serial[0] & 0x7f) | 0x01; // positive, never zero, 8 bytes of content
  const tbs = der.seq(
    der.tlv(0xa0, der.integer([2])), // version v3
    der.integer(serial),
    ECDSA_WITH_SHA256,
    name,
    der.seq(der.time(new Date(now - VALID_BEFORE_NOW_MS)), der.time(new Date(now + VALID_AFTER_NOW_MS))),
    name,
    spki,
  );
  const signature = crypto.sign('sha256', tbs, privateKey); // DER ECDSA-Sig-Value, as X.509 wants
  const certDer = der.seq(tbs, ECDSA_WITH_SHA256, der.bitString(signature));
  return {
    keyPem: privateKey.export({ type: 'pkcs8', format: 'pem' }),
    certDer,
    certPem: new crypto.X509Certificate(certDer).toString(),
    commonName: cn,
  };
}

module.exports = { makeOneWayIdentity, channelCommonName };
