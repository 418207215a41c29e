#include "bytes.h"

#include <stdlib.h>
#include <string.h>

int cbs_skip(cbs *s, size_t n) {
    if (s->len < n) return 0;
    if (n) s->data += n; /* an empty reader's data may be NULL, and NULL + 0 is undefined */
    s->len -= n;
    return 1;
}

int cbs_copy(cbs *s, void *out, size_t n) {
    if (s->len < n) return 0;
    if (n) memcpy(out, s->data, n);
    return cbs_skip(s, n);
}

int cbs_get_bytes(cbs *s, cbs *out, size_t n) {
    if (s->len < n) return 0;
    cbs_init(out, s->data, n);
    return cbs_skip(s, n);
}

static int get_uint(cbs *s, size_t n, int little_endian, uint64_t *out) {
    if (s->len < n) return 0;
    uint64_t v = 0;
    for (size_t i = 0; i < n; i++) {
        size_t idx = little_endian ? n - 1 - i : i;
        v = (v << 8) | s->data[idx];
    }
    *out = v;
    return cbs_skip(s, n);
}

int cbs_get_u8(cbs *s, uint8_t *out) {
    uint64_t v;
    if (!get_uint(s, 1, 1, &v)) return 0;
    *out = (uint8_t)v;
    return 1;
}

#define DEFINE_GET(name, type, n, le)          \
    int name(cbs *s, type *out) {              \
        uint64_t v;                            \
        if (!get_uint(s, n, le, &v)) return 0; \
        *out = (type)v;                        \
        return 1;                              \
    }
DEFINE_GET(cbs_get_u16le, uint16_t, 2, 1)
DEFINE_GET(cbs_get_u32le, uint32_t, 4, 1)
DEFINE_GET(cbs_get_u64le, uint64_t, 8, 1)
DEFINE_GET(cbs_get_u16be, uint16_t, 2, 0)
DEFINE_GET(cbs_get_u32be, uint32_t, 4, 0)
DEFINE_GET(cbs_get_u64be, uint64_t, 8, 0)

/* Reads a DER tag and length, leaving `s` at the contents; 0 (with `s` partly read) when they are not DER. */
static int get_der_head(cbs *s, uint8_t *tag, size_t *len) {
    uint8_t first;
    if (!cbs_get_u8(s, tag) || (*tag & 0x1f) == 0x1f || !cbs_get_u8(s, &first)) return 0;
    if (first < 0x80) {
        *len = first;
        return 1;
    }
    size_t n = first & 0x7f; /* 0 is the indefinite form; more than 4 bytes is far beyond anything parsed here */
    if (n == 0 || n > 4) return 0;
    uint64_t v;
    if (!get_uint(s, n, 0, &v)) return 0;
    /* DER: the long form only from 0x80 on, without leading zero bytes. */
    if (v < 0x80 || v >> (8 * (n - 1)) == 0) return 0;
    *len = (size_t)v;
    return 1;
}

static int get_der(cbs *s, uint8_t tag, cbs *out, int whole) {
    cbs contents = *s;
    uint8_t t;
    size_t len;
    if (!get_der_head(&contents, &t, &len) || t != tag || len > contents.len) return 0;
    size_t header = (size_t)(contents.data - s->data);
    cbs_get_bytes(s, out, header + len); /* cannot fail: the header and len bytes are there */
    if (!whole) cbs_skip(out, header);
    return 1;
}

int cbs_get_der(cbs *s, uint8_t tag, cbs *contents) { return get_der(s, tag, contents, 0); }
int cbs_get_der_element(cbs *s, uint8_t tag, cbs *element) { return get_der(s, tag, element, 1); }

void cbb_init(cbb *b) { memset(b, 0, sizeof(*b)); }

void cbb_cleanup(cbb *b) {
    free(b->data);
    cbb_init(b);
}

