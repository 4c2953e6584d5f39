/* Blobs (memory, discard, files), buckets, objects and upload sessions. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "testbed/fg_internal.h"

/* Memory blobs start on the heap; past 2 MiB they move to an anonymous
 * mapping with transparent huge pages that grows with mremap (no copies, and
 * spare capacity is only address space: resident memory stays the stored
 * bytes plus less than one 2 MiB page). */
#define SMALL_BLOB ((uint64_t)2 << 20)

struct fg_blob {
  rw_fakegcs_store_kind kind;
  unsigned char *buf;
  uint64_t cap, len;
  bool mapped;
  int fd;
  char *path;
};

fg_blob *fg_blob_new(rw_fakegcs_store_kind kind, const char *dir, uint64_t reserve) {
  fg_blob *b = calloc(1, sizeof *b);
  if (!b) return NULL;
  b->kind = kind;
  b->fd = -1;
  if (kind == RW_FAKEGCS_MEMORY && reserve > 0 && reserve < ((uint64_t)1 << 40) &&
      !fg_blob_reserve(b, reserve)) {
    free(b);
    return NULL;
  }
  if (kind == RW_FAKEGCS_DIR) {
    char hex[33];
    fg_random_hex(hex, 16);
    if (asprintf(&b->path, "%s/blob-%s", dir, hex) < 0) b->path = NULL;
    b->fd = b->path ? open(b->path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0644) : -1;
    if (b->fd < 0) {
      free(b->path);
      free(b);
      return NULL;
    }
  }
  return b;
}

static bool heap_reserve(fg_blob *b, uint64_t need) {
  uint64_t cap = b->cap ? b->cap : 65536;
  while (cap < need) cap *= 2;
  unsigned char *p = realloc(b->buf, cap);
  if (!p) return false;
  b->buf = p;
  b->cap = cap;
  return true;
}

static bool map_reserve(fg_blob *b, uint64_t need) {
  uint64_t cap = need * 2 < ((uint64_t)64 << 20) ? ((uint64_t)64 << 20) : need * 2;
  cap = (cap + SMALL_BLOB - 1) / SMALL_BLOB * SMALL_BLOB;
  void *p;
  if (b->mapped) {
    p = mremap(b->buf, b->cap, cap, MREMAP_MAYMOVE);
  } else {
    p = mmap(NULL, cap, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p != MAP_FAILED && b->len) memcpy(p, b->buf, b->len);
  }
  if (p == MAP_FAILED) return false;
  madvise(p, cap, MADV_HUGEPAGE);
  if (!b->mapped) free(b->buf);
  b->buf = p;
  b->cap = cap;
  b->mapped = true;
  return true;
}

bool fg_blob_reserve(fg_blob *b, uint64_t need) {
  if (b->kind != RW_FAKEGCS_MEMORY || need <= b->cap) return true;
  if (need <= SMALL_BLOB && !b->mapped) return heap_reserve(b, need);
  return map_reserve(b, need);
}

bool fg_blob_write(fg_blob *b, uint64_t off, const void *p, size_t n) {
  if (b->kind == RW_FAKEGCS_MEMORY) {
    if (!fg_blob_reserve(b, off + n)) return false;
    memcpy(b->buf + off, p, n);
  } else if (b->kind == RW_FAKEGCS_DIR) {
    const char *c = p;
    while (n > 0) {
      ssize_t w = pwrite(b->fd, c, n, (off_t)off);
      if (w < 0 && errno == EINTR) continue;
      if (w <= 0) return false;
      c += w, off += (uint64_t)w, n -= (size_t)w;
    }
  }
  if (off + n > b->len) b->len = off + n;
  return true;
}

void fg_blob_truncate(fg_blob *b, uint64_t len) {
  if (len >= b->len) return;
  b->len = len;
  if (b->kind == RW_FAKEGCS_DIR && ftruncate(b->fd, (off_t)len) != 0) {
    /* the length we report is what counts */
  }
}

void fg_blob_trim(fg_blob *b) {
  if (b->kind != RW_FAKEGCS_MEMORY || b->mapped || b->cap == b->len || b->len == 0) return;
  unsigned char *p = realloc(b->buf, b->len);
  if (p) b->buf = p, b->cap = b->len;
}

size_t fg_blob_read(fg_blob *b, uint64_t off, void *p, size_t n) {
  if (off >= b->len) return 0;
  if (n > b->len - off) n = (size_t)(b->len - off);
  if (b->kind == RW_FAKEGCS_MEMORY) {
    memcpy(p, b->buf + off, n);
    return n;
  }
  if (b->kind == RW_FAKEGCS_DIR) {
    ssize_t got = pread(b->fd, p, n, (off_t)off);
    return got > 0 ? (size_t)got : 0;
  }
  return 0;
}

