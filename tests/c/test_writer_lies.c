/* The writer against a server that lies: a scripted sink answers each call
 * from a script (no network), and every lie the protocol can detect must end
 * the upload with gcs.session_conflict or gcs.checksum_mismatch, at once:
 * never retried, never taken as a success. */
#include <pthread.h>
#include <stdint.h>

#include "core/checksum.h"
#include "core/clock.h"
#include "ctest.h"
#include "io/writer.h"

#define KiB 1024u
#define PUT_END (-1) /* persisted: the end of the put being answered */
#define TOTAL (-1)   /* size: the object's real size */

typedef enum { SUM_NONE = 0, SUM_GOOD, SUM_BAD } sum_kind;

/* One scripted answer. The call it answers must be `op`. */
typedef struct step {
  const char *op;     /* "put" or "query" */
  const char *fail;   /* an error code to fail the call with, or NULL */
  int64_t persisted;  /* bytes the server says it holds, or PUT_END */
  bool finalized;
  int64_t size;       /* with finalized: the object's size, or TOTAL */
  sum_kind crc32c, md5;
} step;

typedef struct call {
  char op[8];
  uint64_t off, len;
  bool final;
} call;

typedef struct script_sink {
  rw_sink base;
  pthread_mutex_t mu;
  const step *steps;
  size_t nsteps, next;
  call calls[32];
  size_t ncalls;
  int begins, aborts, destroyed, overrun, mismatched;
  bool final_has_crc;
  uint32_t final_crc;
  /* the true object, for the checksums a truthful server would report */
  uint32_t crc;
  unsigned char md5[16];
  uint64_t n;
} script_sink;

/* Takes the next step for op; NULL (and a failed script) when there is none. */
static const step *take_locked(script_sink *s, const char *op, uint64_t off, uint64_t len, bool final) {
  if (s->ncalls < sizeof s->calls / sizeof s->calls[0]) {
    call *c = &s->calls[s->ncalls++];
    *c = (call){.off = off, .len = len, .final = final};
    snprintf(c->op, sizeof c->op, "%s", op);
  }
  if (s->next == s->nsteps) {
    s->overrun++;
    return NULL;
  }
  const step *st = &s->steps[s->next++];
  if (strcmp(st->op, op) != 0) {
    s->mismatched++;
    fprintf(stderr, "script: step %zu is a %s, the writer made a %s\n", s->next - 1, st->op, op);
    return NULL;
  }
  return st;
}

static char *sum_text(const script_sink *s, sum_kind k, bool md5) {
  if (k == SUM_NONE) return NULL;
  char buf[32];
  if (md5) {
    unsigned char d[16];
    memcpy(d, s->md5, 16);
    if (k == SUM_BAD) d[0] ^= 1;
    rw_md5_base64(d, buf);
  } else {
    rw_crc32c_base64(k == SUM_BAD ? s->crc ^ 1 : s->crc, buf);
  }
  return strdup(buf);
}

/* Turns a step into the sink's answer. mu held. */
static rw_error *answer_locked(script_sink *s, const step *st, uint64_t put_end, rw_sink_result *res) {
  if (!st) return rw_err(RW_E_INTERNAL, "script: no step left for this call");
  if (st->fail) return rw_err(st->fail, "scripted failure");
  res->persisted = st->persisted == PUT_END ? put_end : (uint64_t)st->persisted;
  if (st->finalized) {
    res->finalized = true;
    res->obj.size = st->size == TOTAL ? s->n : (uint64_t)st->size;
    res->obj.bucket = strdup("b");
    res->obj.name = strdup("o");
    res->obj.crc32c = sum_text(s, st->crc32c, false);
    res->obj.md5 = sum_text(s, st->md5, true);
  }
  return NULL;
}

static rw_error *ss_begin(rw_sink *b, rw_ctx *ctx) {
  script_sink *s = (script_sink *)b;
  pthread_mutex_lock(&s->mu);
  s->begins++;
  pthread_mutex_unlock(&s->mu);
  return NULL;
}

