/* The CBOR subset RA-TLS evidence needs (RFC 8949): definite-length heads, byte and text strings, arrays,
 * maps, tags and unsigned integers. Indefinite lengths, floats and simple values are rejected. */
#ifndef RATLS_CBOR_H
#define RATLS_CBOR_H

#include "bytes.h"

enum {
    CBOR_UINT = 0,
    CBOR_NEGINT = 1,
    CBOR_BYTES = 2,
    CBOR_TEXT = 3,
    CBOR_ARRAY = 4,
    CBOR_MAP = 5,
    CBOR_TAG = 6,
};

/* Reads one head (major type + argument). 0 on truncation, indefinite length, or a non-minimal or
 * reserved encoding of the argument. */
int cbor_get_head(cbs *s, uint8_t *major, uint64_t *arg);
/* Reads a byte string (major 2) or text string (major 3) and its contents. */
int cbor_get_string(cbs *s, uint8_t major, cbs *out);
/* Skips one well-formed data item of the subset above, whatever its type, nesting at most `max_depth` arrays, maps
 * and tags deep (a bare head or string is depth 0). 0, with *s unchanged, on truncation, a float or simple value,
 * or deeper nesting: the depth bound keeps recursion on hostile input finite. */
#define CBOR_MAX_DEPTH 16
int cbor_skip(cbs *s, unsigned max_depth);
int cbor_add_head(cbb *b, uint8_t major, uint64_t arg);
int cbor_add_string(cbb *b, uint8_t major, const void *data, size_t len);

#endif
