/* The chaos proxy: an accept thread and the relays of testbed/faults.c. */
#include "testbed/chaos.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

typedef struct chaos_conn {
  rw_faults_conn *relay;
  struct chaos_conn *next;
} chaos_conn;

struct rw_chaos {
  rw_faults *profile;
  int lfd, wake;
  atomic_bool stop;
  pthread_t th;
  struct sockaddr_storage up;
  socklen_t uplen;
  chaos_conn *conns; /* accept thread only */
  int port;
  char addr[80], url[100];
};

/* Splits "host:port", "[v6]:port" or "scheme://host:port/path". */
static rw_error *split_hostport(const char *what, const char *s, char *host, size_t hlen, char *port,
                                size_t plen, char *scheme, size_t slen) {
  const char *p = strstr(s, "://");
  snprintf(scheme, slen, "http");
  if (p) {
    snprintf(scheme, slen, "%.*s", (int)(p - s), s);
    s = p + 3;
  }
  size_t n = strcspn(s, "/?#");
  char buf[300];
  if (n == 0 || n >= sizeof buf) return rw_err(RW_E_INVALID, "chaos proxy: bad %s address '%s'", what, s);
  memcpy(buf, s, n);
  buf[n] = 0;
  char *colon, *h = buf;
  if (buf[0] == '[') {
    char *end = strchr(buf, ']');
    if (!end) return rw_err(RW_E_INVALID, "chaos proxy: bad %s address '%s'", what, buf);
    *end = 0;
    h = buf + 1;
    colon = end[1] == ':' ? end + 1 : NULL;
  } else {
    colon = strrchr(buf, ':');
  }
  const char *defport = strcmp(scheme, "https") == 0 ? "443" : "80";
  if (colon) *colon = 0;
  snprintf(host, hlen, "%s", h);
  snprintf(port, plen, "%s", colon && colon[1] ? colon + 1 : defport);
  if (!*host) return rw_err(RW_E_INVALID, "chaos proxy: %s address '%s' has no host", what, s);
  return NULL;
}

static rw_error *resolve(const char *what, const char *s, struct sockaddr_storage *out, socklen_t *len,
                         char *scheme, size_t slen) {
  char host[300], port[300];
  rw_error *e = split_hostport(what, s, host, sizeof host, port, sizeof port, scheme, slen);
  if (e) return e;
  struct addrinfo hints = {.ai_socktype = SOCK_STREAM, .ai_family = AF_UNSPEC}, *res = NULL;
  int rc = getaddrinfo(host, port, &hints, &res);
  if (rc || !res)
    return rw_err(RW_E_NET_DNS, "chaos proxy: cannot resolve %s '%s:%s': %s", what, host, port, gai_strerror(rc));
  memcpy(out, res->ai_addr, res->ai_addrlen);
  *len = res->ai_addrlen;
  freeaddrinfo(res);
  return NULL;
}

/* Under a bandwidth cap the relay is the slow link: small receive buffers on
 * both its sides keep the backlog unacknowledged in the sender's queue, as on
 * a real bottleneck (see dial_open in faults.c). 0: leave the default. */
static int slow_link_rcvbuf(const rw_chaos *p) {
  return rw_faults_config_of(p->profile)->bandwidth > 0 ? 64 * 1024 : 0;
}

static int dial_upstream(rw_chaos *p) {
  int fd = socket(p->up.ss_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0) return -1;
  int rcvbuf = slow_link_rcvbuf(p);
  if (rcvbuf) setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf);
  if (connect(fd, (struct sockaddr *)&p->up, p->uplen) == 0) return fd;
  if (errno != EINPROGRESS) goto fail;
  struct pollfd pf[2] = {{fd, POLLOUT, 0}, {p->wake, POLLIN, 0}};
  if (poll(pf, 2, 10000) <= 0 || pf[1].revents) goto fail;
  int soerr = 0;
  socklen_t sl = sizeof soerr;
  if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) < 0 || soerr) goto fail;
  return fd;
fail:
  close(fd);
  return -1;
}

static void reap(rw_chaos *p, bool all) {
  for (chaos_conn **pp = &p->conns; *pp;) {
    chaos_conn *c = *pp;
    if (all || rw_faults_conn_done(c->relay)) {
      *pp = c->next;
      rw_faults_conn_stop(c->relay);
      free(c);
    } else {
      pp = &c->next;
    }
  }
}

static void accept_one(rw_chaos *p) {
  int fd = accept4(p->lfd, NULL, NULL, SOCK_CLOEXEC);
  if (fd < 0) return;
  uint64_t index;
  if (!rw_faults_admit(p->profile, &index)) {
    rw_faults_reset_close(fd);
    return;
  }
  int up = dial_upstream(p);
  if (up < 0) {
    rw_faults_reset_close(fd);
    return;
  }
  chaos_conn *c = calloc(1, sizeof *c);
  rw_error *e = NULL;
  if (c) c->relay = rw_faults_conn_start(p->profile, index, fd, up, &e);
  else {
    close(fd);
    close(up);
  }
  if (!c || !c->relay) {
    if (e) rw_error_log(RW_LOG_WARN, e, "chaos proxy: no relay");
    rw_error_unref(e);
    free(c);
    return;
  }
  c->next = p->conns;
  p->conns = c;
}