static int cbb_reserve(cbb *b, size_t n) {
    if (b->failed || b->child_open) { /* bytes written now would land before the open child's */
        b->failed = 1;
        return 0;
    }
    if (n > SIZE_MAX - b->len) {
        b->failed = 1;
        return 0;
    }
    size_t need = b->len + n;
    if (need <= b->cap) return 1;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < need) cap = cap > SIZE_MAX / 2 ? need : cap * 2;
    uint8_t *p = realloc(b->data, cap);
    if (!p) {
        b->failed = 1;
        return 0;
    }
    b->data = p;
    b->cap = cap;
    return 1;
}

int cbb_add(cbb *b, const void *data, size_t n) {
    if (!cbb_reserve(b, n)) return 0;
    if (n) memcpy(b->data + b->len, data, n);
    b->len += n;
    return 1;
}

int cbb_add_zeros(cbb *b, size_t n) {
    if (!cbb_reserve(b, n)) return 0;
    if (n) memset(b->data + b->len, 0, n); /* data is still NULL when nothing was ever written */
    b->len += n;
    return 1;
}

static int add_le(cbb *b, uint64_t v, size_t n) {
    uint8_t tmp[8];
    for (size_t i = 0; i < n; i++) tmp[i] = (uint8_t)(v >> (8 * i));
    return cbb_add(b, tmp, n);
}

int cbb_add_u8(cbb *b, uint8_t v) { return cbb_add(b, &v, 1); }
int cbb_add_u16le(cbb *b, uint16_t v) { return add_le(b, v, 2); }
int cbb_add_u32le(cbb *b, uint32_t v) { return add_le(b, v, 4); }
int cbb_add_u64le(cbb *b, uint64_t v) { return add_le(b, v, 8); }

static int open_child(cbb *parent, cbb *child, uint8_t prefix, uint8_t tag) {
    cbb_init(child);
    if (parent->failed || parent->child_open || (tag & 0x1f) == 0x1f) { /* 0x1f: a multi-byte tag follows */
        parent->failed = 1;
        child->failed = 1;
        return 0;
    }
    parent->child_open = 1;
    child->parent = parent;
    child->prefix = prefix;
    child->tag = tag;
    return 1;
}

int cbb_add_u16le_prefixed(cbb *parent, cbb *child) { return open_child(parent, child, CBB_PREFIX_U16LE, 0); }
int cbb_add_u32le_prefixed(cbb *parent, cbb *child) { return open_child(parent, child, CBB_PREFIX_U32LE, 0); }
int cbb_add_der(cbb *parent, cbb *child, uint8_t tag) { return open_child(parent, child, CBB_PREFIX_DER, tag); }

static int add_der_head(cbb *b, uint8_t tag, size_t len) {
    uint8_t head[2 + sizeof(size_t)] = {tag};
    size_t n = 1;
    if (len < 0x80) {
        head[n++] = (uint8_t)len;
    } else {
        size_t bytes = 0;
        for (size_t v = len; v; v >>= 8) bytes++;
        head[n++] = (uint8_t)(0x80 | bytes);
        while (bytes--) head[n++] = (uint8_t)(len >> (8 * bytes));
    }
    return cbb_add(b, head, n);
}

static int add_prefix(cbb *parent, const cbb *child) {
    switch (child->prefix) {
    case CBB_PREFIX_U16LE:
        return child->len <= UINT16_MAX && cbb_add_u16le(parent, (uint16_t)child->len);
    case CBB_PREFIX_U32LE:
        return child->len <= UINT32_MAX && cbb_add_u32le(parent, (uint32_t)child->len);
    default:
        return add_der_head(parent, child->tag, child->len);
    }
}

int cbb_close(cbb *child) {
    cbb *parent = child->parent;
    int ok = parent && parent->child_open;
    if (ok) {
        parent->child_open = 0;
        ok = !child->failed && add_prefix(parent, child) && cbb_add(parent, child->data, child->len);
        if (!ok) parent->failed = 1;
    }
    cbb_cleanup(child);
    return ok;
}

uint8_t *cbb_finish(cbb *b, size_t *len) {
    if (b->failed || b->child_open) {
        cbb_cleanup(b);
        return NULL;
    }
    uint8_t *out = b->data;
    if (!out) out = malloc(1);
    *len = b->len;
    cbb_init(b);
    return out;
}
