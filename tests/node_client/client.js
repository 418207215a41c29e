#!/usr/bin/env node
'use strict';
// A Node.js client of the RA-TLS attestation protocol (ratls/PROTOCOL.md), written from that document: attest a
// server on its attestation port (TLS 1.3, our RA-TLS certificate or, one-way, none), verify its RA-TLS
// certificate ourselves (verify.js), send our channel certificate (RATC), read the 8-byte verdict (RAT1/RATN),
// then call a unary gRPC method with @grpc/grpc-js over a channel pinned to the attested server certificate.
//
//   node client.js connect --host H --port ATTESTATION_PORT --grpc-port GRPC_PORT --root ROOT.pem
//                          --mrenclave HEX [--mrsigner HEX] [--allow-debug]
//                          (--key key.pem --cert cert.pem --channel-cert channel.pem | --one-way)
//                          [--method /pkg.Service/Method] [--request TEXT] [--timeout-ms MS]
//   node client.js verify --cert CERT.pem|.der --root ROOT.pem --mrenclave HEX [--allow-debug] [--time UNIX]
//   node client.js channel-cert --out-key KEY.pem --out-cert CERT.pem     (a one-way key and channel certificate)
//
// Output: one JSON line on stdout. Exit status: 0 attested (and the call answered); 2 we rejected the server's
// certificate ({"server_rejected": REASON}); 3 the server refused us ({"refused": REASON, "code": N}); 4 not
// attested for another reason (a TLS failure, an unknown reply, a timeout: {"error": REASON}); 5 attested but the
// gRPC call failed; 64 bad usage.

const fs = require('node:fs');
const tls = require('node:tls');
const { X509Certificate } = require('node:crypto');
const { parseArgs } = require('node:util');
const { REASONS, RatlsError } = require('./reasons');
const { verifyCertificate, x509FromDer } = require('./verify');
const { makeOneWayIdentity } = require('./channelcert');

const MAGIC_CHANNEL = Buffer.from('RATC');
const MAGIC_ACK = Buffer.from('RAT1');
const MAGIC_REFUSAL = Buffer.from('RATN');
const MAX_CHANNEL_CERT = 4096;
const EXIT = { OK: 0, SERVER_REJECTED: 2, REFUSED: 3, NOT_ATTESTED: 4, CALL_FAILED: 5, USAGE: 64 };

class UsageError extends Error {}

function emit(obj, code) {
  process.stdout.write(JSON.stringify(obj) + '\n', () => process.exit(code));
}

function hexList(values, name) {
  return (values || []).map((v) => {
    if (!/^[0-9a-fA-F]{64}$/.test(v)) throw new UsageError(`--${name} must be 64 hex digits, got ${JSON.stringify(v)}`);
    return Buffer.from(v, 'hex');
  });
}

function readCertificates(path) {
  const data = fs.readFileSync(path);
  const text = data.toString('latin1');
  if (data[0] === 0x30) return [x509FromDer(data)]; // DER (a SEQUENCE; see x509FromDer)
  return [...text.matchAll(/-----BEGIN CERTIFICATE-----[\s\S]*?-----END CERTIFICATE-----/g)]
    .map((m) => new X509Certificate(m[0]));
}

function pemToDer(pem) {
  return new X509Certificate(pem).raw;
}

function policyFrom(v) {
  if (!v.root || v.root.length === 0) throw new UsageError('--root is required (the PCK root(s) to trust)');
  const policy = {
    roots: v.root.flatMap(readCertificates),
    mrenclave: hexList(v.mrenclave, 'mrenclave'),
    mrsigner: hexList(v.mrsigner, 'mrsigner'),
    isvProdId: v['isv-prod-id'] == null ? null : Number(v['isv-prod-id']),
    minIsvSvn: v['min-isv-svn'] == null ? null : Number(v['min-isv-svn']),
    allowDebug: Boolean(v['allow-debug']),
  };
  if (!policy.mrenclave.length && !policy.mrsigner.length) {
    throw new UsageError('give --mrenclave and/or --mrsigner: a policy without a measurement accepts any enclave');
  }
  return policy;
}

