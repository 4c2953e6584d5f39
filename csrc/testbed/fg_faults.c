/* Faults: storage-testbench's /retry_test queues and a seeded random mode. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/backoff.h"
#include "testbed/fg_internal.h"

struct fg_retry_test {
  struct fg_retry_test *next;
  char id[24];
  json_t *instructions; /* {method: [strings]}, consumed from the front */
};

/* Limits that keep the arithmetic exact: Y KiB fits in 2^53 bytes, a stall
 * is at most an hour. */
#define FG_MAX_AFTER_KIB ((uint64_t)1 << 43)
#define FG_MAX_STALL_S 3600.0

/* Digits at *p (no sign, no space) up to max; advances *p. */
static bool take_num(const char **p, uint64_t max, uint64_t *v) {
  const char *s = *p;
  uint64_t x = 0;
  if (*s < '0' || *s > '9') return false;
  for (; *s >= '0' && *s <= '9'; s++) {
    x = x * 10 + (uint64_t)(*s - '0');
    if (x > max) return false;
  }
  *p = s;
  *v = x;
  return true;
}

/* Seconds: digits with an optional fraction, at most FG_MAX_STALL_S. */
static bool take_seconds(const char **p, double *t) {
  uint64_t whole, frac = 0, scale = 1;
  if (!take_num(p, (uint64_t)FG_MAX_STALL_S, &whole)) return false;
  if (**p == '.') {
    (*p)++;
    const char *f = *p;
    if (!take_num(p, 999999999, &frac)) return false;
    for (; f < *p; f++) scale *= 10;
  }
  *t = (double)whole + (double)frac / (double)scale;
  return *t <= FG_MAX_STALL_S;
}

static bool take_lit(const char **p, const char *lit) {
  size_t n = strlen(lit);
  if (strncmp(*p, lit, n) != 0) return false;
  *p += n;
  return true;
}

/* "return-X-after-YK" or "return-X" */
static bool parse_return(const char *p, fg_fault *f) {
  uint64_t status, y;
  if (!take_num(&p, 999, &status) || status < 100 || status > 599) return false;
  f->status = (int)status;
  if (!*p) return (f->kind = FG_F_RETURN), true;
  if (!take_lit(&p, "-after-") || !take_num(&p, FG_MAX_AFTER_KIB, &y) || strcmp(p, "K") != 0)
    return false;
  f->kind = FG_F_RETURN_AFTER;
  f->after_bytes = y * 1024;
  return true;
}

/* "return-503", "return-503-after-256K", "stall-for-2s-after-512K", ...
 * Numbers are plain digits in range; anything else is unknown. */
bool fg_fault_parse(const char *s, fg_fault *f) {
  uint64_t y;
  const char *p = s;
  memset(f, 0, sizeof *f);
  if (strcmp(s, "return-reset-connection") == 0) return (f->kind = FG_F_RESET), true;
  if (strcmp(s, "return-broken-stream") == 0) return (f->kind = FG_F_BROKEN), true;
  if (strcmp(s, "return-corrupted-data") == 0) return (f->kind = FG_F_CORRUPT), true;
  if (take_lit(&p, "return-broken-stream-final-chunk-after-")) {
    if (!take_num(&p, FG_MAX_AFTER_KIB * 1024, &y) || strcmp(p, "B") != 0) return false;
    return (f->kind = FG_F_BROKEN_FINAL_AFTER), (f->after_bytes = y), true;
  }
  if (take_lit(&p, "return-broken-stream-after-")) {
    if (!take_num(&p, FG_MAX_AFTER_KIB, &y) || strcmp(p, "K") != 0) return false;
    return (f->kind = FG_F_BROKEN), (f->after_bytes = y * 1024), true;
  }
  if (take_lit(&p, "stall-for-")) {
    double t;
    if (!take_seconds(&p, &t) || !take_lit(&p, "s-after-") || !take_num(&p, FG_MAX_AFTER_KIB, &y) ||
        strcmp(p, "K") != 0)
      return false;
    return (f->kind = FG_F_STALL_AFTER), (f->stall_s = t), (f->after_bytes = y * 1024), true;
  }
  if (take_lit(&p, "return-")) return parse_return(p, f);
  return false;
}