static rw_error *ss_put(rw_sink *b, rw_ctx *ctx, const rw_sink_put *p, rw_sink_result *res) {
  script_sink *s = (script_sink *)b;
  pthread_mutex_lock(&s->mu);
  if (p->final && p->sums) {
    s->final_has_crc = p->sums->has_crc32c;
    s->final_crc = p->sums->crc32c;
  }
  const step *st = take_locked(s, "put", p->offset, p->len, p->final);
  rw_error *e = answer_locked(s, st, p->offset + p->len, res);
  pthread_mutex_unlock(&s->mu);
  return e;
}

static rw_error *ss_query(rw_sink *b, rw_ctx *ctx, rw_sink_result *res) {
  script_sink *s = (script_sink *)b;
  pthread_mutex_lock(&s->mu);
  const step *st = take_locked(s, "query", 0, 0, false);
  rw_error *e = answer_locked(s, st, 0, res);
  pthread_mutex_unlock(&s->mu);
  return e;
}

static rw_error *ss_abort(rw_sink *b, rw_ctx *ctx) {
  script_sink *s = (script_sink *)b;
  pthread_mutex_lock(&s->mu);
  s->aborts++;
  pthread_mutex_unlock(&s->mu);
  return NULL;
}

static const char *ss_session(rw_sink *b) { return "scripted"; }

/* The test owns the memory: destroy only records that the writer let go. */
static void ss_destroy(rw_sink *b) {
  script_sink *s = (script_sink *)b;
  pthread_mutex_lock(&s->mu);
  s->destroyed++;
  pthread_mutex_unlock(&s->mu);
}

static const rw_sink_ops script_ops = {"scripted", ss_begin, ss_put, ss_query, ss_abort, ss_session, ss_destroy};

static void script_sink_init(script_sink *s, const step *steps, size_t nsteps, const unsigned char *data,
                             uint64_t n) {
  memset(s, 0, sizeof *s);
  s->base.ops = &script_ops;
  pthread_mutex_init(&s->mu, NULL);
  s->steps = steps;
  s->nsteps = nsteps;
  s->n = n;
  s->crc = rw_crc32c(0, data, n);
  rw_md5 m;
  CHECK(rw_md5_init(&m));
  rw_md5_update(&m, data, n);
  rw_md5_final(&m, s->md5);
}

/* ---- the log: the line that reports the failure ---- */

static pthread_mutex_t log_mu = PTHREAD_MUTEX_INITIALIZER;
static char failed_line[1024];
static int failed_lines;

static void capture_log(void *ud, rw_log_level lvl, const char *line) {
  if (lvl != RW_LOG_ERROR || !strstr(line, "upload failed")) return;
  pthread_mutex_lock(&log_mu);
  snprintf(failed_line, sizeof failed_line, "%s", line);
  failed_lines++;
  pthread_mutex_unlock(&log_mu);
}

/* ---- running a case ---- */

static uint64_t rng;

typedef struct lie_case {
  const char *name;
  const step *script;
  size_t nsteps;
  uint64_t n;     /* the object's size */
  uint64_t start; /* resume: the server already holds [0, start) */
  bool md5;
  const char *want_code; /* NULL: the upload must succeed */
  const char *want_msg;  /* a piece of the error message */
  uint64_t want_retries, want_persisted, want_chunks;
} lie_case;

/* Set by a case that succeeds after retries: the code stats must count for
 * each of them (and no other). */
static const char *want_counted;
/* Set by a case for checksum = "md5": no crc32c is computed or asked for. */
static bool md5_only;

static rw_writer_config lie_config(void) {
  rw_writer_config c = rw_writer_defaults();
  c.max_cache_size = 2u << 20;
  c.min_chunk_size = 256 * KiB;
  c.max_chunk_size = 512 * KiB;
  c.retry.min_wait = 0.001;
  c.retry.max_wait = 0.005;
  c.retry.total_wait = 5;
  c.retry.seed = rng | 1;
  return c;
}

