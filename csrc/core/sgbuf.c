/* Scatter-gather buffer: a sorted array of non-overlapping segments.
 *
 * One insert may become several segments (the parts not already held); they
 * share one owner record whose release runs when the last of them is dropped.
 * Lookups are binary searches; the common insert (append at the end) is O(1)
 * amortized. */
#include "sgbuf.h"

#include <stdlib.h>
#include <string.h>

typedef struct sg_owner {
  rw_seg_release_fn release;
  void *ud;
  size_t pieces;
} sg_owner;

typedef struct sg_seg {
  uint64_t off;
  size_t len;
  const unsigned char *data;
  sg_owner *owner;
} sg_seg;

struct rw_sgbuf {
  sg_seg *segs;
  size_t n, cap;
  uint64_t base;
  uint64_t contig_end;
  uint64_t bytes;
};

static uint64_t seg_end(const sg_seg *s) { return s->off + s->len; }

static void owner_drop(sg_owner *o) {
  if (--o->pieces > 0) return;
  if (o->release) o->release(o->ud);
  free(o);
}

rw_sgbuf *rw_sgbuf_new(uint64_t base) {
  rw_sgbuf *b = calloc(1, sizeof *b);
  if (!b) return NULL;
  b->base = base;
  b->contig_end = base;
  return b;
}

void rw_sgbuf_free(rw_sgbuf *b) {
  if (!b) return;
  for (size_t i = 0; i < b->n; i++) owner_drop(b->segs[i].owner);
  free(b->segs);
  free(b);
}

