/* The proxy client sink: an upload through reliablewriter proxies over our
 * own protocol (docs/PROTOCOL.md, RWP/1), spread over several connections.
 *
 * begin = CREATE, put = WRITE_AT frames (then COMPLETE when final), query =
 * STATUS, abort = ABORT; session() is the GCS session URI, so rw.resume works
 * through a proxy too. One random client_id (CSPRNG) per sink; every request
 * its own seq; a request resent after a lost connection keeps its seq and
 * carries the RETRY flag. Connections are opened lazily, each with its own
 * handshake, and a put holds one connection for its frames: max_inflight =
 * connections puts run at once. A connection silent for 3 PINGs is dropped
 * and its request resent on another; a proxy that cannot be reached moves
 * the sink to the next address (the proxies keep no state of their own: the
 * GCS session is the upload's state, and STATUS says where it stands).
 * Idle connections are watched by one heartbeat thread for the process
 * (started lazily, joined with the last sink): PINGs answered, PINGs of
 * their own after ping_interval, closed after 3 unanswered.
 *
 * Thread-safe (puts and a query at once, as the writer makes them). The
 * secret is copied, never logged and wiped on destroy. */
#ifndef RW_SINK_PROXY_H
#define RW_SINK_PROXY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "sinks/sink.h"

#define RW_PROXY_SINK_MAX_ADDRS 16
#define RW_PROXY_SINK_MAX_CONNECTIONS 64

typedef struct rw_proxy_sink_config {
  const char *addrs[RW_PROXY_SINK_MAX_ADDRS]; /* "host:port", tried in order */
  size_t naddrs;
  int connections;            /* 1..64, default 4 */
  const void *secret;         /* >= 32 bytes */
  size_t secret_len;
  const char *key_id;         /* may be NULL */
  const char *bucket, *object;
  const char *metadata;       /* JSON object, may be NULL */
  bool has_if_generation_match, has_if_metageneration_match;
  uint64_t if_generation_match, if_metageneration_match;
  const char *session;        /* resume: a session URI from an earlier upload */
  double connect_timeout;     /* seconds for connect + handshake, default 5 */
  double request_timeout;     /* seconds for one reply, default 120 */
  double ping_interval;       /* seconds of silence before a PING; 0 = the proxy's */
  uint32_t max_frame;         /* largest frame body asked for, default 1 MiB */
  uint64_t window;            /* bytes sent past the persisted offset at most: the proxy's
                               * per-session cache (its default, 64 MiB); >= 1 MiB */
} rw_proxy_sink_config;

rw_proxy_sink_config rw_proxy_sink_defaults(void);
/* rw.invalid_argument naming the option and the rule. */
rw_error *rw_proxy_sink_config_check(const rw_proxy_sink_config *c);
rw_sink *rw_proxy_sink_new(const rw_proxy_sink_config *cfg, rw_error **err);

typedef struct rw_proxy_sink_counts {
  uint64_t requests, resent, connects, failovers, pings, dropped;
} rw_proxy_sink_counts;
void rw_proxy_sink_stats(rw_sink *s, rw_proxy_sink_counts *out); /* s must be a proxy sink */

#endif