static bool wait_finished(rw_writer *w) {
  double until = rw_mono_now() + 10;
  while (!rw_writer_finished(w) && rw_mono_now() < until) rw_writer_wait(w, NULL, false, 0, 0.05);
  rw_writer_drain(w);
  return rw_writer_finished(w);
}

struct code_count {
  const char *want;
  uint64_t want_n, other;
};

static void count_codes(void *ud, const char *code, uint64_t n) {
  struct code_count *cc = ud;
  if (strcmp(code, cc->want) == 0) cc->want_n += n;
  else cc->other += n;
}

static void check_failed(const lie_case *lc, rw_writer *w, script_sink *s, const unsigned char *data) {
  rw_error *e = rw_writer_error(w);
  CHECK(e != NULL);
  if (!e) return;
  char text[1024];
  rw_error_format(e, text, sizeof text);
  fprintf(stderr, "   %s: %s\n", lc->name, text);
  CHECK(strcmp(rw_error_code(e), lc->want_code) == 0);
  CHECK(!rw_error_retryable(e));
  CHECK(strstr(rw_error_message(e), lc->want_msg) != NULL);
  CHECK(rw_writer_object(w) == NULL);
  rw_writer_stats st = rw_writer_get_stats(w);
  CHECK_EQ_INT(st.state, RW_WRITER_FAILED);
  CHECK_EQ_INT(st.retries, lc->want_retries);
  CHECK_EQ_INT(st.persisted, lc->want_persisted);
  CHECK_EQ_INT(st.chunks, lc->want_chunks);
  CHECK_EQ_INT(st.written, lc->n - lc->start);
  struct code_count cc = {lc->want_code, 0, 0};
  rw_writer_each_error(w, count_codes, &cc);
  CHECK_EQ_INT(cc.want_n, 1);
  /* the line reporting the failure names the error's id and what the server holds */
  pthread_mutex_lock(&log_mu);
  CHECK_EQ_INT(failed_lines, 1);
  CHECK(strstr(failed_line, rw_error_id(e)) != NULL);
  CHECK(strstr(failed_line, lc->want_code) != NULL);
  /* a lie told with a finalized object: the line says so, never "[0, N)" */
  const step *lie = &lc->script[lc->nsteps - 1];
  char held[96];
  if (lie->finalized && !lie->fail)
    snprintf(held, sizeof held, "finalized an object of %llu bytes",
             (unsigned long long)(lie->size == TOTAL ? lc->n : (uint64_t)lie->size));
  else
    snprintf(held, sizeof held, "[0, %llu)", (unsigned long long)lc->want_persisted);
  CHECK(strstr(failed_line, held) != NULL);
  pthread_mutex_unlock(&log_mu);
  /* the writer stays failed: writes and Complete get the same error, and
   * nothing more reaches the server */
  size_t acc = 0;
  rw_error *again = rw_writer_write_some(w, lc->n, data, 1, NULL, NULL, &acc);
  CHECK(again && strcmp(rw_error_id(again), rw_error_id(e)) == 0);
  rw_error_unref(again);
  again = rw_writer_complete_start(w, UINT64_MAX);
  CHECK(again && strcmp(rw_error_id(again), rw_error_id(e)) == 0);
  rw_error_unref(again);
  struct timespec ts = {0, 30 * 1000000};
  nanosleep(&ts, NULL);
  pthread_mutex_lock(&s->mu);
  CHECK_EQ_INT(s->ncalls, lc->nsteps);
  pthread_mutex_unlock(&s->mu);
  rw_error_unref(e);
}

