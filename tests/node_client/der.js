'use strict';
// The little DER this client needs: reading a certificate's TBSCertificate fields (the SubjectPublicKeyInfo bytes
// and the extensions, which node:crypto's X509Certificate does not expose) and writing the one-way channel
// certificate (channelcert.js). Strict: definite lengths, minimal length encodings, nothing past the end.

class DerError extends Error {}

// One TLV at `pos` of `buf`: {tag, start, contentStart, end} (end = one past the last byte).
function readTlv(buf, pos, limit = buf.length) {
  if (pos + 2 > limit) throw new DerError(`truncated DER at offset ${pos}`);
  const tag = buf[pos];
  if ((tag & 0x1f) === 0x1f) throw new DerError(`multi-byte DER tag at offset ${pos}`);
  let len = buf[pos + 1];
  let contentStart = pos + 2;
  if (len & 0x80) {
    const n = len & 0x7f;
    if (n === 0 || n > 4) throw new DerError(`unsupported DER length form at offset ${pos}`);
    if (contentStart + n > limit) throw new DerError(`truncated DER length at offset ${pos}`);
    len = 0;
    for (let i = 0; i < n; i++) len = len * 256 + buf[contentStart + i];
    if (len < 0x80 || buf[contentStart] === 0) throw new DerError(`non-minimal DER length at offset ${pos}`);
    contentStart += n;
  }
  const end = contentStart + len;
  if (end > limit) throw new DerError(`DER value at offset ${pos} runs past its container`);
  return { tag, start: pos, contentStart, end };
}

// The TLVs directly inside a constructed TLV.
function children(buf, tlv) {
  const out = [];
  for (let pos = tlv.contentStart; pos < tlv.end;) {
    const child = readTlv(buf, pos, tlv.end);
    out.push(child);
    pos = child.end;
  }
  return out;
}

function expectTag(tlv, tag, what) {
  if (!tlv || tlv.tag !== tag) {
    throw new DerError(`${what}: expected DER tag 0x${tag.toString(16)}, got ${tlv ? '0x' + tlv.tag.toString(16) : 'nothing'}`);
  }
  return tlv;
}

const slice = (buf, tlv) => buf.subarray(tlv.start, tlv.end);
const content = (buf, tlv) => buf.subarray(tlv.contentStart, tlv.end);

// UTCTime (YYMMDDhhmmssZ, years 1950..2049) or GeneralizedTime (YYYYMMDDhhmmssZ) as a Date.
function readTime(buf, t) {
  const s = content(buf, t).toString('latin1');
  let m;
  if (t.tag === 0x17 && (m = /^(\d{2})(\d{2})(\d{2})(\d{2})(\d{2})(\d{2})Z$/.exec(s))) {
    m[1] = String((Number(m[1]) < 50 ? 2000 : 1900) + Number(m[1]));
  } else if (t.tag === 0x18 && (m = /^(\d{4})(\d{2})(\d{2})(\d{2})(\d{2})(\d{2})Z$/.exec(s))) {
    // as is
  } else {
    throw new DerError(`unsupported certificate time ${JSON.stringify(s)}`);
  }
  const [y, mo, d, h, mi, se] = m.slice(1, 7).map(Number);
  return new Date(Date.UTC(y, mo - 1, d, h, mi, se));
}

