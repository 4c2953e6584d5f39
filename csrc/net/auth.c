/* Credentials and the token cache: see auth.h. The sources' network side
 * (key files, JWT, token exchanges, the metadata server) is in auth_src.c. */
#include "auth.h"

#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/clock.h"
#include "net/auth_src.h"

#define REFRESH_AHEAD_MAX 225.0 /* seconds, as Google's clients (3m45s) */

struct rw_cred {
  int refs;        /* g_mu */
  rw_cred *next;   /* g_shared list, g_mu */
  char *key;       /* sharing key, NULL when not shared */
  rw_cred_kind kind;
  rw_auth_src src; /* FILE: loaded at creation; DEFAULT: resolved by the fetcher */
  bool resolved;   /* mu */
  char desc[600];
  pthread_mutex_t mu;
  pthread_cond_t cv;
  char token[RW_TOKEN_MAX + 1]; /* mu */
  bool has_token, want, fetching;
  double expires, refresh_at;   /* monotonic */
  uint64_t fetches, fetch_gen;
  rw_error *last_err;           /* of the last failed fetch */
};

static pthread_mutex_t g_mu = PTHREAD_MUTEX_INITIALIZER;
static rw_cred *g_shared;

/* ---- making and sharing ---- */

static char *share_key(const rw_cred_options *o) {
  const char *ca = o->ca_file ? o->ca_file : "";
  char *k = NULL;
  int n = -1;
  if (o->kind == RW_CRED_FILE) n = asprintf(&k, "file\n%s\n%s", o->path, ca);
  else if (o->kind == RW_CRED_METADATA) n = asprintf(&k, "metadata\n%s", ca);
  else if (o->kind == RW_CRED_DEFAULT) n = asprintf(&k, "default\n%s", ca);
  else return NULL;
  return n < 0 ? NULL : k;
}

static rw_error *check_options(const rw_cred_options *o) {
  if (!o) return rw_err(RW_E_INVALID, "credentials: no options");
  if (o->kind == RW_CRED_STATIC && (!o->token || !*o->token))
    return rw_err(RW_E_INVALID, "credentials: token must be a non-empty string");
  if (o->kind == RW_CRED_STATIC && (strlen(o->token) > RW_TOKEN_MAX || strpbrk(o->token, "\r\n")))
    return rw_err(RW_E_INVALID, "credentials: token must be at most %d bytes without line breaks",
                  RW_TOKEN_MAX);
  if (o->kind == RW_CRED_FILE && (!o->path || !*o->path))
    return rw_err(RW_E_INVALID, "credentials: credentials_file must be a non-empty path");
  if (o->kind > RW_CRED_DEFAULT) return rw_err(RW_E_INVALID, "credentials: unknown kind %d", (int)o->kind);
  return NULL;
}

static void describe(rw_cred *c, const rw_cred_options *o) {
  switch (c->kind) {
  case RW_CRED_STATIC: snprintf(c->desc, sizeof c->desc, "a bearer token given as an option"); break;
  case RW_CRED_PUSHED: snprintf(c->desc, sizeof c->desc, "a token function"); break;
  case RW_CRED_FILE: snprintf(c->desc, sizeof c->desc, "%s", rw_auth_src_describe(&c->src)); break;
  case RW_CRED_METADATA: snprintf(c->desc, sizeof c->desc, "the metadata server"); break;
  case RW_CRED_DEFAULT: snprintf(c->desc, sizeof c->desc, "application default credentials"); break;
  }
}

static void cred_free(rw_cred *c) {
  rw_auth_src_clear(&c->src);
  rw_error_unref(c->last_err);
  memset(c->token, 0, sizeof c->token);
  pthread_mutex_destroy(&c->mu);
  pthread_cond_destroy(&c->cv);
  free(c->key);
  free(c);
}