static void check_done(const lie_case *lc, rw_writer *w, script_sink *s) {
  rw_error *e = rw_writer_error(w);
  CHECK(e == NULL);
  rw_error_unref(e);
  const rw_sink_object *o = rw_writer_object(w);
  CHECK(o && o->size == lc->n);
  rw_writer_stats st = rw_writer_get_stats(w);
  CHECK_EQ_INT(st.state, RW_WRITER_DONE);
  CHECK_EQ_INT(st.retries, lc->want_retries);
  CHECK_EQ_INT(st.persisted, lc->n);
  CHECK_EQ_INT(st.chunks, lc->want_chunks);
  CHECK_EQ_INT(st.in_cache, 0);
  pthread_mutex_lock(&s->mu);
  CHECK(s->final_has_crc && s->final_crc == s->crc); /* the writer sent the true checksum */
  pthread_mutex_unlock(&s->mu);
  pthread_mutex_lock(&log_mu);
  CHECK_EQ_INT(failed_lines, 0);
  pthread_mutex_unlock(&log_mu);
  if (want_counted) {
    struct code_count cc = {want_counted, 0, 0};
    rw_writer_each_error(w, count_codes, &cc);
    CHECK_EQ_INT(cc.want_n, lc->want_retries);
    CHECK_EQ_INT(cc.other, 0);
  }
}

/* Writes the object in one go (the cache holds it all), completes it and
 * waits for the writer to finish, then checks the outcome. Returns the
 * sink's record of the calls through *calls (at most 32). */
static void run_case(const lie_case *lc, call *calls, size_t *ncalls) {
  fprintf(stderr, "-- %s\n", lc->name);
  unsigned char *data = malloc(lc->n);
  for (uint64_t i = 0; i < lc->n; i++) data[i] = (unsigned char)rw_rand_next(&rng);
  script_sink s;
  script_sink_init(&s, lc->script, lc->nsteps, data, lc->n);
  pthread_mutex_lock(&log_mu);
  failed_lines = 0;
  failed_line[0] = 0;
  pthread_mutex_unlock(&log_mu);
  rw_log_set_hook(capture_log, NULL);

  rw_writer_config c = lie_config();
  c.md5 = lc->md5;
  c.crc32c = !md5_only;
  c.start_offset = lc->start;
  c.has_start_crc = lc->start > 0;
  c.start_crc = rw_crc32c(0, data, lc->start);
  rw_error *err = NULL;
  rw_writer *w = rw_writer_new(NULL, &s.base, &c, &err);
  CHECK(w != NULL);
  if (!w) goto out;
  size_t acc = 0;
  err = rw_writer_write_some(w, lc->start, data + lc->start, lc->n - lc->start, NULL, NULL, &acc);
  /* a lie about the first chunk may already have failed the writer */
  CHECK(!err || (lc->want_code && rw_error_is(err, lc->want_code)));
  CHECK(err || acc == lc->n - lc->start);
  rw_error_unref(err);
  rw_error_unref(rw_writer_complete_start(w, lc->n));
  CHECK(wait_finished(w));
  if (lc->want_code) check_failed(lc, w, &s, data);
  else check_done(lc, w, &s);

  pthread_mutex_lock(&s.mu);
  CHECK_EQ_INT(s.next, lc->nsteps); /* every scripted answer was asked for */
  CHECK_EQ_INT(s.overrun, 0);       /* and nothing past them: no retry after the lie */
  CHECK_EQ_INT(s.mismatched, 0);
  CHECK_EQ_INT(s.begins, lc->start == 0 ? 1 : 0);
  *ncalls = s.ncalls;
  memcpy(calls, s.calls, sizeof s.calls);
  pthread_mutex_unlock(&s.mu);
  rw_writer_free(w);
  CHECK_EQ_INT(s.destroyed, 1);
out:
  rw_log_set_hook(NULL, NULL);
  pthread_mutex_destroy(&s.mu);
  free(data);
}

