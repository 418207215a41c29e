#include "cbor.h"

int cbor_get_head(cbs *s, uint8_t *major, uint64_t *arg) {
    cbs save = *s;
    uint8_t initial;
    if (!cbs_get_u8(s, &initial)) return 0;
    uint8_t info = initial & 0x1f;
    uint64_t v;
    int ok = 1;
    if (info < 24) {
        v = info;
    } else if (info == 24) {
        uint8_t b;
        ok = cbs_get_u8(s, &b) && b >= 24;
        v = b;
    } else if (info == 25) {
        uint16_t b;
        ok = cbs_get_u16be(s, &b) && b > 0xff;
        v = b;
    } else if (info == 26) {
        uint32_t b;
        ok = cbs_get_u32be(s, &b) && b > 0xffff;
        v = b;
    } else if (info == 27) {
        ok = cbs_get_u64be(s, &v) && v > 0xffffffffu;
    } else {
        ok = 0; /* 28..30 reserved, 31 indefinite length */
    }
    if (!ok) {
        *s = save;
        return 0;
    }
    *major = initial >> 5;
    *arg = v;
    return 1;
}

int cbor_get_string(cbs *s, uint8_t major, cbs *out) {
    cbs save = *s;
    uint8_t m;
    uint64_t len;
    if (!cbor_get_head(s, &m, &len) || m != major || len > cbs_len(s) || !cbs_get_bytes(s, out, (size_t)len)) {
        *s = save;
        return 0;
    }
    return 1;
}

static int skip_item(cbs *s, unsigned depth_left) {
    uint8_t major;
    uint64_t arg;
    cbs unused;
    if (!cbor_get_head(s, &major, &arg)) return 0;
    switch (major) {
    case CBOR_UINT:
    case CBOR_NEGINT:
        return 1;
    case CBOR_BYTES:
    case CBOR_TEXT:
        return arg <= cbs_len(s) && cbs_get_bytes(s, &unused, (size_t)arg);
    case CBOR_ARRAY:
    case CBOR_MAP:
    case CBOR_TAG: {
        if (depth_left == 0) return 0;
        /* Every item takes at least one byte, so a count beyond the bytes left is truncation, found before looping. */
        uint64_t items = major == CBOR_TAG ? 1 : major == CBOR_MAP ? arg * 2 : arg;
        if ((major == CBOR_MAP && arg > UINT64_MAX / 2) || items > cbs_len(s)) return 0;
        for (uint64_t i = 0; i < items; i++)
            if (!skip_item(s, depth_left - 1)) return 0;
        return 1;
    }
    default:
        return 0; /* major 7: floats and simple values */
    }
}

int cbor_skip(cbs *s, unsigned max_depth) {
    cbs save = *s;
    if (!skip_item(s, max_depth)) {
        *s = save;
        return 0;
    }
    return 1;
}

int cbor_add_head(cbb *b, uint8_t major, uint64_t arg) {
    uint8_t m = (uint8_t)(major << 5);
    if (arg < 24) return cbb_add_u8(b, m | (uint8_t)arg);
    uint8_t buf[9];
    size_t n;
    if (arg <= 0xff) {
        buf[0] = m | 24;
        n = 1;
    } else if (arg <= 0xffff) {
        buf[0] = m | 25;
        n = 2;
    } else if (arg <= 0xffffffffu) {
        buf[0] = m | 26;
        n = 4;
    } else {
        buf[0] = m | 27;
        n = 8;
    }
    for (size_t i = 0; i < n; i++) buf[1 + i] = (uint8_t)(arg >> (8 * (n - 1 - i)));
    return cbb_add(b, buf, n + 1);
}

int cbor_add_string(cbb *b, uint8_t major, const void *data, size_t len) {
    return cbor_add_head(b, major, len) && cbb_add(b, data, len);
}