/* Index of the first segment whose end is above off (n when none). */
static size_t first_ending_after(const rw_sgbuf *b, uint64_t off) {
  size_t lo = 0, hi = b->n;
  while (lo < hi) {
    size_t mid = lo + (hi - lo) / 2;
    if (seg_end(&b->segs[mid]) <= off) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

/* First differing offset between data at [off, end) and the held bytes, or
 * UINT64_MAX when every held byte in that range is identical. */
static uint64_t first_difference(const rw_sgbuf *b, size_t i, uint64_t off, uint64_t end,
                                 const unsigned char *data) {
  for (; i < b->n && b->segs[i].off < end; i++) {
    const sg_seg *s = &b->segs[i];
    uint64_t lo = s->off > off ? s->off : off;
    uint64_t hi = seg_end(s) < end ? seg_end(s) : end;
    const unsigned char *mine = data + (lo - off), *held = s->data + (lo - s->off);
    if (memcmp(mine, held, (size_t)(hi - lo)) == 0) continue;
    for (uint64_t k = 0; k < hi - lo; k++)
      if (mine[k] != held[k]) return lo + k;
  }
  return UINT64_MAX;
}

/* Counts the uncovered pieces of [off, end) starting at segment index i. */
static size_t count_pieces(const rw_sgbuf *b, size_t i, uint64_t off, uint64_t end) {
  size_t pieces = 0;
  uint64_t at = off;
  for (; i < b->n && b->segs[i].off < end; i++) {
    if (b->segs[i].off > at) pieces++;
    at = seg_end(&b->segs[i]);
  }
  if (at < end) pieces++;
  return pieces;
}

static bool reserve(rw_sgbuf *b, size_t extra) {
  if (b->n + extra <= b->cap) return true;
  size_t cap = b->cap ? b->cap * 2 : 16;
  while (cap < b->n + extra) cap *= 2;
  sg_seg *s = realloc(b->segs, cap * sizeof *s);
  if (!s) return false;
  b->segs = s;
  b->cap = cap;
  return true;
}

static void insert_at(rw_sgbuf *b, size_t i, sg_seg seg) {
  memmove(&b->segs[i + 1], &b->segs[i], (b->n - i) * sizeof *b->segs);
  b->segs[i] = seg;
  b->n++;
  b->bytes += seg.len;
}

/* Adds the uncovered pieces of [off, end) starting at index i. */
static void add_pieces(rw_sgbuf *b, size_t i, uint64_t off, uint64_t end,
                       const unsigned char *data, sg_owner *o) {
  uint64_t at = off;
  while (at < end) {
    if (i < b->n && b->segs[i].off <= at) {
      at = seg_end(&b->segs[i]) > at ? seg_end(&b->segs[i]) : at;
      i++;
      continue;
    }
    uint64_t stop = (i < b->n && b->segs[i].off < end) ? b->segs[i].off : end;
    sg_seg seg = {at, (size_t)(stop - at), data + (at - off), o};
    insert_at(b, i, seg);
    i++;
    at = stop;
  }
}

static void advance_contig(rw_sgbuf *b) {
  size_t i = first_ending_after(b, b->contig_end);
  while (i < b->n && b->segs[i].off <= b->contig_end) {
    b->contig_end = seg_end(&b->segs[i]);
    i++;
  }
}

rw_error *rw_sgbuf_insert(rw_sgbuf *b, uint64_t off, const void *data, size_t len,
                          rw_seg_release_fn release, void *ud) {
  if (len > 0 && off > UINT64_MAX - len)
    return rw_err(RW_E_INVALID, "range at offset %llu of %zu bytes overflows",
                  (unsigned long long)off, len);
  const unsigned char *p = data;
  uint64_t end = off + len;
  if (off < b->base) {
    uint64_t skip = (end > b->base ? b->base : end) - off;
    p += skip;
    off += skip;
  }
  size_t i = first_ending_after(b, off);
  uint64_t diff = first_difference(b, i, off, end, p);
  if (diff != UINT64_MAX)
    return rw_err(RW_E_OVERLAP, "bytes at offset %llu differ from those already written there",
                  (unsigned long long)diff);
  size_t pieces = off < end ? count_pieces(b, i, off, end) : 0;
  if (pieces == 0) {
    if (release) release(ud);
    return NULL;
  }
  sg_owner *o = malloc(sizeof *o);
  if (!o || !reserve(b, pieces)) {
    free(o);
    return rw_err(RW_E_NOMEM, "no memory for %zu more segments", pieces);
  }
  *o = (sg_owner){release, ud, pieces};
  add_pieces(b, i, off, end, p, o);
  if (off <= b->contig_end) advance_contig(b);
  return NULL;
}

uint64_t rw_sgbuf_base(const rw_sgbuf *b) { return b->base; }
uint64_t rw_sgbuf_contiguous_end(const rw_sgbuf *b) { return b->contig_end; }
uint64_t rw_sgbuf_end(const rw_sgbuf *b) { return b->n ? seg_end(&b->segs[b->n - 1]) : b->base; }
uint64_t rw_sgbuf_bytes(const rw_sgbuf *b) { return b->bytes; }
size_t rw_sgbuf_segments(const rw_sgbuf *b) { return b->n; }

/* Walks [off, off+len) over the segments; fills iov when non-NULL.
 * Returns the count, or -1 when not wholly held or iovmax is exceeded. */
static int walk_view(const rw_sgbuf *b, uint64_t off, size_t len, struct iovec *iov, int iovmax) {
  if (len == 0) return 0;
  if (off < b->base || off > UINT64_MAX - len) return -1;
  uint64_t end = off + len, at = off;
  int count = 0;
  for (size_t i = first_ending_after(b, off); at < end; i++) {
    if (i >= b->n || b->segs[i].off > at) return -1;
    const sg_seg *s = &b->segs[i];
    uint64_t hi = seg_end(s) < end ? seg_end(s) : end;
    if (iov) {
      if (count >= iovmax) return -1;
      iov[count].iov_base = (void *)(s->data + (at - s->off));
      iov[count].iov_len = (size_t)(hi - at);
    }
    count++;
    at = hi;
  }
  return count;
}

int rw_sgbuf_view(const rw_sgbuf *b, uint64_t off, size_t len, struct iovec *iov, int iovmax) {
  return walk_view(b, off, len, iov, iovmax);
}

int rw_sgbuf_view_count(const rw_sgbuf *b, uint64_t off, size_t len) {
  return walk_view(b, off, len, NULL, 0);
}

void rw_sgbuf_release_upto(rw_sgbuf *b, uint64_t upto) {
  if (upto > b->contig_end) upto = b->contig_end;
  if (upto <= b->base) return;
  size_t drop = 0;
  while (drop < b->n && seg_end(&b->segs[drop]) <= upto) {
    b->bytes -= b->segs[drop].len;
    owner_drop(b->segs[drop].owner);
    drop++;
  }
  memmove(b->segs, b->segs + drop, (b->n - drop) * sizeof *b->segs);
  b->n -= drop;
  if (b->n && b->segs[0].off < upto) {
    sg_seg *s = &b->segs[0];
    size_t cut = (size_t)(upto - s->off);
    s->off += cut;
    s->data += cut;
    s->len -= cut;
    b->bytes -= cut;
  }
  b->base = upto;
}

bool rw_sgbuf_first_gap(const rw_sgbuf *b, uint64_t end, uint64_t *gap_off, uint64_t *gap_len) {
  uint64_t at = b->contig_end;
  if (at >= end) return false;
  size_t i = first_ending_after(b, at);
  uint64_t stop = (i < b->n && b->segs[i].off < end) ? b->segs[i].off : end;
  *gap_off = at;
  *gap_len = stop - at;
  return true;
}

bool rw_sgbuf_copy(const rw_sgbuf *b, uint64_t off, void *dst, size_t len) {
  if (len == 0) return true;
  if (off < b->base || off > UINT64_MAX - len) return false;
  unsigned char *out = dst;
  uint64_t end = off + len, at = off;
  for (size_t i = first_ending_after(b, off); at < end; i++) {
    if (i >= b->n || b->segs[i].off > at) return false;
    const sg_seg *s = &b->segs[i];
    uint64_t hi = seg_end(s) < end ? seg_end(s) : end;
    memcpy(out + (at - off), s->data + (at - s->off), (size_t)(hi - at));
    at = hi;
  }
  return true;
}