static rw_cred *cred_alloc(const rw_cred_options *o, rw_error **err) {
  rw_cred *c = calloc(1, sizeof *c);
  if (!c) {
    *err = rw_err(RW_E_NOMEM, "credentials: out of memory");
    return NULL;
  }
  c->refs = 1;
  c->kind = o->kind;
  pthread_mutex_init(&c->mu, NULL);
  rw_cond_init(&c->cv);
  c->src.ca_file = o->ca_file ? strdup(o->ca_file) : NULL;
  c->src.total_wait = o->fetch_total_wait > 0 ? o->fetch_total_wait : 10;
  c->src.probe_timeout = o->probe_timeout > 0 ? o->probe_timeout : 1;
  if (o->ca_file && !c->src.ca_file) goto nomem;
  if (o->kind == RW_CRED_STATIC) {
    snprintf(c->token, sizeof c->token, "%s", o->token);
    c->has_token = true;
    c->expires = c->refresh_at = INFINITY;
  }
  if (o->kind == RW_CRED_FILE && (*err = rw_auth_src_load_file(&c->src, o->path, "credentials_file")))
    goto fail;
  if (o->kind == RW_CRED_METADATA && (*err = rw_auth_src_metadata(&c->src))) goto fail;
  c->resolved = o->kind != RW_CRED_DEFAULT;
  describe(c, o);
  return c;
nomem:
  *err = rw_err(RW_E_NOMEM, "credentials: out of memory");
fail:
  cred_free(c);
  return NULL;
}

static rw_cred *find_shared(const char *key) {
  for (rw_cred *c = g_shared; c; c = c->next)
    if (strcmp(c->key, key) == 0) return c;
  return NULL;
}

rw_cred *rw_cred_new(const rw_cred_options *o, rw_error **err) {
  *err = check_options(o);
  if (*err) return NULL;
  char *key = share_key(o);
  if (!key && (o->kind == RW_CRED_FILE || o->kind == RW_CRED_METADATA || o->kind == RW_CRED_DEFAULT)) {
    *err = rw_err(RW_E_NOMEM, "credentials: out of memory");
    return NULL;
  }
  pthread_mutex_lock(&g_mu);
  rw_cred *c = key ? find_shared(key) : NULL;
  if (c) {
    c->refs++;
    pthread_mutex_unlock(&g_mu);
    free(key);
    return c;
  }
  pthread_mutex_unlock(&g_mu);
  /* Made outside the lock (it reads a file); a racing twin is dropped. */
  c = cred_alloc(o, err);
  if (!c) {
    free(key);
    return NULL;
  }
  if (!key) return c;
  pthread_mutex_lock(&g_mu);
  rw_cred *twin = find_shared(key);
  if (twin) {
    twin->refs++;
    pthread_mutex_unlock(&g_mu);
    free(key);
    cred_free(c);
    return twin;
  }
  c->key = key;
  c->next = g_shared;
  c->refs++; /* the registry's: the cache outlives its users */
  g_shared = c;
  pthread_mutex_unlock(&g_mu);
  return c;
}

rw_cred *rw_cred_ref(rw_cred *c) {
  pthread_mutex_lock(&g_mu);
  c->refs++;
  pthread_mutex_unlock(&g_mu);
  return c;
}

static void unlink_shared(rw_cred *c) {
  for (rw_cred **p = &g_shared; *p; p = &(*p)->next)
    if (*p == c) {
      *p = c->next;
      return;
    }
}

void rw_cred_unref(rw_cred *c) {
  if (!c) return;
  pthread_mutex_lock(&g_mu);
  bool last = --c->refs == 0;
  if (last) unlink_shared(c);
  pthread_mutex_unlock(&g_mu);
  if (last) cred_free(c);
}

void rw_cred_forget_shared(void) {
  pthread_mutex_lock(&g_mu);
  rw_cred *list = g_shared;
  g_shared = NULL;
  pthread_mutex_unlock(&g_mu);
  while (list) {
    rw_cred *next = list->next;
    rw_cred_unref(list); /* the registry's reference */
    list = next;
  }
}

/* The registry's references end with the library: Lua closes its C modules
 * (dlclose) at lua_close, and with them the g_shared pointer, so a cached
 * credential left there was lost memory (valgrind: definitely lost, one per
 * process that made a GCS sink or reader with the default chain). Users that
 * still hold a credential keep it: only the registry's reference goes. */
