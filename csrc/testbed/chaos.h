/* The chaos TCP proxy (issue 5): listens on a local address and relays every
 * accepted connection to an upstream through a fault profile (testbed/faults.h),
 * so any client (curl, rclone, the Node client) goes through the same seeded
 * schedule as our own dialer. A refused connection is accepted and reset at
 * once. One accept thread plus one thread per open connection (at most the
 * profile's max_connections); stop joins them all. */
#ifndef RW_CHAOS_H
#define RW_CHAOS_H

#include "core/error.h"
#include "testbed/faults.h"

typedef struct rw_chaos_config {
  const char *listen;   /* "host:port"; NULL: "127.0.0.1:0" (any free port) */
  const char *upstream; /* "host:port" or "http://host:port[/path]" (also https://) */
  rw_faults *profile;   /* referenced while the proxy runs; NULL: no faults */
} rw_chaos_config;

typedef struct rw_chaos rw_chaos;

rw_chaos *rw_chaos_start(const rw_chaos_config *c, rw_error **err);
/* Stops accepting, ends every relay, joins every thread. NULL is fine. */
void rw_chaos_stop(rw_chaos *p);
const char *rw_chaos_addr(const rw_chaos *p); /* "127.0.0.1:40123" */
const char *rw_chaos_url(const rw_chaos *p);  /* "http://127.0.0.1:40123" (upstream's scheme) */
int rw_chaos_port(const rw_chaos *p);
rw_faults *rw_chaos_profile(const rw_chaos *p); /* borrowed */

#endif