static void *accept_main(void *arg) {
  rw_chaos *p = arg;
  while (!atomic_load(&p->stop)) {
    reap(p, false);
    struct pollfd pf[2] = {{p->lfd, POLLIN, 0}, {p->wake, POLLIN, 0}};
    int rc = poll(pf, 2, 100);
    if (rc < 0 && errno != EINTR) break;
    if (pf[1].revents) break;
    if (pf[0].revents & POLLIN) accept_one(p);
  }
  reap(p, true);
  return NULL;
}

rw_chaos *rw_chaos_start(const rw_chaos_config *c, rw_error **err) {
  *err = NULL;
  if (!c || !c->upstream || !*c->upstream) {
    *err = rw_err(RW_E_INVALID, "chaos proxy: an upstream (host:port or URL) is required");
    return NULL;
  }
  rw_chaos *p = calloc(1, sizeof *p);
  if (!p) {
    *err = rw_err(RW_E_NOMEM, "chaos proxy: out of memory");
    return NULL;
  }
  p->lfd = p->wake = -1;
  char scheme[16], lscheme[16];
  struct sockaddr_storage la;
  socklen_t llen;
  if ((*err = resolve("upstream", c->upstream, &p->up, &p->uplen, scheme, sizeof scheme))) goto fail;
  if ((*err = resolve("listen", c->listen ? c->listen : "127.0.0.1:0", &la, &llen, lscheme, sizeof lscheme)))
    goto fail;
  if (c->profile) {
    p->profile = rw_faults_ref(c->profile);
  } else {
    rw_faults_config none = {0};
    if (!(p->profile = rw_faults_new(&none, err))) goto fail;
  }
  p->lfd = socket(la.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  int one = 1;
  if (p->lfd >= 0) setsockopt(p->lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  int rcvbuf = slow_link_rcvbuf(p); /* set before listen: accepted sockets inherit it */
  if (p->lfd >= 0 && rcvbuf) setsockopt(p->lfd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf);
  if (p->lfd < 0 || bind(p->lfd, (struct sockaddr *)&la, llen) < 0 || listen(p->lfd, 128) < 0) {
    *err = rw_err(RW_E_NET_OTHER, "chaos proxy: cannot listen on %s: %s", c->listen ? c->listen : "127.0.0.1:0",
                  strerror(errno));
    goto fail;
  }
  fcntl(p->lfd, F_SETFL, fcntl(p->lfd, F_GETFL) | O_NONBLOCK);
  llen = sizeof la;
  getsockname(p->lfd, (struct sockaddr *)&la, &llen);
  char host[INET6_ADDRSTRLEN] = "?";
  if (la.ss_family == AF_INET6) {
    struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)&la;
    inet_ntop(AF_INET6, &a6->sin6_addr, host, sizeof host);
    p->port = ntohs(a6->sin6_port);
    snprintf(p->addr, sizeof p->addr, "[%s]:%d", host, p->port);
  } else {
    struct sockaddr_in *a4 = (struct sockaddr_in *)&la;
    inet_ntop(AF_INET, &a4->sin_addr, host, sizeof host);
    p->port = ntohs(a4->sin_port);
    snprintf(p->addr, sizeof p->addr, "%s:%d", host, p->port);
  }
  snprintf(p->url, sizeof p->url, "%s://%s", scheme, p->addr);
  p->wake = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (p->wake < 0) {
    *err = rw_err(RW_E_NET_OTHER, "chaos proxy: eventfd: %s", strerror(errno));
    goto fail;
  }
  atomic_init(&p->stop, false);
  int rc = pthread_create(&p->th, NULL, accept_main, p);
  if (rc) {
    *err = rw_err(RW_E_NET_OTHER, "chaos proxy: cannot start a thread: %s", strerror(rc));
    goto fail;
  }
  return p;
fail:
  if (p->wake >= 0) close(p->wake);
  if (p->lfd >= 0) close(p->lfd);
  rw_faults_unref(p->profile);
  free(p);
  return NULL;
}

void rw_chaos_stop(rw_chaos *p) {
  if (!p) return;
  atomic_store(&p->stop, true);
  uint64_t one = 1;
  if (write(p->wake, &one, sizeof one) < 0) { /* cannot be full */ }
  pthread_join(p->th, NULL);
  close(p->wake);
  close(p->lfd);
  rw_faults_unref(p->profile);
  free(p);
}

const char *rw_chaos_addr(const rw_chaos *p) { return p->addr; }
const char *rw_chaos_url(const rw_chaos *p) { return p->url; }
int rw_chaos_port(const rw_chaos *p) { return p->port; }
rw_faults *rw_chaos_profile(const rw_chaos *p) { return p->profile; }