__attribute__((destructor)) static void forget_at_unload(void) { rw_cred_forget_shared(); }

const char *rw_cred_describe(rw_cred *c) { return c->desc; }

uint64_t rw_cred_fetches(rw_cred *c) {
  pthread_mutex_lock(&c->mu);
  uint64_t n = c->fetches;
  pthread_mutex_unlock(&c->mu);
  return n;
}

/* ---- the cache ---- */

static void store_token(rw_cred *c, const char *token, double expires_in) {
  double now = rw_mono_now();
  if (expires_in <= 0) expires_in = 3600;
  double ahead = expires_in / 4 < REFRESH_AHEAD_MAX ? expires_in / 4 : REFRESH_AHEAD_MAX;
  snprintf(c->token, sizeof c->token, "%s", token);
  c->has_token = true;
  c->want = false;
  c->expires = now + expires_in;
  c->refresh_at = c->expires - ahead;
}

static bool token_valid(const rw_cred *c, double now) { return c->has_token && now < c->expires; }

static rw_error *copy_token(const rw_cred *c, char *out, size_t n) {
  size_t len = strlen(c->token);
  if (len >= n) return rw_err(RW_E_INVALID, "credentials: the token buffer is too small");
  memcpy(out, c->token, len + 1);
  return NULL;
}

/* One fetch, lock not held: resolves the chain first for DEFAULT. */
static rw_error *fetch(rw_cred *c, rw_ctx *ctx, char *tok, double *expires_in) {
  pthread_mutex_lock(&c->mu);
  bool resolved = c->resolved;
  pthread_mutex_unlock(&c->mu);
  if (!resolved) {
    rw_error *e = rw_auth_src_resolve_default(&c->src, ctx);
    if (e) return e;
    pthread_mutex_lock(&c->mu);
    c->resolved = true;
    pthread_mutex_unlock(&c->mu);
  }
  pthread_mutex_lock(&c->mu);
  c->fetches++;
  pthread_mutex_unlock(&c->mu);
  return rw_auth_src_fetch(&c->src, ctx, tok, RW_TOKEN_MAX + 1, expires_in);
}

/* The caller holds mu and set c->fetching; returns with mu held. */
static rw_error *fetch_locked(rw_cred *c, rw_ctx *ctx) {
  char tok[RW_TOKEN_MAX + 1];
  double expires_in = 0;
  pthread_mutex_unlock(&c->mu);
  rw_error *e = fetch(c, ctx, tok, &expires_in);
  pthread_mutex_lock(&c->mu);
  c->fetching = false;
  c->fetch_gen++;
  rw_error_unref(c->last_err);
  c->last_err = e ? rw_error_ref(e) : NULL;
  if (!e) store_token(c, tok, expires_in);
  memset(tok, 0, sizeof tok);
  pthread_cond_broadcast(&c->cv);
  return e;
}

typedef struct wait_arg {
  rw_cred *c;
  uint64_t gen;
} wait_arg;

static bool fetch_done(void *arg) {
  wait_arg *w = arg;
  return !w->c->fetching || w->c->fetch_gen != w->gen;
}

/* Waits for the running fetch (mu held); its error, if it failed. */
static rw_error *wait_fetch(rw_cred *c, rw_ctx *ctx) {
  wait_arg w = {c, c->fetch_gen};
  rw_error *e = rw_ctx_cond_wait(ctx, &c->mu, &c->cv, fetch_done, &w, INFINITY);
  if (e) return e;
  if (c->fetch_gen != w.gen && c->last_err && !token_valid(c, rw_mono_now()))
    return rw_error_ref(c->last_err);
  return NULL;
}

static rw_error *pending(rw_cred *c) {
  c->want = true;
  return rw_err(RW_E_TOKEN_PENDING, "credentials: %s has no valid token yet; it is asked for on the "
                "Lua thread's next call", c->desc);
}

