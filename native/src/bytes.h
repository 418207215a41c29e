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

/* DER (X.690) tags in their one-byte form: universal, or context-specific [n] as DER_CONTEXT | n. */
#define DER_CONSTRUCTED 0x20
#define DER_CONTEXT 0x80
#define DER_BOOLEAN 0x01
#define DER_INTEGER 0x02
#define DER_OCTET_STRING 0x04
#define DER_OID 0x06
#define DER_SEQUENCE (0x10 | DER_CONSTRUCTED)

/* The next DER element, if its tag is `tag`: its contents, or the whole element (tag and length included). Each
 * returns 0, consuming nothing, on another tag, a multi-byte tag, an indefinite length (BER only), a length in
 * more bytes than it needs (not DER) or more than 4, or one that runs past the end. */
int cbs_get_der(cbs *s, uint8_t tag, cbs *contents);
int cbs_get_der_element(cbs *s, uint8_t tag, cbs *element);
/* Whether the next element's tag is `tag`, for OPTIONAL and DEFAULT fields. */
static inline int cbs_peek_der_tag(const cbs *s, uint8_t tag) { return s->len > 0 && s->data[0] == tag; }

/* The length prefix a child builder's contents get when it is closed. */
enum { CBB_PREFIX_U16LE, CBB_PREFIX_U32LE, CBB_PREFIX_DER };

/* A growable output buffer. On allocation failure `failed` is set and further writes are no-ops. */
typedef struct cbb {
    uint8_t *data;
    size_t len;
    size_t cap;
    int failed;
    int child_open;     /* a parent: takes no writes until its child is closed */
    struct cbb *parent; /* a child: where cbb_close puts its length and contents */
    uint8_t prefix;     /* a child: CBB_PREFIX_* */
    uint8_t tag;        /* a child: its DER tag, for CBB_PREFIX_DER */
} cbb;

void cbb_init(cbb *b);
void cbb_cleanup(cbb *b);
int cbb_add(cbb *b, const void *data, size_t n);
int cbb_add_u8(cbb *b, uint8_t v);
int cbb_add_u16le(cbb *b, uint16_t v);
int cbb_add_u32le(cbb *b, uint32_t v);
int cbb_add_u64le(cbb *b, uint64_t v);
int cbb_add_zeros(cbb *b, size_t n);
/* Length-prefixed children, after BoringSSL's CBB_add_u16_length_prefixed and CBB_add_asn1: `child` collects
 * contents that cbb_close appends to `parent` behind their length, so no caller counts bytes by hand. Unlike
 * BoringSSL's, a child has a buffer of its own (child.data and child.len are its contents alone; the copy at close
 * means a DER length of any size needs no moving of bytes). `child` is always initialised (failed if `parent` has
 * failed or already has an open child, or the tag is not one byte); close it on every path, which also frees it.
 * Writes to `parent` before then fail it. */
int cbb_add_u16le_prefixed(cbb *parent, cbb *child);
int cbb_add_u32le_prefixed(cbb *parent, cbb *child);
/* As the DER element `tag`: definite length, in the minimal form. */
int cbb_add_der(cbb *parent, cbb *child, uint8_t tag);
/* Appends the child's length and contents to its parent and frees the child. 0, with the parent failed, if the
 * child failed or its contents are too long for the prefix; 0 and nothing written if the child is not open (closed
 * already, or its parent was finished or cleaned up first). */
int cbb_close(cbb *child);
/* Hands the buffer to the caller (malloc'ed; free with ratls_free) and resets b. NULL if it failed or has a child
 * still open. */
uint8_t *cbb_finish(cbb *b, size_t *len);

#endif