static uint64_t small_size(void) { return 1000 + rw_rand_next(&rng) % (200 * KiB); } /* one final chunk */
static uint64_t three_chunks(void) { return (1024 * KiB) + 1 + rw_rand_next(&rng) % (200 * KiB); }

/* The control: an honest server, with a reset and a partial 308 on the way,
 * gives a finished object (so the harness can tell success from failure). */
static void test_honest_server(void) {
  static const step script[] = {
      {"put", NULL, PUT_END, false, 0, 0, 0},
      {"put", "net.reset", 0, false, 0, 0, 0},
      {"query", NULL, 768 * KiB, false, 0, 0, 0},
      {"put", NULL, PUT_END, false, 0, 0, 0},
      {"put", NULL, PUT_END, true, TOTAL, SUM_GOOD, SUM_GOOD},
  };
  lie_case lc = {"honest server", script, 5, three_chunks(), 0, true, NULL, NULL, 1, 0, 3};
  call calls[32];
  size_t n = 0;
  run_case(&lc, calls, &n);
  CHECK_EQ_INT(n, 5);
  /* only the missing quarter was sent again after the reset */
  CHECK(strcmp(calls[3].op, "put") == 0 && calls[3].off == 768 * KiB && calls[3].len == 256 * KiB);
  CHECK(calls[4].final && calls[4].off == 1024 * KiB && calls[4].off + calls[4].len == lc.n);
}

static void test_final_size_differs(void) {
  static const step shorter[] = {{"put", NULL, PUT_END, true, 1000 - 1, SUM_GOOD, SUM_NONE}};
  lie_case lc = {"final size smaller than written", shorter, 1, 1000, 0, false,
                 RW_E_SESSION_CONFLICT, "were written", 0, 0, 0};
  call calls[32];
  size_t n;
  run_case(&lc, calls, &n);
  CHECK(n == 1 && calls[0].final);
  /* larger than written, after a retried 503 on the final chunk */
  static const step larger[] = {
      {"put", "http.503", 0, false, 0, 0, 0},
      {"query", NULL, 0, false, 0, 0, 0},
      {"put", NULL, PUT_END, true, 1 << 30, SUM_GOOD, SUM_NONE},
  };
  lc = (lie_case){"final size larger than written", larger, 3, small_size(), 0, false,
                  RW_E_SESSION_CONFLICT, "were written", 1, 0, 0};
  run_case(&lc, calls, &n);
}

static void test_final_checksum_differs(void) {
  static const step crc[] = {{"put", NULL, PUT_END, true, TOTAL, SUM_BAD, SUM_GOOD}};
  lie_case lc = {"crc32c differs", crc, 1, small_size(), 0, true, RW_E_CHECKSUM, "crc32c mismatch", 0, 0, 0};
  call calls[32];
  size_t n;
  run_case(&lc, calls, &n);
  static const step md5[] = {{"put", NULL, PUT_END, true, TOTAL, SUM_GOOD, SUM_BAD}};
  lc = (lie_case){"md5 differs", md5, 1, small_size(), 0, true, RW_E_CHECKSUM, "md5 mismatch", 0, 0, 0};
  run_case(&lc, calls, &n);
  /* across chunks: the crc32c covers the whole object, not the last chunk */
  static const step multi[] = {
      {"put", NULL, PUT_END, false, 0, 0, 0},
      {"put", NULL, PUT_END, false, 0, 0, 0},
      {"put", NULL, PUT_END, true, TOTAL, SUM_BAD, SUM_NONE},
  };
  lc = (lie_case){"crc32c differs after three chunks", multi, 3, three_chunks(), 0, false, RW_E_CHECKSUM,
                  "crc32c mismatch", 0, 1024 * KiB, 2};
  run_case(&lc, calls, &n);
}

