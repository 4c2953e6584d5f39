/* A fault wrapper: injects sink-level errors with real codes, seeded.
 *
 * Each put and query draws once: with probability p_error it fails with a
 * code picked from `codes` ("net.reset", "http.503", "net.stall", ...). A put
 * fault is one of three kinds, drawn again:
 *   before  (1 - p_partial - p_after): nothing reaches the inner sink;
 *   partial (p_partial): a non-final prefix (a multiple of partial_align,
 *           when the put is long enough) goes to the inner sink, then the error;
 *   after   (p_after): the whole put goes through, then the reply is "lost".
 * begin and abort pass through. Deterministic for a given seed and call order.
 * Thread-safe when the inner sink is: with max_inflight > 1 puts run at once. */
#ifndef RW_FAULTY_SINK_H
#define RW_FAULTY_SINK_H

#include <stddef.h>
#include <stdint.h>

#include "sinks/sink.h"

/* Counters, shared between a descriptor and the sinks made from it
 * (reference counted, thread safe). */
typedef struct rw_faulty_counters rw_faulty_counters;
typedef struct rw_faulty_stats {
  uint64_t puts, queries, injected, partial, after;
} rw_faulty_stats;
rw_faulty_counters *rw_faulty_counters_new(void);
rw_faulty_counters *rw_faulty_counters_ref(rw_faulty_counters *c);
void rw_faulty_counters_unref(rw_faulty_counters *c); /* NULL is fine */
void rw_faulty_counters_read(const rw_faulty_counters *c, rw_faulty_stats *out);

typedef struct rw_faulty_config {
  uint64_t seed;
  double p_error;                 /* per put/query, [0, 1] */
  const char *const *codes;       /* codes to inject; NULL/0: {"net.reset"} */
  size_t ncodes;
  double p_partial, p_after;      /* shares of put faults, see above */
  uint64_t partial_align;         /* 0: 256 KiB */
  rw_faulty_counters *counters;   /* optional; the sink takes its own reference */
  int max_inflight;               /* declared to the writer; 0: the inner sink's */
} rw_faulty_config;

/* Takes ownership of inner, also on failure. */
rw_sink *rw_faulty_sink_new(rw_sink *inner, const rw_faulty_config *cfg, rw_error **err);
/* This sink's own counts (s must be a faulty sink). */
void rw_faulty_sink_stats(rw_sink *s, rw_faulty_stats *out);

#endif
