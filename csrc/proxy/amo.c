/* At-most-once reply table (amo.h). Clients in an open hash table by id;
 * each client's entries in an array sorted by seq (a client has at most
 * max_entries, bounded by its max_inflight in practice). */
#include "proxy/amo.h"

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "proxy/frame.h"

typedef struct entry {
  uint64_t seq;
  bool done;
  void *reply;
  size_t len;
  uint64_t *waiters;
  size_t nwaiters;
} entry;

typedef struct client {
  uint64_t id, low, high;
  double seen;
  entry *e;
  size_t n, cap;
  struct client *next;
} client;

struct rw_amo {
  rw_amo_config cfg;
  client **buckets;
  size_t nbuckets, nclients, nentries;
};

static size_t slot(const rw_amo *t, uint64_t id) {
  id ^= id >> 33, id *= 0xff51afd7ed558ccdull, id ^= id >> 33;
  return (size_t)(id % t->nbuckets);
}

rw_amo *rw_amo_new(const rw_amo_config *cfg, rw_error **err) {
  if (!(cfg->ttl > 0) || cfg->max_entries == 0 || cfg->max_clients == 0) {
    *err = rw_err(RW_E_INVALID, "amo: ttl, max_entries and max_clients must be > 0");
    return NULL;
  }
  rw_amo *t = calloc(1, sizeof *t);
  if (t) t->nbuckets = 256, t->buckets = calloc(t->nbuckets, sizeof *t->buckets);
  if (!t || !t->buckets) {
    free(t);
    *err = rw_err(RW_E_NOMEM, "amo: out of memory");
    return NULL;
  }
  t->cfg = *cfg;
  return t;
}

static void entry_clear(entry *e) {
  free(e->reply), free(e->waiters);
  memset(e, 0, sizeof *e);
}

static void client_free(rw_amo *t, client *c) {
  for (size_t i = 0; i < c->n; i++) entry_clear(&c->e[i]);
  t->nentries -= c->n;
  free(c->e), free(c);
}

void rw_amo_free(rw_amo *t) {
  if (!t) return;
  for (size_t i = 0; i < t->nbuckets; i++)
    for (client *c = t->buckets[i], *n; c; c = n) n = c->next, client_free(t, c);
  free(t->buckets), free(t);
}

static client *find(const rw_amo *t, uint64_t id) {
  for (client *c = t->buckets[slot(t, id)]; c; c = c->next)
    if (c->id == id) return c;
  return NULL;
}

static void grow_table(rw_amo *t) {
  size_t nb = t->nbuckets * 2;
  client **b = calloc(nb, sizeof *b);
  if (!b) return; /* longer chains, still correct */
  client **old = t->buckets;
  size_t on = t->nbuckets;
  t->buckets = b, t->nbuckets = nb;
  for (size_t i = 0; i < on; i++)
    for (client *c = old[i], *n; c; c = n) {
      n = c->next;
      size_t s = slot(t, c->id);
      c->next = b[s], b[s] = c;
    }
  free(old);
}

static rw_error *find_or_add(rw_amo *t, uint64_t id, client **out) {
  if ((*out = find(t, id))) return NULL;
  if (t->nclients >= t->cfg.max_clients)
    return rw_err(RW_E_PROTO_BUSY, "the proxy remembers %zu clients already (its bound)", t->nclients);
  client *c = calloc(1, sizeof *c);
  if (!c) return rw_err(RW_E_NOMEM, "amo: out of memory");
  if (t->nclients >= t->nbuckets) grow_table(t);
  c->id = id;
  size_t s = slot(t, id);
  c->next = t->buckets[s], t->buckets[s] = c;
  t->nclients++;
  *out = c;
  return NULL;
}

/* Index of seq in c's entries, or where it would go (*found false). */
static size_t locate(const client *c, uint64_t seq, bool *found) {
  size_t lo = 0, hi = c->n;
  while (lo < hi) {
    size_t mid = lo + (hi - lo) / 2;
    if (c->e[mid].seq < seq) lo = mid + 1;
    else hi = mid;
  }
  *found = lo < c->n && c->e[lo].seq == seq;
  return lo;
}

static rw_error *add_waiter(entry *e, uint64_t waiter) {
  uint64_t *w = realloc(e->waiters, (e->nwaiters + 1) * sizeof *w);
  if (!w) return rw_err(RW_E_NOMEM, "amo: out of memory");
  e->waiters = w, w[e->nwaiters++] = waiter;
  return NULL;
}

static rw_error *insert(rw_amo *t, client *c, size_t at, uint64_t seq) {
  if (c->n >= t->cfg.max_entries)
    return rw_err(RW_E_PROTO_BUSY, "client %016llx has %zu requests in the reply table (its bound)",
                  (unsigned long long)c->id, c->n);
  if (c->n == c->cap) {
    size_t cap = c->cap ? c->cap * 2 : 8;
    entry *e = realloc(c->e, cap * sizeof *e);
    if (!e) return rw_err(RW_E_NOMEM, "amo: out of memory");
    c->e = e, c->cap = cap;
  }
  memmove(&c->e[at + 1], &c->e[at], (c->n - at) * sizeof *c->e);
  memset(&c->e[at], 0, sizeof *c->e);
  c->e[at].seq = seq;
  c->n++, t->nentries++;
  return NULL;
}

