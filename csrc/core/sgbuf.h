/* Scatter-gather buffer: the writer's cache.
 *
 * Holds byte ranges at absolute offsets as a sorted list of segments that
 * point at memory owned elsewhere (a Lua string kept alive by a reference, a
 * mapped file, a malloc'd copy). Nothing is copied: views hand out iovecs.
 * Segments may arrive out of order; overlapping bytes must be identical.
 * Releasing acknowledged bytes calls each segment's release function once the
 * segment is wholly below the release point.
 *
 * Not thread safe: the owner guards it with its own mutex. Segment bytes are
 * immutable while held, so a view's iovecs may be read without that mutex as
 * long as the owner does not release that range meanwhile. */
#ifndef RW_SGBUF_H
#define RW_SGBUF_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

#include "error.h"

typedef struct rw_sgbuf rw_sgbuf;

/* Called once when the segment is dropped (released or buffer freed).
 * `ud` is what was given to insert. May be NULL. */
typedef void (*rw_seg_release_fn)(void *ud);

/* base: the first offset the buffer will ever hold (bytes below are already
 * persisted). */
rw_sgbuf *rw_sgbuf_new(uint64_t base);
void rw_sgbuf_free(rw_sgbuf *b); /* releases every segment */

/* Inserts [off, off+len) pointing at data. Bytes below the base are skipped.
 * Overlap with held bytes: identical bytes are fine (only the new part is
 * kept), different bytes give rw.overlap naming the first differing offset
 * and nothing is inserted. On error, release is NOT called (caller keeps
 * ownership). On success, release(ud) is called exactly once, later (or at
 * once when nothing of the segment was kept). */
rw_error *rw_sgbuf_insert(rw_sgbuf *b, uint64_t off, const void *data, size_t len,
                          rw_seg_release_fn release, void *ud);

uint64_t rw_sgbuf_base(const rw_sgbuf *b);
/* End of the contiguous run starting at base (== base when nothing). */
uint64_t rw_sgbuf_contiguous_end(const rw_sgbuf *b);
/* Highest offset held + 1 (== base when empty). */
uint64_t rw_sgbuf_end(const rw_sgbuf *b);
/* Bytes held (counting only bytes, not gaps). */
uint64_t rw_sgbuf_bytes(const rw_sgbuf *b);
size_t rw_sgbuf_segments(const rw_sgbuf *b);

/* Fills iov with the range [off, off+len), which must be held contiguously.
 * Returns the number of iovecs used, or -1 when iovmax is too small or the
 * range is not wholly held. rw_sgbuf_view_count tells how many are needed. */
int rw_sgbuf_view(const rw_sgbuf *b, uint64_t off, size_t len, struct iovec *iov, int iovmax);
int rw_sgbuf_view_count(const rw_sgbuf *b, uint64_t off, size_t len);

/* Drops every byte below `upto` (moves the base up); segments wholly below
 * are released. upto beyond the contiguous end is clamped to it. */
void rw_sgbuf_release_upto(rw_sgbuf *b, uint64_t upto);

/* First missing range in [base, end): true and the range when there is one. */
bool rw_sgbuf_first_gap(const rw_sgbuf *b, uint64_t end, uint64_t *gap_off, uint64_t *gap_len);

/* Copies [off, off+len) into dst (tests and small tails only). */
bool rw_sgbuf_copy(const rw_sgbuf *b, uint64_t off, void *dst, size_t len);

#endif
