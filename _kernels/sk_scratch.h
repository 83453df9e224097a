/*
 * sk_scratch.h -- a per-thread cache of the kernels' large scratch buffers (packed panels,
 * accumulators, channel planes).
 *
 * Why: a kernel that mallocs and frees a few MiB per call makes glibc trim the top of its heap
 * (the trim threshold follows the largest freed block) and map the pages again on the next call:
 * a page fault per 4 KiB, e.g. ~2000 faults and ~2.4 ms per call for the two 4 MiB panels of a
 * 4096 x 4096 SDDMM at batch 256 -- more than the product itself at 99% sparsity.
 * Each thread that calls a kernel keeps up to SK_SCRATCH_SLOTS buffers between calls and hands
 * them out again when they are large enough; they are freed when the thread exits (or by
 * sk_scratch_release on that thread). Buffers under SK_SCRATCH_MIN bytes or over
 * SK_SCRATCH_MAX are not kept. Memory held: at most the slots' sizes per calling thread, the
 * largest scratch of the calls that thread made.
 */
#ifndef SK_SCRATCH_H
#define SK_SCRATCH_H

#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>

#define SK_SCRATCH_SLOTS 4
#define SK_SCRATCH_MIN ((size_t)128 * 1024)
#define SK_SCRATCH_MAX ((size_t)512 * 1024 * 1024)

typedef struct {
    void *p;
    size_t size;
    int used;
} sk_scratch_slot;

static __thread sk_scratch_slot sk_scratch_slots[SK_SCRATCH_SLOTS];
static __thread int sk_scratch_registered = 0;
static pthread_key_t sk_scratch_key;
static pthread_once_t sk_scratch_once = PTHREAD_ONCE_INIT;

static void *sk_scratch_aligned(size_t nbytes) {
    void *p = NULL;
    if (nbytes == 0) nbytes = 64;
    if (posix_memalign(&p, 64, nbytes) != 0) return NULL;
    return p;
}

/* Free the calling thread's cached buffers that are not in use. */
static void sk_scratch_release(void) {
    for (int i = 0; i < SK_SCRATCH_SLOTS; i++) {
        sk_scratch_slot *s = &sk_scratch_slots[i];
        if (!s->used) {
            free(s->p);
            s->p = NULL;
            s->size = 0;
        }
    }
}

static void sk_scratch_on_exit(void *arg) {
    (void)arg;
    sk_scratch_release();
}

static void sk_scratch_make_key(void) { pthread_key_create(&sk_scratch_key, sk_scratch_on_exit); }

/* A 64-byte aligned buffer of nbytes (contents undefined), or NULL. Return it with
 * sk_scratch_free; any pointer from malloc may be given to sk_scratch_free too. */
static void *sk_scratch_alloc(size_t nbytes) {
    if (nbytes < SK_SCRATCH_MIN || nbytes > SK_SCRATCH_MAX) return sk_scratch_aligned(nbytes);
    if (!sk_scratch_registered) {
        pthread_once(&sk_scratch_once, sk_scratch_make_key);
        pthread_setspecific(sk_scratch_key, (void *)1);  /* non-NULL: the destructor runs */
        sk_scratch_registered = 1;
    }
    int fit = -1, spare = -1;
    for (int i = 0; i < SK_SCRATCH_SLOTS; i++) {
        sk_scratch_slot *s = &sk_scratch_slots[i];
        if (s->used) continue;
        if (s->p != NULL && s->size >= nbytes) {
            if (fit < 0 || s->size < sk_scratch_slots[fit].size) fit = i;
        } else if (spare < 0 || s->size < sk_scratch_slots[spare].size) {
            spare = i;  /* empty or too small: the cheapest one to replace */
        }
    }
    if (fit < 0 && spare < 0) return sk_scratch_aligned(nbytes);  /* every slot in use */
    if (fit < 0) {
        sk_scratch_slot *s = &sk_scratch_slots[spare];
        free(s->p);
        s->p = sk_scratch_aligned(nbytes);
        s->size = s->p != NULL ? nbytes : 0;
        if (s->p == NULL) return NULL;
        fit = spare;
    }
    sk_scratch_slots[fit].used = 1;
    return sk_scratch_slots[fit].p;
}

static void sk_scratch_free(void *p) {
    if (p == NULL) return;
    for (int i = 0; i < SK_SCRATCH_SLOTS; i++) {
        if (sk_scratch_slots[i].p == p && sk_scratch_slots[i].used) {
            sk_scratch_slots[i].used = 0;
            return;
        }
    }
    free(p);
}

#endif