rw_error *rw_cred_token(rw_cred *c, rw_ctx *ctx, char *out, size_t n) {
  rw_error *e = NULL;
  pthread_mutex_lock(&c->mu);
  for (;;) {
    double now = rw_mono_now();
    bool fetchable = c->kind != RW_CRED_STATIC && c->kind != RW_CRED_PUSHED;
    if (token_valid(c, now)) {
      if (now >= c->refresh_at && fetchable && !c->fetching) {
        c->fetching = true;
        rw_error_unref(fetch_locked(c, ctx)); /* ahead of expiry: the old token still serves */
      } else if (now >= c->refresh_at && c->kind == RW_CRED_PUSHED) {
        c->want = true;
      }
      e = copy_token(c, out, n);
      break;
    }
    if (c->kind == RW_CRED_PUSHED && c->last_err) {
      e = rw_error_ref(c->last_err);
      break;
    }
    if (c->kind == RW_CRED_PUSHED || c->kind == RW_CRED_STATIC) {
      e = pending(c);
      break;
    }
    if (c->fetching) {
      if ((e = wait_fetch(c, ctx))) break;
      continue;
    }
    c->fetching = true;
    if ((e = fetch_locked(c, ctx))) break;
  }
  pthread_mutex_unlock(&c->mu);
  return e;
}

void rw_cred_invalidate(rw_cred *c, const char *token) {
  pthread_mutex_lock(&c->mu);
  if (c->kind != RW_CRED_STATIC && c->has_token && token && strcmp(c->token, token) == 0) {
    c->has_token = false;
    c->want = c->kind == RW_CRED_PUSHED;
  }
  pthread_mutex_unlock(&c->mu);
}

bool rw_cred_wants_token(rw_cred *c) {
  if (c->kind != RW_CRED_PUSHED) return false;
  pthread_mutex_lock(&c->mu);
  bool w = c->want || !token_valid(c, rw_mono_now()) || rw_mono_now() >= c->refresh_at;
  pthread_mutex_unlock(&c->mu);
  return w;
}

rw_error *rw_cred_push_token(rw_cred *c, const char *token, double expires_in) {
  if (c->kind != RW_CRED_PUSHED) return rw_err(RW_E_INVALID, "credentials: only a token function's "
                                               "credential takes pushed tokens");
  if (!token || !*token || strlen(token) > RW_TOKEN_MAX || strpbrk(token, "\r\n"))
    return rw_err(RW_E_INVALID, "token_fn: the token must be a non-empty string of at most %d bytes "
                  "without line breaks", RW_TOKEN_MAX);
  if (!(expires_in < 1e9)) return rw_err(RW_E_INVALID, "token_fn: expires_in must be a finite number");
  pthread_mutex_lock(&c->mu);
  store_token(c, token, expires_in);
  rw_error_unref(c->last_err);
  c->last_err = NULL;
  c->fetches++;
  pthread_cond_broadcast(&c->cv);
  pthread_mutex_unlock(&c->mu);
  return NULL;
}

void rw_cred_push_error(rw_cred *c, rw_error *e) {
  if (c->kind != RW_CRED_PUSHED || !e) return;
  pthread_mutex_lock(&c->mu);
  rw_error_unref(c->last_err);
  c->last_err = rw_error_ref(e); /* used once no valid token is left */
  c->want = true;
  pthread_cond_broadcast(&c->cv);
  pthread_mutex_unlock(&c->mu);
}

rw_error *rw_cred_pick(const char *endpoint, bool has_token, bool anonymous, rw_cred *given,
                       const char *ca_file, rw_cred **out) {
  *out = NULL;
  if (has_token || anonymous) return NULL;
  if (given) {
    *out = rw_cred_ref(given);
    return NULL;
  }
  const char *e1 = getenv("STORAGE_EMULATOR_HOST"), *e2 = getenv("CLOUD_STORAGE_EMULATOR_ENDPOINT");
  if ((endpoint && *endpoint) || (e1 && *e1) || (e2 && *e2)) return NULL;
  rw_cred_options o = {.kind = RW_CRED_DEFAULT, .ca_file = ca_file};
  rw_error *e = NULL;
  *out = rw_cred_new(&o, &e);
  return e;
}
