/* Bounds-checked byte reading and growable writing, after BoringSSL's CBS/CBB: every read checks the
 * remaining length first and fails without moving on a short input; lengths are always explicit. */
#ifndef RATLS_BYTES_H
#define RATLS_BYTES_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
    const uint8_t *data;
    size_t len;
} cbs;

static inline void cbs_init(cbs *s, const uint8_t *data, size_t len) {
    s->data = data;
    s->len = len;
}

/* Users read a cbs through these, so the representation stays bytes.c's business. */
static inline size_t cbs_len(const cbs *s) { return s->len; }
static inline const uint8_t *cbs_data(const cbs *s) { return s->data; }

/* Each returns 1 on success and 0 (consuming nothing) when fewer bytes remain than needed. */
int cbs_skip(cbs *s, size_t n);
int cbs_get_u8(cbs *s, uint8_t *out);
int cbs_get_u16le(cbs *s, uint16_t *out);
int cbs_get_u32le(cbs *s, uint32_t *out);
int cbs_get_u64le(cbs *s, uint64_t *out);
int cbs_get_u16be(cbs *s, uint16_t *out);
int cbs_get_u32be(cbs *s, uint32_t *out);
int cbs_get_u64be(cbs *s, uint64_t *out);
int cbs_copy(cbs *s, void *out, size_t n);
/* Splits off the next n bytes as their own cbs. */
int cbs_get_bytes(cbs *s, cbs *out, size_t n);
/* Offset of the cursor relative to `base` (the start of the buffer it was cut from). */
static inline size_t cbs_offset(const cbs *s, const uint8_t *base) { return (size_t)(s->data - base); }

/* A growable output buffer. On allocation failure `failed` is set and further writes are no-ops. */
typedef struct {
    uint8_t *data;
    size_t len;
    size_t cap;
    int failed;
} cbb;

void cbb_init(cbb *b);
void cbb_cleanup(cbb *b);
int cbb_add(cbb *b, const void *data, size_t n);
int cbb_add_u8(cbb *b, uint8_t v);
int cbb_add_u16le(cbb *b, uint16_t v);
int cbb_add_u32le(cbb *b, uint32_t v);
int cbb_add_u64le(cbb *b, uint64_t v);
int cbb_add_zeros(cbb *b, size_t n);
/* Hands the buffer to the caller (malloc'ed; free with ratls_free) and resets b. NULL if it failed. */
uint8_t *cbb_finish(cbb *b, size_t *len);

#endif