// PROTOCOL.md sections 1-3: TLS 1.3 to the attestation port, our own verification of the server's certificate
// before anything is sent, RATC + u16 length + channel certificate DER, then exactly 8 bytes of reply.
// Resolves {serverDer, evidence, ttl}; rejects with RatlsError (reason 'PEER_REFUSED' carries .peerCode).
function attest({ host, port, key, cert, channelDer, policy, timeoutMs }) {
  return new Promise((resolve, reject) => {
    const where = `${host}:${port}`;
    let settled = false;
    let verified = null;
    let reply = Buffer.alloc(0);
    const options = {
      host, port, minVersion: 'TLSv1.3', maxVersion: 'TLSv1.3', rejectUnauthorized: false,
    };
    if (key && cert) Object.assign(options, { key, cert });
    const sock = tls.connect(options);
    const finish = (err, value) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      if (err) sock.destroy();
      else sock.end(); // we have the reply: close our side (the server reads until we close)
      if (err) reject(err);
      else resolve(value);
    };
    const timer = setTimeout(() => finish(new RatlsError('TIMEOUT', `no attestation reply from ${where} within ${timeoutMs} ms`)), timeoutMs);

    const maybeDone = () => {
      if (!verified || reply.length < 8) return;
      const magic = reply.subarray(0, 4);
      const value = reply.readUInt32BE(4);
      if (magic.equals(MAGIC_ACK)) {
        finish(null, { ...verified, ttl: value });
      } else if (magic.equals(MAGIC_REFUSAL)) {
        const name = REASONS[value];
        const what = name && value !== 0 ? name : `reason code ${value}, unknown to this client`;
        const err = new RatlsError('PEER_REFUSED', `the attestation server refused our certificate: ${what} (${where})`);
        err.peerCode = value;
        err.peerReason = name || null;
        finish(err);
      } else {
        finish(new RatlsError('HANDSHAKE', `unknown attestation reply ${reply.subarray(0, 8).toString('hex')} from ${where}`));
      }
    };

    sock.on('secureConnect', () => {
      if (sock.getProtocol() !== 'TLSv1.3') return finish(new RatlsError('HANDSHAKE', `negotiated ${sock.getProtocol()}, not TLS 1.3`));
      const peer = sock.getPeerCertificate(true);
      if (!peer || !peer.raw) return finish(new RatlsError('HANDSHAKE', `${where} presented no certificate`));
      if (peer.issuerCertificate && peer.issuerCertificate.fingerprint256 !== peer.fingerprint256) {
        return finish(new RatlsError('CERT_MALFORMED', `${where} presented more than one certificate`));
      }
      // Our verification of the server, before we send anything: a server that fails it gets nothing after the
      // handshake (Node has no certificate-verify callback, so this runs just after it, when in TLS 1.3 the
      // server has our certificate already: PROTOCOL.md section 8, "No verify callback").
      let evidence;
      try {
        evidence = verifyCertificate(peer.raw, policy);
      } catch (e) {
        return finish(e instanceof RatlsError ? e : new RatlsError('INTERNAL', String(e && e.stack || e)));
      }
      verified = { serverDer: peer.raw, evidence };
      const header = Buffer.alloc(6);
      MAGIC_CHANNEL.copy(header, 0);
      header.writeUInt16BE(channelDer.length, 4);
      sock.write(Buffer.concat([header, channelDer]));
      maybeDone();
    });
    sock.on('data', (d) => {
      reply = Buffer.concat([reply, d]).subarray(0, 8);
      maybeDone();
    });
    sock.on('end', () => finish(new RatlsError('IO', `${where} closed the connection after ${reply.length} of 8 reply bytes`)));
    sock.on('close', () => finish(new RatlsError('IO', `the connection to ${where} closed after ${reply.length} of 8 reply bytes`)));
    sock.on('error', (e) => {
      const tlsFailure = !verified || String(e.code || '').startsWith('ERR_SSL');
      finish(new RatlsError(tlsFailure ? 'HANDSHAKE' : 'IO', `${where}: ${e.message.trim()}`));
    });
  });
}

// PROTOCOL.md section 4: the attested certificate as the only root, its CN as the TLS target name, our channel
// certificate and key as the client identity. checkServerIdentity pins the exact certificate (a certificate the
// attested key signed may also chain to that root: PROTOCOL.md section 8, "Pinning").
function callUnary({ target, serverDer, serverCn, keyPem, channelPem, method, request, timeoutMs }) {
  const grpc = require('@grpc/grpc-js');
  const rootPem = x509FromDer(serverDer).toString();
  const creds = grpc.credentials.createSsl(Buffer.from(rootPem), Buffer.from(keyPem), Buffer.from(channelPem), {
    checkServerIdentity: (_host, cert) =>
      cert.raw && cert.raw.equals(serverDer) ? undefined : new Error('the gRPC server is not the attested certificate'),
  });
  const client = new grpc.Client(target, creds, { 'grpc.ssl_target_name_override': serverCn });
  const identity = (b) => b;
  return new Promise((resolve, reject) => {
    client.makeUnaryRequest(method, identity, identity, Buffer.from(request), new grpc.Metadata(),
      { deadline: Date.now() + timeoutMs }, (err, reply) => {
        client.close();
        if (err) reject(err);
        else resolve(reply);
      });
  });
}