void fg_faults_init(fg_faults *f) {
  memset(f, 0, sizeof *f);
  pthread_mutex_init(&f->mu, NULL);
}

void fg_faults_destroy(fg_faults *f) {
  for (fg_retry_test *t = f->tests, *n; t; t = n) {
    n = t->next;
    json_decref(t->instructions);
    free(t);
  }
  pthread_mutex_destroy(&f->mu);
}

static fg_retry_test *find_test(fg_faults *f, const char *id) {
  for (fg_retry_test *t = f->tests; t; t = t->next)
    if (strcmp(t->id, id) == 0) return t;
  return NULL;
}

static json_t *test_json(const fg_retry_test *t) {
  bool done = true;
  const char *k;
  json_t *v;
  json_object_foreach(t->instructions, k, v) if (json_array_size(v) > 0) done = false;
  return json_pack("{s:s, s:O, s:b}", "id", t->id, "instructions", t->instructions, "completed",
                   done);
}

/* Checks that every method maps to an array of known instructions. */
static bool valid_instructions(json_t *ins, char *why, size_t whylen) {
  const char *k;
  json_t *v;
  if (!json_is_object(ins)) return snprintf(why, whylen, "instructions must be an object"), false;
  json_object_foreach(ins, k, v) {
    size_t i;
    json_t *e;
    if (!json_is_array(v)) return snprintf(why, whylen, "%s must be an array", k), false;
    json_array_foreach(v, i, e) {
      fg_fault f;
      if (!json_is_string(e) || !fg_fault_parse(json_string_value(e), &f))
        return snprintf(why, whylen, "unknown instruction in %s", k), false;
    }
  }
  return true;
}

json_t *fg_retry_test_create(fg_faults *f, json_t *body, char *why, size_t whylen) {
  json_t *ins = json_object_get(body, "instructions");
  if (!valid_instructions(ins, why, whylen)) return NULL;
  fg_retry_test *t = calloc(1, sizeof *t);
  if (!t) return snprintf(why, whylen, "out of memory"), NULL;
  t->instructions = json_deep_copy(ins);
  pthread_mutex_lock(&f->mu);
  if (f->ntests >= FG_MAX_RETRY_TESTS) {
    pthread_mutex_unlock(&f->mu);
    json_decref(t->instructions);
    free(t);
    snprintf(why, whylen, "there are already %d retry tests: delete some first",
             FG_MAX_RETRY_TESTS);
    return NULL;
  }
  f->ntests++;
  char hex[9];
  fg_random_hex(hex, 4);
  snprintf(t->id, sizeof t->id, "%d%s", ++f->next_id, hex);
  t->next = f->tests;
  f->tests = t;
  json_t *j = test_json(t);
  pthread_mutex_unlock(&f->mu);
  return j;
}

json_t *fg_retry_test_json(fg_faults *f, const char *id) {
  pthread_mutex_lock(&f->mu);
  fg_retry_test *t = find_test(f, id);
  json_t *j = t ? test_json(t) : NULL;
  pthread_mutex_unlock(&f->mu);
  return j;
}

json_t *fg_retry_test_list(fg_faults *f) {
  json_t *arr = json_array();
  pthread_mutex_lock(&f->mu);
  for (fg_retry_test *t = f->tests; t; t = t->next) json_array_append_new(arr, test_json(t));
  pthread_mutex_unlock(&f->mu);
  return json_pack("{s:o}", "retry_test", arr);
}

bool fg_retry_test_delete(fg_faults *f, const char *id) {
  bool found = false;
  pthread_mutex_lock(&f->mu);
  for (fg_retry_test **pp = &f->tests; *pp; pp = &(*pp)->next) {
    if (strcmp((*pp)->id, id) == 0) {
      fg_retry_test *t = *pp;
      *pp = t->next;
      json_decref(t->instructions);
      free(t);
      f->ntests--;
      found = true;
      break;
    }
  }
  pthread_mutex_unlock(&f->mu);
  return found;
}

