/* The proxy's connections: non-blocking reads fed to the frame reader, the
 * handshake (section 4), sending frames, ERROR frames, heartbeats. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include "proxy/server_int.h"

#define OUT_MAX (4u << 20) /* queued output beyond this: the peer does not read */
#define LINGER_BYTES (1u << 20) /* read and dropped after the last frame, at most */
#define LINGER_TIME 1.0         /* seconds to wait for the peer's EOF after ours */

conn *conn_find(rw_proxy_server *s, uint64_t id) {
  for (conn *c = s->conns; c; c = c->next)
    if (c->id == id && !c->dead && !c->lingering) return c;
  return NULL;
}

/* What a connection holds to speak: at close, or once it lingers. */
static void conn_release(conn *c) {
  rwp_reader_free(c->rd), c->rd = NULL;
  rwp_writer_wipe(&c->wr);
  rwp_wipe(c->th, sizeof c->th);
  if (c->pbody) body_unref(c->pbody), c->pbody = NULL;
}

void conn_close(conn *c) {
  if (c->dead) return;
  c->dead = true;
  rw_proxy_server *s = c->srv;
  epoll_ctl(s->epfd, EPOLL_CTL_DEL, c->fd, NULL);
  close(c->fd);
  conn_release(c);
  rw_amo_forget_waiter(s->amo, c->id);
  if (c->lingering) s->nlinger--;
  else s->nconns--;
}

/* A closing connection reads nothing until it lingers: EPOLLIN stays armed
 * on it only while it reads, else unread bytes make level-triggered
 * epoll_wait return at once until the closing deadline (issue 10). */
static void want_out(conn *c, bool on) {
  bool reads = !c->closing || c->lingering;
  uint32_t events = (reads ? EPOLLIN | EPOLLRDHUP : 0) | (on ? EPOLLOUT : 0);
  if (c->events == events) return;
  c->events = events;
  struct epoll_event ev = {.events = events, .data.ptr = &c->w};
  epoll_ctl(c->srv->epfd, EPOLL_CTL_MOD, c->fd, &ev);
}

/* The last frame is in the kernel: FIN, not close(). close() with bytes of
 * the peer unread sends a RST, which drops what our kernel has not sent yet
 * and can make the peer's drop what it has not read (the ERROR that says
 * why, issue 10). What the peer still sends is read and dropped until its
 * EOF, at most LINGER_BYTES and LINGER_TIME (conn_drain, conn_tick). */
static void conn_linger(conn *c) {
  rw_proxy_server *s = c->srv;
  if (c->lingering) return;
  if (s->nlinger >= s->cfg.max_connections || shutdown(c->fd, SHUT_WR)) {
    conn_close(c);
    return;
  }
  c->lingering = true, c->linger_at = rw_proxy_now();
  s->nconns--, s->nlinger++; /* closed for conn_find, conn_send, the stats */
  conn_release(c);
  free(c->out), c->out = NULL, c->out_cap = 0; /* empty: it costs rbuf alone */
  want_out(c, false);
}