static void test_finalized_early(void) {
  /* a 200 with the whole object's metadata, to the first of three chunks */
  static const step put[] = {{"put", NULL, PUT_END, true, TOTAL, SUM_GOOD, SUM_GOOD}};
  lie_case lc = {"200 to a non-final chunk", put, 1, three_chunks(), 0, true, RW_E_SESSION_CONFLICT,
                 "non-final chunk", 0, 0, 0};
  call calls[32];
  size_t n;
  run_case(&lc, calls, &n);
  CHECK(n == 1 && !calls[0].final && calls[0].off == 0 && calls[0].len == 512 * KiB);
  /* the same lie told by the status query after a failed middle chunk */
  static const step query[] = {
      {"put", NULL, PUT_END, false, 0, 0, 0},
      {"put", "http.503", 0, false, 0, 0, 0},
      {"query", NULL, 0, true, TOTAL, SUM_GOOD, SUM_GOOD},
  };
  lc = (lie_case){"status query says finalized during a non-final chunk", query, 3, three_chunks(), 0, true,
                  RW_E_SESSION_CONFLICT, "non-final chunk", 1, 512 * KiB, 1};
  run_case(&lc, calls, &n);
}

static void test_persisted_backwards(void) {
  static const step range[] = {
      {"put", NULL, PUT_END, false, 0, 0, 0},
      {"put", NULL, 256 * KiB, false, 0, 0, 0}, /* a 308 whose Range ends before 512 KiB */
  };
  lie_case lc = {"308 Range goes backwards", range, 2, three_chunks(), 0, false, RW_E_SESSION_CONFLICT,
                 "went backwards", 0, 512 * KiB, 1};
  call calls[32];
  size_t n;
  run_case(&lc, calls, &n);
  static const step query[] = {
      {"put", NULL, PUT_END, false, 0, 0, 0},
      {"put", "net.reset", 0, false, 0, 0, 0},
      {"query", NULL, 0, false, 0, 0, 0}, /* a 308 without Range: nothing persisted */
  };
  lc = (lie_case){"status query goes backwards", query, 3, three_chunks(), 0, false, RW_E_SESSION_CONFLICT,
                  "went backwards", 1, 512 * KiB, 1};
  run_case(&lc, calls, &n);
  /* a resumed upload: the server confirmed 512 KiB before this writer began */
  static const step resumed[] = {
      {"query", NULL, 512 * KiB, false, 0, 0, 0}, /* a resumed writer asks first */
      {"put", "http.503", 0, false, 0, 0, 0},
      {"query", NULL, 256 * KiB, false, 0, 0, 0},
  };
  lc = (lie_case){"status query goes below the resume offset", resumed, 3, 512 * KiB + small_size(),
                  512 * KiB, false, RW_E_SESSION_CONFLICT, "went backwards", 1, 512 * KiB, 0};
  run_case(&lc, calls, &n);
  CHECK(n == 3 && calls[1].final && calls[1].off == 512 * KiB);
}

static void test_persisted_past_sent(void) {
  static const step range[] = {{"put", NULL, 768 * KiB, false, 0, 0, 0}};
  lie_case lc = {"308 Range past the bytes sent", range, 1, three_chunks(), 0, false, RW_E_SESSION_CONFLICT,
                 "were sent", 0, 0, 0};
  call calls[32];
  size_t n;
  run_case(&lc, calls, &n);
  static const step query[] = {
      {"put", "net.reset", 0, false, 0, 0, 0},
      {"query", NULL, 512 * KiB + 1, false, 0, 0, 0},
  };
  lc = (lie_case){"status query past the bytes sent", query, 2, three_chunks(), 0, false,
                  RW_E_SESSION_CONFLICT, "were sent", 1, 0, 0};
  run_case(&lc, calls, &n);
  /* on the final chunk: more than the object's size */
  static const step final[] = {{"put", NULL, PUT_END, false, 0, 0, 0},
                               {"put", NULL, PUT_END, false, 0, 0, 0},
                               {"put", "net.eof", 0, false, 0, 0, 0},
                               {"query", NULL, 2048 * KiB, false, 0, 0, 0}};
  lc = (lie_case){"status query past the object's end", final, 4, three_chunks(), 0, false,
                  RW_E_SESSION_CONFLICT, "were sent", 1, 1024 * KiB, 2};
  run_case(&lc, calls, &n);
}