bool fg_blob_has_bytes(const fg_blob *b) {
  return b && b->kind != RW_FAKEGCS_DISCARD;
}

void fg_blob_free(fg_blob *b) {
  if (!b) return;
  if (b->fd >= 0) close(b->fd);
  if (b->path) unlink(b->path);
  free(b->path);
  if (b->mapped) munmap(b->buf, b->cap);
  else free(b->buf);
  free(b);
}

/* ---- store ---- */

void fg_now_rfc3339(char out[40]) {
  struct timespec ts;
  struct tm tm;
  clock_gettime(CLOCK_REALTIME, &ts);
  gmtime_r(&ts.tv_sec, &tm);
  size_t n = strftime(out, 40, "%Y-%m-%dT%H:%M:%S", &tm);
  snprintf(out + n, 40 - n, ".%03ldZ", ts.tv_nsec / 1000000);
}

bool fg_store_init(fg_store *st, const rw_fakegcs_config *cfg) {
  memset(st, 0, sizeof *st);
  st->kind = cfg->store;
  st->md5 = cfg->md5 == RW_FAKEGCS_MD5_DEFAULT ? cfg->store != RW_FAKEGCS_DISCARD
                                               : cfg->md5 == RW_FAKEGCS_MD5_ON;
  st->next_generation = 1700000000000000;
  if (cfg->store == RW_FAKEGCS_DIR) {
    if (!cfg->dir) return false;
    if (mkdir(cfg->dir, 0755) != 0 && errno != EEXIST) return false;
    st->dir = strdup(cfg->dir);
    if (!st->dir) return false;
  }
  pthread_mutex_init(&st->mu, NULL);
  return true;
}

static void object_free(fg_object *o) {
  free(o->bucket);
  free(o->name);
  free(o->content_type);
  json_decref(o->metadata);
  fg_blob_free(o->blob);
  free(o);
}

static void session_free(fg_session *ss) {
  pthread_mutex_destroy(&ss->mu);
  free(ss->bucket);
  free(ss->name);
  free(ss->content_type);
  free(ss->want_crc_b64);
  free(ss->want_md5_b64);
  free(ss->final_json);
  json_decref(ss->metadata);
  fg_digest_free(&ss->digest);
  fg_blob_free(ss->blob);
  free(ss);
}

void fg_store_destroy(fg_store *st) {
  for (fg_bucket *b = st->buckets, *nb; b; b = nb) {
    nb = b->next;
    free(b->name);
    free(b);
  }
  for (fg_object *o = st->objects, *no; o; o = no) {
    no = o->next;
    object_free(o);
  }
  for (fg_session *ss = st->sessions, *ns; ss; ss = ns) {
    ns = ss->next;
    session_free(ss);
  }
  free(st->dir);
  pthread_mutex_destroy(&st->mu);
}

fg_bucket *fg_bucket_find(fg_store *st, const char *name) {
  for (fg_bucket *b = st->buckets; b; b = b->next)
    if (strcmp(b->name, name) == 0) return b;
  return NULL;
}

fg_bucket *fg_bucket_add(fg_store *st, const char *name) {
  fg_bucket *b = calloc(1, sizeof *b);
  if (!b || !(b->name = strdup(name))) {
    free(b);
    return NULL;
  }
  fg_now_rfc3339(b->created);
  b->next = st->buckets;
  st->buckets = b;
  return b;
}

fg_object *fg_object_find(fg_store *st, const char *bucket, const char *name) {
  for (fg_object *o = st->objects; o; o = o->next)
    if (strcmp(o->bucket, bucket) == 0 && strcmp(o->name, name) == 0) return o;
  return NULL;
}

/* Unlinks o; frees it unless a download still holds it. */
static void object_unlink(fg_store *st, fg_object *o) {
  for (fg_object **pp = &st->objects; *pp; pp = &(*pp)->next) {
    if (*pp == o) {
      *pp = o->next;
      o->next = NULL;
      fg_object_release(st, o);
      return;
    }
  }
}

void fg_object_insert(fg_store *st, fg_object *o) {
  fg_object *old = fg_object_find(st, o->bucket, o->name);
  if (old) object_unlink(st, old);
  o->refs = 1;
  o->next = st->objects;
  st->objects = o;
}