// The parts of an X.509 certificate this client uses: raw TBSCertificate fields and the extensions
// [{oid: Buffer (OID content bytes), critical: bool, value: Buffer (extnValue content)}].
function parseCertificate(der) {
  const cert = expectTag(readTlv(der, 0), 0x30, 'Certificate');
  if (cert.end !== der.length) throw new DerError('bytes after the certificate');
  const [tbs, sigAlg, sig] = children(der, cert);
  expectTag(tbs, 0x30, 'TBSCertificate');
  expectTag(sigAlg, 0x30, 'signatureAlgorithm');
  expectTag(sig, 0x03, 'signatureValue');
  const f = children(der, tbs);
  let i = 0;
  let version = 1;
  if (f[i] && f[i].tag === 0xa0) {
    const v = expectTag(children(der, f[i])[0], 0x02, 'version');
    version = content(der, v)[0] + 1;
    i++;
  }
  const serial = expectTag(f[i++], 0x02, 'serialNumber');
  expectTag(f[i++], 0x30, 'signature');
  const issuer = expectTag(f[i++], 0x30, 'issuer');
  const validity = children(der, expectTag(f[i++], 0x30, 'validity'));
  if (validity.length !== 2) throw new DerError('validity: expected notBefore and notAfter');
  const subject = expectTag(f[i++], 0x30, 'subject');
  const spki = expectTag(f[i++], 0x30, 'subjectPublicKeyInfo');
  const extensions = [];
  let sawExtensions = false;
  for (; i < f.length; i++) {
    if (f[i].tag === 0x81 || f[i].tag === 0x82) continue; // issuerUniqueID / subjectUniqueID
    if (f[i].tag !== 0xa3 || sawExtensions) throw new DerError(`unexpected TBSCertificate field 0x${f[i].tag.toString(16)}`);
    sawExtensions = true;
    const list = expectTag(children(der, f[i])[0], 0x30, 'extensions');
    for (const ext of children(der, list)) {
      const parts = children(der, expectTag(ext, 0x30, 'Extension'));
      const oid = expectTag(parts[0], 0x06, 'extnID');
      let critical = false;
      let j = 1;
      if (parts[j] && parts[j].tag === 0x01) {
        critical = content(der, parts[j])[0] !== 0;
        j++;
      }
      const value = expectTag(parts[j], 0x04, 'extnValue');
      if (parts.length !== j + 1) throw new DerError('extra fields in an Extension');
      extensions.push({ oid: Buffer.from(content(der, oid)), critical, value: content(der, value) });
    }
  }
  return {
    version,
    serial: content(der, serial),
    issuer: slice(der, issuer),
    subject: slice(der, subject),
    notBefore: readTime(der, validity[0]),
    notAfter: readTime(der, validity[1]),
    spki: slice(der, spki),
    extensions,
  };
}

// -- writing

function length(n) {
  if (n < 0x80) return Buffer.from([n]);
  const bytes = [];
  for (let v = n; v > 0; v = Math.floor(v / 256)) bytes.unshift(v & 0xff);
  return Buffer.from([0x80 | bytes.length, ...bytes]);
}

const tlv = (tag, ...parts) => {
  const body = Buffer.concat(parts);
  return Buffer.concat([Buffer.from([tag]), length(body.length), body]);
};
const seq = (...parts) => tlv(0x30, ...parts);
const set = (...parts) => tlv(0x31, ...parts);

// A non-negative INTEGER from big-endian magnitude bytes.
function integer(bytes) {
  let b = Buffer.from(bytes);
  while (b.length > 1 && b[0] === 0 && b[1] < 0x80) b = b.subarray(1);
  if (b[0] & 0x80) b = Buffer.concat([Buffer.from([0]), b]);
  return tlv(0x02, b);
}

function oid(dotted) {
  const arcs = dotted.split('.').map(Number);
  const out = [40 * arcs[0] + arcs[1]];
  for (const arc of arcs.slice(2)) {
    const groups = [];
    for (let v = arc; ; v = Math.floor(v / 128)) {
      groups.unshift(v & 0x7f);
      if (v < 128) break;
    }
    for (let k = 0; k < groups.length - 1; k++) groups[k] |= 0x80;
    out.push(...groups);
  }
  return tlv(0x06, Buffer.from(out));
}

// UTCTime for 1950..2049, GeneralizedTime after (RFC 5280 4.1.2.5), whole seconds, Z.
function time(date) {
  const iso = date.toISOString(); // 2025-01-02T03:04:05.678Z
  const digits = iso.slice(0, 19).replace(/[-T:]/g, '') + 'Z';
  const year = date.getUTCFullYear();
  return year < 2050 ? tlv(0x17, Buffer.from(digits.slice(2), 'ascii')) : tlv(0x18, Buffer.from(digits, 'ascii'));
}

const utf8String = (s) => tlv(0x0c, Buffer.from(s, 'utf8'));
const bitString = (bytes) => tlv(0x03, Buffer.from([0]), bytes);

module.exports = {
  DerError, readTlv, children, parseCertificate,
  tlv, seq, set, integer, oid, time, utf8String, bitString,
};