/* A final reply must carry the checksum we sent (issue 8 #7): an object
 * without it is gcs.protocol, never a success, at once (a usable answer we
 * judged, not a lost one: no status query follows). */
static void test_final_checksum_missing(void) {
  static const step crc[] = {
      {"put", NULL, PUT_END, true, TOTAL, SUM_NONE, SUM_NONE},
  };
  lie_case lc = {"final object without crc32c (checksum = crc32c)", crc, 1, small_size(), 0, false,
                 RW_E_PROTOCOL, "no crc32c", 0, 0, 0};
  call calls[32];
  size_t n;
  run_case(&lc, calls, &n);
  CHECK(n == 1 && calls[0].final);
  static const step md5[] = {
      {"put", NULL, PUT_END, true, TOTAL, SUM_NONE, SUM_NONE},
  };
  md5_only = true;
  lc = (lie_case){"final object without md5Hash (checksum = md5)", md5, 1, small_size(), 0, true,
                  RW_E_PROTOCOL, "no md5Hash", 0, 0, 0};
  run_case(&lc, calls, &n);
  md5_only = false;
  /* checksum = both: the crc32c alone is not enough */
  static const step both[] = {
      {"put", NULL, PUT_END, true, TOTAL, SUM_GOOD, SUM_NONE},
  };
  lc = (lie_case){"final object without md5Hash (checksum = both)", both, 1, small_size(), 0, true,
                  RW_E_PROTOCOL, "no md5Hash", 0, 0, 0};
  run_case(&lc, calls, &n);
}

/* A 308 that persisted nothing of the chunk (issue 8 #8) is retried after a
 * status query and counted as gcs.no_progress, not re-wrapped as
 * net.timeout. */
static void test_no_progress(void) {
  static const step script[] = {
      {"put", NULL, 0, false, 0, 0, 0},
      {"query", NULL, 0, false, 0, 0, 0},
      {"put", NULL, PUT_END, true, TOTAL, SUM_GOOD, SUM_NONE},
  };
  lie_case lc = {"308 with no progress on the final chunk", script, 3, small_size(), 0, false, NULL, NULL,
                 1, 0, 1};
  want_counted = RW_E_NO_PROGRESS;
  call calls[32];
  size_t n;
  run_case(&lc, calls, &n);
  CHECK(n == 3 && calls[0].final && calls[2].final && calls[2].off == 0 && calls[2].len == lc.n);
  /* on a middle chunk: only that chunk is sent again */
  static const step middle[] = {
      {"put", NULL, PUT_END, false, 0, 0, 0},
      {"put", NULL, 512 * KiB, false, 0, 0, 0},
      {"query", NULL, 512 * KiB, false, 0, 0, 0},
      {"put", NULL, PUT_END, false, 0, 0, 0},
      {"put", NULL, PUT_END, true, TOTAL, SUM_GOOD, SUM_NONE},
  };
  lc = (lie_case){"308 with no progress on a middle chunk", middle, 5, three_chunks(), 0, false, NULL, NULL,
                  1, 0, 3};
  run_case(&lc, calls, &n);
  want_counted = NULL;
  CHECK(n == 5 && calls[3].off == 512 * KiB && calls[3].len == 512 * KiB && !calls[3].final);
}

int main(void) {
  rng = ct_seed();
  RUN(test_honest_server);
  RUN(test_final_size_differs);
  RUN(test_final_checksum_differs);
  RUN(test_finalized_early);
  RUN(test_persisted_backwards);
  RUN(test_persisted_past_sent);
  RUN(test_final_checksum_missing);
  RUN(test_no_progress);
  return ct_finish("test_writer_lies");
}
