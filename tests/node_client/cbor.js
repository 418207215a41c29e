'use strict';
// A CBOR (RFC 8949) reader for what the TCG DICE tagged-evidence extension holds: unsigned integers, byte and text
// strings, arrays, maps and tags, all definite-length (Gramine writes nothing else). Anything else is an error.

class CborError extends Error {}

class Tagged {
  constructor(tag, value) {
    this.tag = tag;
    this.value = value;
  }
}

// A map, as its [key, value] pairs in order (duplicate keys stay visible to the caller).
class CborMap {
  constructor(entries) {
    this.entries = entries;
  }
}

const MAX_DEPTH = 8;

function readHead(buf, pos) {
  if (pos >= buf.length) throw new CborError('truncated CBOR');
  const major = buf[pos] >> 5;
  const info = buf[pos] & 0x1f;
  pos += 1;
  let arg;
  if (info < 24) {
    arg = info;
  } else if (info >= 24 && info <= 27) {
    const n = 1 << (info - 24);
    if (pos + n > buf.length) throw new CborError('truncated CBOR argument');
    arg = 0;
    for (let i = 0; i < n; i++) arg = arg * 256 + buf[pos + i];
    if (arg > Number.MAX_SAFE_INTEGER) throw new CborError('CBOR argument too large');
    pos += n;
  } else {
    throw new CborError(`CBOR indefinite length or reserved value (major type ${major}, info ${info})`);
  }
  return { major, arg, pos };
}

function readItem(buf, pos, depth) {
  if (depth > MAX_DEPTH) throw new CborError('CBOR nested too deeply');
  const h = readHead(buf, pos);
  pos = h.pos;
  switch (h.major) {
    case 0:
      return { value: h.arg, pos };
    case 2:
    case 3: {
      if (pos + h.arg > buf.length) throw new CborError('truncated CBOR string');
      const bytes = buf.subarray(pos, pos + h.arg);
      return { value: h.major === 2 ? bytes : new TextDecoder('utf-8', { fatal: true }).decode(bytes), pos: pos + h.arg };
    }
    case 4: {
      const items = [];
      for (let i = 0; i < h.arg; i++) {
        const r = readItem(buf, pos, depth + 1);
        items.push(r.value);
        pos = r.pos;
      }
      return { value: items, pos };
    }
    case 5: {
      const entries = [];
      for (let i = 0; i < h.arg; i++) {
        const k = readItem(buf, pos, depth + 1);
        const v = readItem(buf, k.pos, depth + 1);
        entries.push([k.value, v.value]);
        pos = v.pos;
      }
      return { value: new CborMap(entries), pos };
    }
    case 6: {
      const r = readItem(buf, pos, depth + 1);
      return { value: new Tagged(h.arg, r.value), pos: r.pos };
    }
    default:
      throw new CborError(`unsupported CBOR major type ${h.major}`);
  }
}

// Exactly one CBOR item filling `buf`.
function decode(buf) {
  const r = readItem(buf, 0, 0);
  if (r.pos !== buf.length) throw new CborError(`${buf.length - r.pos} bytes after the CBOR item`);
  return r.value;
}

module.exports = { CborError, CborMap, Tagged, decode };