bool fg_object_remove(fg_store *st, const char *bucket, const char *name) {
  fg_object *o = fg_object_find(st, bucket, name);
  if (!o) return false;
  object_unlink(st, o);
  return true;
}

void fg_object_release(fg_store *st, fg_object *o) {
  if (--o->refs == 0) object_free(o);
}

fg_session *fg_session_find(fg_store *st, const char *id) {
  for (fg_session *ss = st->sessions; ss; ss = ss->next)
    if (strcmp(ss->id, id) == 0) return ss;
  return NULL;
}

fg_session *fg_session_new(fg_store *st) {
  fg_session *ss = calloc(1, sizeof *ss);
  if (!ss) return NULL;
  if (!fg_digest_init(&ss->digest, st->md5)) {
    free(ss);
    return NULL;
  }
  pthread_mutex_init(&ss->mu, NULL);
  fg_random_hex(ss->id, 16);
  ss->declared_total = -1;
  ss->state = FG_SESSION_ACTIVE;
  ss->next = st->sessions;
  st->sessions = ss;
  return ss;
}

bool fg_precond_ok(fg_store *st, const fg_precond *p, const char *bucket, const char *name) {
  fg_object *o = fg_object_find(st, bucket, name);
  int64_t gen = o ? o->generation : 0;
  if (p->has_gen && p->gen != gen) return false;
  if (p->has_not_gen && p->not_gen == gen) return false;
  if ((p->has_meta || p->has_not_meta) && !o) return false;
  if (p->has_meta && p->meta != o->metageneration) return false;
  if (p->has_not_meta && p->not_meta == o->metageneration) return false;
  return true;
}

static json_t *int_string(int64_t v) {
  char buf[32];
  snprintf(buf, sizeof buf, "%lld", (long long)v);
  return json_string(buf);
}

json_t *fg_object_json(const fg_store *st, const fg_object *o) {
  char crc[9], md5[25], id[64];
  json_t *j = json_object();
  json_object_set_new(j, "kind", json_string("storage#object"));
  json_object_set_new(j, "bucket", json_string(o->bucket));
  json_object_set_new(j, "name", json_string(o->name));
  snprintf(id, sizeof id, "%lld", (long long)o->generation);
  json_object_set_new(j, "generation", json_string(id));
  json_object_set_new(j, "metageneration", int_string(o->metageneration));
  json_object_set_new(j, "contentType", json_string(o->content_type));
  json_object_set_new(j, "size", int_string((int64_t)o->size));
  rw_crc32c_base64(o->crc, crc);
  json_object_set_new(j, "crc32c", json_string(crc));
  if (o->has_md5) {
    rw_md5_base64(o->md5, md5);
    json_object_set_new(j, "md5Hash", json_string(md5));
  }
  if (o->component_count > 0)
    json_object_set_new(j, "componentCount", json_integer(o->component_count));
  if (o->metadata) json_object_set(j, "metadata", o->metadata);
  json_object_set_new(j, "timeCreated", json_string(o->created));
  json_object_set_new(j, "updated", json_string(o->created));
  json_object_set_new(j, "storageClass", json_string("STANDARD"));
  json_t *idj = json_sprintf("%s/%s/%lld", o->bucket, o->name, (long long)o->generation);
  json_object_set_new(j, "id", idj);
  json_object_set_new(j, "etag", json_string("CAE="));
  char *enc = fg_url_encode(o->name);
  if (enc) {
    json_object_set_new(j, "selfLink", json_sprintf("%s/storage/v1/b/%s/o/%s", st->base_url,
                                                    o->bucket, enc));
    json_object_set_new(j, "mediaLink",
                        json_sprintf("%s/download/storage/v1/b/%s/o/%s?generation=%lld&alt=media",
                                     st->base_url, o->bucket, enc, (long long)o->generation));
  }
  free(enc);
  return j;
}

json_t *fg_bucket_json(const fg_bucket *b) {
  json_t *j = json_object();
  json_object_set_new(j, "kind", json_string("storage#bucket"));
  json_object_set_new(j, "id", json_string(b->name));
  json_object_set_new(j, "name", json_string(b->name));
  json_object_set_new(j, "location", json_string("US"));
  json_object_set_new(j, "storageClass", json_string("STANDARD"));
  json_object_set_new(j, "timeCreated", json_string(b->created));
  json_object_set_new(j, "updated", json_string(b->created));
  json_object_set_new(j, "metageneration", json_string("1"));
  json_object_set_new(j, "etag", json_string("CAE="));
  return j;
}