rw_error *rw_amo_begin(rw_amo *t, uint64_t client_id, uint64_t seq, uint64_t waiter, double now,
                       rw_amo_verdict *v, const void **reply, size_t *len) {
  client *c;
  rw_error *err = find_or_add(t, client_id, &c);
  if (err) return err;
  c->seen = now;
  bool found;
  size_t at = locate(c, seq, &found);
  if (found && c->e[at].done) {
    *v = RW_AMO_REPLAY, *reply = c->e[at].reply, *len = c->e[at].len;
    return NULL;
  }
  if (found) {
    *v = RW_AMO_WAIT;
    return add_waiter(&c->e[at], waiter);
  }
  if (seq <= c->low) {
    *v = RW_AMO_EXPIRED;
    return NULL;
  }
  if ((err = insert(t, c, at, seq))) return err;
  if (seq > c->high) c->high = seq;
  *v = RW_AMO_RUN;
  return NULL;
}

static entry *lookup(rw_amo *t, uint64_t client_id, uint64_t seq, client **cp, size_t *at) {
  client *c = find(t, client_id);
  bool found = false;
  if (c) *at = locate(c, seq, &found);
  *cp = c;
  return found ? &c->e[*at] : NULL;
}

static void take_waiters(entry *e, uint64_t **waiters, size_t *nwaiters) {
  *waiters = e->nwaiters ? e->waiters : NULL, *nwaiters = e->nwaiters;
  if (!e->nwaiters) free(e->waiters);
  e->waiters = NULL, e->nwaiters = 0;
}

rw_error *rw_amo_done(rw_amo *t, uint64_t client_id, uint64_t seq, const void *reply, size_t len,
                      uint64_t **waiters, size_t *nwaiters) {
  *waiters = NULL, *nwaiters = 0;
  client *c;
  size_t at;
  entry *e = lookup(t, client_id, seq, &c, &at);
  if (!e || e->done) return NULL;
  void *copy = malloc(len ? len : 1);
  if (!copy) return rw_err(RW_E_NOMEM, "amo: out of memory");
  memcpy(copy, reply, len);
  e->reply = copy, e->len = len, e->done = true;
  take_waiters(e, waiters, nwaiters);
  return NULL;
}

static void drop_at(rw_amo *t, client *c, size_t at) {
  entry_clear(&c->e[at]);
  memmove(&c->e[at], &c->e[at + 1], (c->n - at - 1) * sizeof *c->e);
  c->n--, t->nentries--;
}

void rw_amo_cancel(rw_amo *t, uint64_t client_id, uint64_t seq, uint64_t **waiters,
                   size_t *nwaiters) {
  *waiters = NULL, *nwaiters = 0;
  client *c;
  size_t at;
  entry *e = lookup(t, client_id, seq, &c, &at);
  if (!e || e->done) return;
  take_waiters(e, waiters, nwaiters);
  drop_at(t, c, at);
}

static void forget_in(entry *e, uint64_t waiter) {
  size_t k = 0;
  for (size_t i = 0; i < e->nwaiters; i++)
    if (e->waiters[i] != waiter) e->waiters[k++] = e->waiters[i];
  e->nwaiters = k;
}

void rw_amo_forget_waiter(rw_amo *t, uint64_t waiter) {
  for (size_t b = 0; b < t->nbuckets; b++)
    for (client *c = t->buckets[b]; c; c = c->next)
      for (size_t i = 0; i < c->n; i++)
        if (!c->e[i].done) forget_in(&c->e[i], waiter);
}

void rw_amo_ack(rw_amo *t, uint64_t client_id, uint64_t ack, double now) {
  client *c = find(t, client_id);
  if (!c) return;
  c->seen = now;
  if (ack <= c->low) return;
  c->low = ack;
  size_t k = 0;
  for (size_t i = 0; i < c->n; i++) {
    if (c->e[i].seq <= ack && c->e[i].done) {
      entry_clear(&c->e[i]);
      t->nentries--;
    } else {
      c->e[k++] = c->e[i];
    }
  }
  c->n = k;
}

/* Drops a silent client's replies; none of its requests runs again. Pending
 * entries stay until their request ends (rw_amo_done / rw_amo_cancel). */
static void expire_entries(rw_amo *t, client *c) {
  size_t k = 0;
  for (size_t i = 0; i < c->n; i++) {
    if (c->e[i].done) entry_clear(&c->e[i]), t->nentries--;
    else c->e[k++] = c->e[i];
  }
  c->n = k;
  if (c->high > c->low) c->low = c->high;
}

void rw_amo_expire(rw_amo *t, double now) {
  for (size_t b = 0; b < t->nbuckets; b++) {
    client **pp = &t->buckets[b];
    while (*pp) {
      client *c = *pp;
      double idle = now - c->seen;
      if (idle >= 4 * t->cfg.ttl && c->n == 0) {
        *pp = c->next;
        t->nclients--;
        client_free(t, c);
        continue;
      }
      if (idle >= t->cfg.ttl) expire_entries(t, c);
      pp = &c->next;
    }
  }
}

size_t rw_amo_entries(const rw_amo *t) { return t->nentries; }
size_t rw_amo_clients(const rw_amo *t) { return t->nclients; }
uint64_t rw_amo_low(const rw_amo *t, uint64_t client_id) {
  const client *c = find(t, client_id);
  return c ? c->low : 0;
}