void conn_drain(conn *c) {
  for (int i = 0; i < 16 && !c->dead; i++) {
    ssize_t n = recv(c->fd, c->rbuf, sizeof c->rbuf, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
    if (n > 0 && (c->lingered += (size_t)n) <= LINGER_BYTES) continue;
    conn_close(c); /* the peer's EOF or reset, or it sends too much */
  }
}

void conn_flush(conn *c) {
  while (!c->dead && c->out_off < c->out_len) {
    ssize_t n = send(c->fd, c->out + c->out_off, c->out_len - c->out_off, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
    if (n <= 0) {
      conn_close(c);
      return;
    }
    c->out_off += (size_t)n;
  }
  if (c->out_off == c->out_len) c->out_off = c->out_len = 0;
  want_out(c, c->out_len > 0);
  if (c->closing && c->out_len == 0) conn_linger(c);
}

static bool out_reserve(conn *c, size_t n) {
  if (c->out_off && c->out_len + n > c->out_cap) {
    memmove(c->out, c->out + c->out_off, c->out_len - c->out_off);
    c->out_len -= c->out_off, c->out_off = 0;
  }
  if (c->out_len + n <= c->out_cap) return true;
  size_t cap = c->out_cap ? c->out_cap : 4096;
  while (cap < c->out_len + n) cap *= 2;
  uint8_t *p = realloc(c->out, cap);
  if (!p) return false;
  c->out = p, c->out_cap = cap;
  return true;
}

void conn_send(conn *c, const rwp_msg *m, const void *body, size_t len) {
  if (c->dead || c->lingering) return;
  static _Thread_local rwp_encoded e;
  rw_error *err = rwp_encode(&c->wr, m, body, len, &e);
  size_t n = err ? 0 : e.head_len + e.body_len + e.mac_len;
  if (err || c->out_len - c->out_off + n > OUT_MAX || !out_reserve(c, n)) {
    if (err) rw_error_log(RW_LOG_WARN, err, "proxy: a frame could not be encoded");
    rw_error_unref(err);
    conn_close(c); /* the peer does not read, or we cannot say it: drop it */
    return;
  }
  c->out_len += rwp_encoded_copy(&e, c->out + c->out_len, c->out_cap - c->out_len);
  conn_flush(c);
}

static rwp_str clip(const char *p, size_t max) {
  size_t n = p ? strlen(p) : 0;
  return (rwp_str){p, (uint16_t)(n > max ? max : n)};
}

/* Takes e. */
void conn_send_error(conn *c, uint64_t seq, rw_error *e, bool has_persisted, uint64_t persisted,
                     uint32_t retry_after_ms) {
  rw_proxy_server *s = c->srv;
  s->live.errors++;
  char what[96];
  snprintf(what, sizeof what, "proxy: connection %llu request %llu", (unsigned long long)c->id,
           (unsigned long long)seq);
  rw_error_log(RW_LOG_WARN, e, what);
  rwp_msg m = {.op = RWP_ERROR, .client_id = c->state == C_AUTHED ? c->client_id : 0, .seq = seq};
  m.u.error.flags2 = (rw_error_retryable(e) ? RWP_ERR_RETRYABLE : 0) | (has_persisted ? RWP_ERR_PERSISTED : 0);
  m.u.error.persisted = has_persisted ? persisted : 0;
  m.u.error.retry_after_ms = retry_after_ms;
  m.u.error.code = clip(rw_error_code(e), RWP_MAX_CODE);
  m.u.error.message = clip(rw_error_message(e), RWP_MAX_MESSAGE);
  m.u.error.id = clip(rw_error_id(e), RWP_MAX_ERROR_ID);
  conn_send(c, &m, NULL, 0);
  rw_error_unref(e);
}

void conn_fatal(conn *c, rw_error *e) {
  conn_send_error(c, 0, e, false, 0, 0);
  c->closing = true;
  conn_flush(c);
}

/* ---- handshake ---- */

static const psecret *find_secret(rw_proxy_server *s, rwp_str id) {
  for (size_t i = 0; i < s->nsecrets; i++)
    if (strlen(s->secrets[i].key_id) == id.len && !memcmp(s->secrets[i].key_id, id.p, id.len))
      return &s->secrets[i];
  return NULL;
}

static uint32_t clamp_frame(uint32_t a, uint32_t b) {
  uint32_t v = a < b ? a : b;
  return v < RWP_MIN_FRAME ? RWP_MIN_FRAME : v > RWP_MAX_FRAME ? RWP_MAX_FRAME : v;
}

static void on_hello(conn *c, rwp_frame *f) {
  rw_proxy_server *s = c->srv;
  const rwp_hello *h = &f->msg.u.hello;
  if (h->min_version > RWP_VERSION || h->max_version < RWP_VERSION) {
    conn_fatal(c, rw_err(RW_E_PROTO_VERSION, "the proxy speaks RWP version %d, the client %u..%u",
                         RWP_VERSION, h->min_version, h->max_version));
    return;
  }
  if (f->msg.client_id == 0) {
    conn_fatal(c, rw_err(RW_E_PROTO_BAD_FRAME, "HELLO: client_id must not be 0"));
    return;
  }
  c->client_id = f->msg.client_id;
  c->sec = find_secret(s, h->key_id);
  memcpy(c->cnonce, h->client_nonce, 32);
  c->max_frame = clamp_frame(h->max_frame, s->cfg.max_frame);
  c->max_inflight = h->max_inflight < s->cfg.max_inflight ? h->max_inflight : s->cfg.max_inflight;
  if (c->max_inflight == 0) c->max_inflight = 1;
  rwp_msg m = {.op = RWP_CHALLENGE};
  m.u.challenge = (rwp_challenge){.version = RWP_VERSION, .max_frame = c->max_frame,
                                  .max_inflight = c->max_inflight,
                                  .ping_interval_ms = s->cfg.ping_interval_ms};
  rw_error *e = rwp_random(m.u.challenge.server_nonce, 32);
  static _Thread_local rwp_encoded enc;
  if (!e) e = rwp_encode(&c->wr, &m, NULL, 0, &enc);
  if (!e) e = rwp_transcript_hash(f->raw, f->hdr_len, enc.head, enc.head_len, c->th);
  if (e) {
    conn_fatal(c, e);
    return;
  }
  memcpy(c->snonce, m.u.challenge.server_nonce, 32);
  c->state = C_AUTH;
  conn_send(c, &m, NULL, 0); /* the same bytes again: encoding is deterministic */
}

static rw_error *auth_keys(conn *c) {
  uint8_t k_c2s[32], k_s2c[32];
  rw_error *e = rwp_derive_keys(c->sec->bytes, c->sec->len, c->cnonce, c->snonce, c->client_id,
                                k_c2s, k_s2c);
  if (!e) e = rwp_reader_set_max_frame(c->rd, c->max_frame);
  if (!e) {
    rwp_reader_set_key(c->rd, k_c2s);
    rwp_writer_set_key(&c->wr, k_s2c);
    c->wr.max_frame = c->max_frame;
  }
  rwp_wipe(k_c2s, 32), rwp_wipe(k_s2c, 32);
  return e;
}

static void on_auth(conn *c, rwp_frame *f) {
  rw_proxy_server *s = c->srv;
  uint8_t want[32];
  bool ok = c->sec && f->msg.client_id == c->client_id;
  rw_error *e = ok ? rwp_client_proof(c->sec->bytes, c->sec->len, c->th, want) : NULL;
  ok = ok && !e && rwp_proof_equal(want, f->msg.u.auth.proof);
  rwp_wipe(want, 32);
  if (e || !ok) {
    s->live.auth_failed++;
    conn_fatal(c, e ? e : rw_err(RW_E_PROTO_AUTH_FAILED, "authentication failed"));
    return;
  }
  rwp_msg m = {.op = RWP_WELCOME, .client_id = c->client_id};
  m.u.welcome.table_ttl_s = s->cfg.table_ttl_s;
  if ((e = rwp_server_proof(c->sec->bytes, c->sec->len, c->th, m.u.welcome.proof)) || (e = auth_keys(c))) {
    conn_fatal(c, e);
    return;
  }
  c->state = C_AUTHED;
  s->live.authed++;
  conn_send(c, &m, NULL, 0);
}

/* ---- reading ---- */

static rw_error *body_cb(void *ud, const rwp_frame *f, uint8_t **buf) {
  conn *c = ud;
  if (f->msg.op != RWP_WRITE_AT) return NULL; /* the reader allocates */
  return body_alloc(c->srv, f, buf, &c->pbody);
}

rw_error *conn_reader_new(conn *c) { return rwp_reader_new(RWP_SIDE_SERVER, body_cb, c, &c->rd); }

static void on_frame(conn *c, rwp_frame *f) {
  c->last_rx = rw_proxy_now(), c->pings_out = 0;
  if (c->state == C_HELLO) on_hello(c, f);
  else if (c->state == C_AUTH) on_auth(c, f);
  else if (f->msg.client_id != c->client_id)
    conn_fatal(c, rw_err(RW_E_PROTO_BAD_FRAME, "client_id differs from the one of HELLO"));
  else req_handle(c, f);
}

/* Feeds what was read; false once the connection is closed or closing. */
static bool feed(conn *c, const uint8_t *p, size_t n) {
  while (n > 0 && !c->dead && !c->closing) {
    rwp_frame f;
    memset(&f, 0, sizeof f);
    size_t used = 0;
    bool got = false;
    rw_error *e = rwp_reader_feed(c->rd, p, n, &used, &f, &got);
    p += used, n -= used;
    if (e && rw_error_is(e, RW_E_PROTO_UNKNOWN_OP) && c->state == C_AUTHED) {
      conn_send_error(c, f.msg.seq, e, false, 0, 0);
      continue;
    }
    if (e) {
      if (rw_error_is(e, RW_E_PROTO_BUSY) || rw_error_is(e, RW_E_PROTO_TOO_MANY)) {
        conn_send_error(c, f.msg.seq, e, false, 0, 0);
        c->closing = true;
        conn_flush(c);
      } else {
        conn_fatal(c, e);
      }
      return false;
    }
    if (got) {
      on_frame(c, &f);
      rwp_frame_clear(&f);
    }
  }
  return !c->dead && !c->closing;
}

/* The rest of a WRITE_AT body is read straight into its buffer (the
 * writer's cache segment to be) and MACed there: no copy through rbuf. */
static bool read_in_place(conn *c, bool *again) {
  uint8_t *at;
  size_t room = rwp_reader_body_room(c->rd, &at);
  if (!room) return false;
  ssize_t n = recv(c->fd, at, room, 0);
  *again = n < 0 && errno == EINTR;
  if (n < 0 && (*again || errno == EAGAIN || errno == EWOULDBLOCK)) return true;
  if (n <= 0) {
    conn_close(c);
    return true;
  }
  rw_error *e = rwp_reader_body_fed(c->rd, (size_t)n);
  if (e) conn_fatal(c, e);
  *again = !e && (size_t)n == room; /* a short read: the socket is drained */
  return true;
}

void conn_on_readable(conn *c) {
  for (int i = 0; i < 16 && !c->dead && !c->closing; i++) {
    bool again = false;
    if (read_in_place(c, &again)) {
      if (!again) return;
      continue;
    }
    ssize_t n = recv(c->fd, c->rbuf, sizeof c->rbuf, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
    if (n <= 0) {
      conn_close(c);
      return;
    }
    if (!feed(c, c->rbuf, (size_t)n)) return;
  }
}

void conn_tick(conn *c, double now) {
  rw_proxy_server *s = c->srv;
  if (c->lingering) {
    if (now - c->linger_at > LINGER_TIME) conn_close(c);
    return;
  }
  if (c->closing) { /* a peer that does not read its last frames */
    if (!c->closing_at) c->closing_at = now;
    else if (now - c->closing_at > 2) conn_close(c);
    return;
  }
  if (c->state != C_AUTHED) {
    if (now - c->accepted_at >= s->cfg.auth_timeout) {
      s->live.auth_failed++;
      conn_fatal(c, rw_err(RW_E_PROTO_AUTH_TIMEOUT, "no AUTH within %.1f s of connecting", s->cfg.auth_timeout));
    }
    return;
  }
  double iv = s->cfg.ping_interval_ms / 1000.0;
  if (now - c->last_rx < iv * (c->pings_out + 1)) return;
  if (c->pings_out >= 3) {
    rw_log(RW_LOG_INFO, "proxy: connection %llu silent after 3 PINGs: closed", (unsigned long long)c->id);
    conn_close(c);
    return;
  }
  c->pings_out++;
  conn_send(c, &(rwp_msg){.op = RWP_PING, .client_id = c->client_id, .u.ping.nonce = ++c->ping_nonce}, NULL, 0);
}
