#include "bytes.h"

#include <stdlib.h>
#include <string.h>

int cbs_skip(cbs *s, size_t n) {
    if (s->len < n) return 0;
    s->data += n;
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

void cbb_init(cbb *b) { memset(b, 0, sizeof(*b)); }

void cbb_cleanup(cbb *b) {
    free(b->data);
    cbb_init(b);
}

static int cbb_reserve(cbb *b, size_t n) {
    if (b->failed) return 0;
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
    memset(b->data + b->len, 0, n);
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

uint8_t *cbb_finish(cbb *b, size_t *len) {
    if (b->failed) {
        cbb_cleanup(b);
        return NULL;
    }
    uint8_t *out = b->data;
    if (!out) out = malloc(1);
    *len = b->len;
    cbb_init(b);
    return out;
}