bool fg_retry_test_next(fg_faults *f, const char *id, const char *method, fg_fault *out) {
  memset(out, 0, sizeof *out);
  pthread_mutex_lock(&f->mu);
  fg_retry_test *t = find_test(f, id);
  json_t *q = t ? json_object_get(t->instructions, method) : NULL;
  if (json_array_size(q) > 0) {
    fg_fault_parse(json_string_value(json_array_get(q, 0)), out);
    json_array_remove(q, 0);
  }
  pthread_mutex_unlock(&f->mu);
  return t != NULL;
}

static void fault_string(const fg_fault *f, char *buf, size_t len) {
  switch (f->kind) {
    case FG_F_RETURN_AFTER:
      snprintf(buf, len, "return-%d-after-%lluK", f->status,
               (unsigned long long)(f->after_bytes / 1024));
      break;
    case FG_F_STALL_AFTER: {
      char t[32]; /* as the parser reads it: digits, maybe a fraction */
      size_t n = (size_t)snprintf(t, sizeof t, "%.6f", f->stall_s);
      while (n > 1 && t[n - 1] == '0') t[--n] = 0;
      if (t[n - 1] == '.') t[n - 1] = 0;
      snprintf(buf, len, "stall-for-%ss-after-%lluK", t, (unsigned long long)(f->after_bytes / 1024));
      break;
    }
    case FG_F_BROKEN_FINAL_AFTER:
      snprintf(buf, len, "return-broken-stream-final-chunk-after-%lluB",
               (unsigned long long)f->after_bytes);
      break;
    case FG_F_BROKEN:
      snprintf(buf, len, "return-broken-stream-after-%lluK",
               (unsigned long long)(f->after_bytes / 1024));
      break;
    case FG_F_CORRUPT:
      snprintf(buf, len, "return-corrupted-data");
      break;
    default:
      snprintf(buf, len, "return-%d", f->status);
  }
}

void fg_retry_test_unpop(fg_faults *f, const char *id, const char *method, const fg_fault *fault) {
  char buf[96];
  fault_string(fault, buf, sizeof buf);
  pthread_mutex_lock(&f->mu);
  fg_retry_test *t = find_test(f, id);
  json_t *q = t ? json_object_get(t->instructions, method) : NULL;
  if (q) json_array_insert_new(q, 0, json_string(buf));
  pthread_mutex_unlock(&f->mu);
}

void fg_faults_set_random(fg_faults *f, const rw_fakegcs_faults *r) {
  pthread_mutex_lock(&f->mu);
  f->random = *r;
  f->rng = r->seed;
  f->random_on = r->p_503 > 0 || r->p_408 > 0 || r->p_reset > 0 || r->p_partial > 0 ||
                 r->p_broken > 0 || r->p_stall > 0;
  pthread_mutex_unlock(&f->mu);
}

/* The core's seeded generator (splitmix64), under f->mu. */
static double next_unit(fg_faults *f) { return rw_rand_unit(&f->rng); }

void fg_faults_draw(fg_faults *f, fg_fault *out) {
  memset(out, 0, sizeof *out);
  pthread_mutex_lock(&f->mu);
  if (f->random_on) {
    const rw_fakegcs_faults *r = &f->random;
    double u = next_unit(f), acc = 0;
    if (u < (acc += r->p_503)) *out = (fg_fault){.kind = FG_F_RETURN, .status = 503};
    else if (u < (acc += r->p_408)) *out = (fg_fault){.kind = FG_F_RETURN, .status = 408};
    else if (u < (acc += r->p_reset)) out->kind = FG_F_RESET;
    else if (u < (acc += r->p_broken)) out->kind = FG_F_BROKEN;
    else if (u < (acc += r->p_partial)) {
      *out = (fg_fault){.kind = FG_F_RETURN_AFTER, .status = 503, .relative = true,
                        .after_bytes = (uint64_t)(next_unit(f) * 32) * FG_QUANTUM};
    } else if (u < (acc += r->p_stall)) {
      *out = (fg_fault){.kind = FG_F_STALL_AFTER, .stall_s = r->stall_ms / 1000.0};
    }
  }
  pthread_mutex_unlock(&f->mu);
}
