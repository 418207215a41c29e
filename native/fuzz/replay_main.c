/* A libFuzzer target's inputs run once each, without libFuzzer: the gcc build of every fuzz target links this
 * driver, so the corpora and the saved regression inputs also run under valgrind and in builds without clang.
 * Usage: replay_<target> FILE...; exits non-zero only when a file cannot be read (a failed invariant aborts). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t len);

int main(int argc, char **argv) {
    LLVMFuzzerInitialize(&argc, &argv);
    int ran = 0;
    for (int i = 1; i < argc; i++) {
        FILE *f = fopen(argv[i], "rb");
        uint8_t *buf = NULL;
        size_t len = 0, cap = 0, n;
        while (f) {
            if (len == cap) {
                uint8_t *grown = realloc(buf, cap = cap ? 2 * cap : 65536);
                if (!grown) break;
                buf = grown;
            }
            if ((n = fread(buf + len, 1, cap - len, f)) == 0) break;
            len += n;
        }
        if (!f || ferror(f)) {
            fprintf(stderr, "cannot read %s\n", argv[i]);
            return 2;
        }
        fclose(f);
        LLVMFuzzerTestOneInput(buf, len);
        free(buf);
        ran++;
    }
    printf("ran %d inputs\n", ran);
    return 0;
}
