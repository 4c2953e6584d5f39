/* Connection-level fault injection (issue 5).
 *
 * A profile (rw_faults) says what goes wrong and how often; it is reference
 * counted and thread safe. Every connection made through it gets an index
 * (0, 1, 2, ... in the order connections are opened) and its own schedule,
 * drawn from a splitmix64 stream seeded by (seed, index): the same seed gives
 * the same schedule whatever the thread timing.
 *
 * Per connection:
 *   refuse             probability that the connection is refused
 *   reset_per_mib      resets (RST both ways) per MiB relayed, both directions
 *   close_per_mib      clean closes (FIN both ways) per MiB relayed
 *   stall_per_mib      stalls per MiB relayed; each holds every byte for
 *                      stall_for seconds (< 0: until the connection is closed)
 *   truncate_per_mib   truncations per MiB of response (server to client):
 *                      the response is cut there and the connection closed
 *   latency            seconds each byte is delayed, per direction: the relay
 *                      is a delay line, a byte read at t is written from
 *                      t + latency on (to the millisecond), many in flight
 *   bandwidth          bytes/s cap per connection and direction (0: none): a
 *                      token bucket (20 ms of it) meters the relay's reads, so
 *                      a backlog waits unread in the sender's socket
 *   window             bytes in flight per direction (0: 4 MiB), like a TCP
 *                      window: read bytes count until a latency after they
 *                      were written out (the acknowledgement's way back), and
 *                      the relay reads no more while the window is full. One
 *                      connection moves about
 *                      min(bandwidth, window / (2 x latency)).
 * The distance to the next fault of each kind is exponential with the given
 * rate, so "0.25 per MiB" is one fault every 4 MiB on average.
 *
 * Two ways to use a profile:
 *   - the dialer for libcurl (rw_faults_dialer): CURLOPT_OPENSOCKETFUNCTION
 *     connects a TCP socket to the address libcurl asked for, then points
 *     libcurl at a one-shot loopback listener whose only connection is relayed
 *     to it, one thread per connection; CURLOPT_CLOSESOCKETFUNCTION stops and
 *     joins that thread before it returns. (A socket pair with
 *     CURL_SOCKOPT_ALREADY_CONNECTED does not work: libcurl 7.88 still calls
 *     connect() on it, EINVAL.) A refused connection returns CURL_SOCKET_BAD
 *     (libcurl: couldn't connect, our net.refused).
 *   - the chaos proxy (testbed/chaos.h), which relays accepted TCP connections.
 * Either way the relays are the ones below (rw_faults_conn). */
#ifndef RW_FAULTS_H
#define RW_FAULTS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/error.h"
#include "net/http.h"

typedef struct rw_faults_config {
  uint64_t seed;
  double refuse;           /* [0, 1] per connection */
  double reset_per_mib;    /* >= 0 */
  double close_per_mib;    /* >= 0 */
  double stall_per_mib;    /* >= 0 */
  double stall_for;        /* seconds; < 0: until closed (blackhole) */
  double truncate_per_mib; /* >= 0, per MiB of response */
  double latency;          /* seconds, [0, 60] */
  double bandwidth;        /* bytes/s, 0: no cap; else >= 1024 */
  uint64_t window;         /* bytes in flight per direction; 0: 4 MiB; else [1024, 1 GiB] */
  int max_connections;     /* open relays at once; <= 0: 256. More are refused. */
} rw_faults_config;

typedef struct rw_faults_stats {
  uint64_t connections; /* opened (refused included) */
  uint64_t refused;
  uint64_t resets, closes, stalls, truncates;
  uint64_t active;      /* relays running or not yet joined */
  uint64_t bytes_up, bytes_down; /* relayed client->server, server->client */
  uint64_t in_flight_max;        /* most bytes in flight in one direction of one relay */
} rw_faults_stats;

typedef enum {
  RW_FAULT_REFUSE = 0,
  RW_FAULT_RESET,
  RW_FAULT_CLOSE,
  RW_FAULT_STALL,
  RW_FAULT_TRUNCATE,
} rw_fault_kind;

/* One injected fault: connection index, kind, and the byte position (total
 * relayed both ways; response bytes for truncate) where it happened; when
 * (seconds since the profile was made) and, for a stall, how long it held
 * the bytes and whether it ran out (by_timer) or the connection was closed
 * first (held < 0 while it lasts). */
typedef struct rw_fault_event {
  uint64_t conn;
  rw_fault_kind kind;
  uint64_t pos;
  double t;
  double held;
  bool by_timer;
} rw_fault_event;

/* A connection's schedule as drawn from (seed, index): pure, for tests. */
typedef struct rw_faults_plan {
  bool refused;
  uint64_t reset_at, close_at, stall_at, truncate_at; /* UINT64_MAX: never */
} rw_faults_plan;

typedef struct rw_faults rw_faults;

/* NULL when valid, else rw.invalid_argument naming the field and the rule. */
rw_error *rw_faults_config_check(const rw_faults_config *c);
/* The profile's config has the defaults filled in (window, max_connections). */
rw_faults *rw_faults_new(const rw_faults_config *c, rw_error **err);
rw_faults *rw_faults_ref(rw_faults *f);
void rw_faults_unref(rw_faults *f); /* NULL is fine; the last one frees */
const rw_faults_config *rw_faults_config_of(const rw_faults *f);

void rw_faults_stats_read(rw_faults *f, rw_faults_stats *st);
/* Copies up to max events (the first 65536 are kept) in the order they
 * happened; returns how many there are in all. */
size_t rw_faults_events(rw_faults *f, rw_fault_event *out, size_t max);
const char *rw_fault_kind_name(rw_fault_kind k);
void rw_faults_plan_of(const rw_faults_config *c, uint64_t index, rw_faults_plan *out);

/* The libcurl hook; ud is f. The dialer holds its own reference to f, which
 * whoever takes the dialer drops with d.release(d.owner) (net/http.h). */
rw_http_dialer rw_faults_dialer(rw_faults *f);

/* ---- relays (used by the dialer and by testbed/chaos.c) ---- */

typedef struct rw_faults_conn rw_faults_conn;

/* Takes the next connection index; false (counted, logged) when that
 * connection is to be refused or too many relays are open. */
bool rw_faults_admit(rw_faults *f, uint64_t *index);
/* Closes fd so that the peer sees a reset (TCP: RST, SO_LINGER 0). */
void rw_faults_reset_close(int fd);
/* Starts a relay thread between a (the client side) and b (the server side);
 * takes both fds (closed on failure too). */
rw_faults_conn *rw_faults_conn_start(rw_faults *f, uint64_t index, int a, int b, rw_error **err);
/* True once the relay has ended by itself (either side closed, a fault). */
bool rw_faults_conn_done(rw_faults_conn *c);
/* Stops the relay at once (even mid-stall), joins its thread, closes its fds
 * and frees it. NULL is fine. */
void rw_faults_conn_stop(rw_faults_conn *c);

#endif