async function connect(v) {
  for (const required of ['host', 'port', 'grpc-port']) {
    if (v[required] == null) throw new UsageError(`--${required} is required`);
  }
  const policy = policyFrom(v);
  const timeoutMs = Number(v['timeout-ms'] || 10000);
  let key;
  let cert;
  let keyPem;
  let channelPem;
  let channelDer;
  if (v['one-way']) {
    if (v.key || v.cert || v['channel-cert']) throw new UsageError('--one-way presents no certificate: drop --key/--cert/--channel-cert');
    const me = makeOneWayIdentity();
    ({ keyPem, certPem: channelPem, certDer: channelDer } = me);
  } else {
    if (!v.key || !v.cert || !v['channel-cert']) throw new UsageError('give --key, --cert and --channel-cert, or --one-way');
    keyPem = fs.readFileSync(v.key);
    key = keyPem;
    cert = fs.readFileSync(v.cert);
    channelPem = fs.readFileSync(v['channel-cert']);
    channelDer = pemToDer(channelPem);
  }
  if (channelDer.length < 1 || channelDer.length > MAX_CHANNEL_CERT) {
    throw new UsageError(`the channel certificate is ${channelDer.length} bytes; the protocol allows 1..${MAX_CHANNEL_CERT}`);
  }
  const out = { mode: v['one-way'] ? 'one-way' : 'mutual' };
  const t0 = process.hrtime.bigint();
  let attested;
  try {
    attested = await attest({ host: v.host, port: Number(v.port), key, cert, channelDer, policy, timeoutMs });
  } catch (e) {
    if (!(e instanceof RatlsError)) throw e;
    if (e.reason === 'PEER_REFUSED') {
      return emit({ ...out, attested: false, refused: e.peerReason || 'UNKNOWN', code: e.peerCode, message: e.message }, EXIT.REFUSED);
    }
    if (['TIMEOUT', 'IO', 'HANDSHAKE', 'INTERNAL'].includes(e.reason)) {
      return emit({ ...out, attested: false, error: e.reason, message: e.message }, EXIT.NOT_ATTESTED);
    }
    return emit({ ...out, attested: false, server_rejected: e.reason, message: e.message }, EXIT.SERVER_REJECTED);
  }
  const attestMs = Number(process.hrtime.bigint() - t0) / 1e6;
  const ev = attested.evidence;
  Object.assign(out, {
    attested: true,
    ttl: attested.ttl,
    server_mrenclave: ev.mrenclave,
    server_mrsigner: ev.mrsigner,
    server_cn: ev.commonName,
    server_evidence_format: ev.format,
    server_debug: ev.debug,
    server_tcb_status: ev.tcbStatus,
    attest_ms: Math.round(attestMs * 10) / 10,
  });
  const t1 = process.hrtime.bigint();
  try {
    const reply = await callUnary({
      target: `${v.host}:${v['grpc-port']}`, serverDer: attested.serverDer, serverCn: ev.commonName, keyPem,
      channelPem, method: v.method || '/ratls.test.Echo/Hello', request: v.request || 'node', timeoutMs,
    });
    out.reply = reply.toString('utf8');
    out.call_ms = Math.round(Number(process.hrtime.bigint() - t1) / 1e5) / 10;
    return emit(out, EXIT.OK);
  } catch (e) {
    return emit({ ...out, grpc_error: e.code, message: e.details || e.message }, EXIT.CALL_FAILED);
  }
}

function verifyOffline(v) {
  if (!v.cert) throw new UsageError('--cert is required');
  const policy = policyFrom(v);
  const [cert] = readCertificates(v.cert);
  const now = v.time != null ? Number(v.time) * 1000 : Date.now();
  try {
    const ev = verifyCertificate(cert.raw, policy, now);
    return emit({ verified: true, ...ev }, EXIT.OK);
  } catch (e) {
    if (!(e instanceof RatlsError)) throw e;
    return emit({ verified: false, server_rejected: e.reason, message: e.message }, EXIT.SERVER_REJECTED);
  }
}

function channelCert(v) {
  if (!v['out-key'] || !v['out-cert']) throw new UsageError('--out-key and --out-cert are required');
  const me = makeOneWayIdentity();
  fs.writeFileSync(v['out-key'], me.keyPem, { mode: 0o600 });
  fs.writeFileSync(v['out-cert'], me.certPem);
  return emit({ channel_cn: me.commonName, bytes: me.certDer.length }, EXIT.OK);
}

const OPTIONS = {
  host: { type: 'string' },
  port: { type: 'string' },
  'grpc-port': { type: 'string' },
  root: { type: 'string', multiple: true },
  mrenclave: { type: 'string', multiple: true },
  mrsigner: { type: 'string', multiple: true },
  'isv-prod-id': { type: 'string' },
  'min-isv-svn': { type: 'string' },
  'allow-debug': { type: 'boolean' },
  key: { type: 'string' },
  cert: { type: 'string' },
  'channel-cert': { type: 'string' },
  'one-way': { type: 'boolean' },
  method: { type: 'string' },
  request: { type: 'string' },
  'timeout-ms': { type: 'string' },
  time: { type: 'string' },
  'out-key': { type: 'string' },
  'out-cert': { type: 'string' },
};

async function main() {
  const [command, ...rest] = process.argv.slice(2);
  const { values } = parseArgs({ args: rest, options: OPTIONS, strict: true });
  if (command === 'connect') return connect(values);
  if (command === 'verify') return verifyOffline(values);
  if (command === 'channel-cert') return channelCert(values);
  throw new UsageError('usage: node client.js connect|verify|channel-cert [options] (see the top of client.js)');
}

main().catch((e) => {
  const usage = e instanceof UsageError || (e && typeof e.code === 'string' && e.code.startsWith('ERR_PARSE_ARGS'));
  emit({ error: usage ? 'USAGE' : 'INTERNAL', message: String(usage ? e.message : (e && e.stack) || e) },
    usage ? EXIT.USAGE : EXIT.NOT_ATTESTED);
});
