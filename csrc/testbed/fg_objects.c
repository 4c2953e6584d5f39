/* Buckets and objects: get, list, delete, download with Range, compose. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testbed/fg_internal.h"

static bool is(const fg_req *r, const char *method) {
  return strcmp(r->method, method) == 0;
}

/* ---- buckets ---- */

static enum MHD_Result bucket_create(rw_fakegcs *s, fg_req *r) {
  json_error_t jerr;
  json_t *body = r->body ? json_loadb(r->body, r->body_len, 0, &jerr) : NULL;
  const char *name = json_string_value(json_object_get(body, "name"));
  if (!name || !*name || strchr(name, '/')) {
    json_decref(body);
    return fg_reply_error(s, r, 400, "bucket name missing or invalid");
  }
  pthread_mutex_lock(&s->store.mu);
  fg_bucket *b = fg_bucket_find(&s->store, name);
  bool existed = b != NULL;
  if (!b) b = fg_bucket_add(&s->store, name);
  json_t *j = b && !existed ? fg_bucket_json(b) : NULL;
  pthread_mutex_unlock(&s->store.mu);
  json_decref(body);
  if (existed) return fg_reply_error(s, r, 409, "bucket already exists");
  return j ? fg_reply_json(s, r, 200, j) : fg_reply_error(s, r, 500, "out of memory");
}

static enum MHD_Result bucket_list(rw_fakegcs *s, fg_req *r) {
  json_t *items = json_array();
  pthread_mutex_lock(&s->store.mu);
  for (fg_bucket *b = s->store.buckets; b; b = b->next)
    json_array_append_new(items, fg_bucket_json(b));
  pthread_mutex_unlock(&s->store.mu);
  return fg_reply_json(s, r, 200, json_pack("{s:s, s:o}", "kind", "storage#buckets", "items", items));
}

static enum MHD_Result bucket_get(rw_fakegcs *s, fg_req *r, const char *name) {
  pthread_mutex_lock(&s->store.mu);
  fg_bucket *b = fg_bucket_find(&s->store, name);
  json_t *j = b ? fg_bucket_json(b) : NULL;
  pthread_mutex_unlock(&s->store.mu);
  return j ? fg_reply_json(s, r, 200, j) : fg_reply_error(s, r, 404, "bucket %s not found", name);
}

/* ---- object listing ---- */

static int by_name(const void *a, const void *b) {
  return strcmp((*(fg_object *const *)a)->name, (*(fg_object *const *)b)->name);
}

/* Adds o to items, or its delimited prefix to prefixes. */
static void list_add(const fg_store *st, json_t *items, json_t *prefixes, fg_object *o, const char *prefix,
                     const char *delim) {
  const char *rest = o->name + strlen(prefix);
  const char *cut = delim && *delim ? strstr(rest, delim) : NULL;
  if (!cut) {
    json_array_append_new(items, fg_object_json(st, o));
    return;
  }
  size_t len = (size_t)(cut - o->name) + strlen(delim);
  json_t *p = json_stringn(o->name, len);
  size_t i;
  json_t *e;
  json_array_foreach(prefixes, i, e) if (json_equal(e, p)) {
    json_decref(p);
    return;
  }
  json_array_append_new(prefixes, p);
}

static enum MHD_Result object_list(rw_fakegcs *s, fg_req *r, const char *bucket) {
  const char *prefix = fg_arg(r, "prefix"), *delim = fg_arg(r, "delimiter");
  const char *token = fg_arg(r, "pageToken"), *max_s = fg_arg(r, "maxResults");
  uint64_t max = 1000;
  if (max_s && (!fg_parse_u64(max_s, &max) || max == 0))
    return fg_reply_error(s, r, 400, "invalid maxResults");
  if (!prefix) prefix = "";
  json_t *items = json_array(), *prefixes = json_array();
  pthread_mutex_lock(&s->store.mu);
  if (!fg_bucket_find(&s->store, bucket)) {
    pthread_mutex_unlock(&s->store.mu);
    json_decref(items);
    json_decref(prefixes);
    return fg_reply_error(s, r, 404, "bucket %s not found", bucket);
  }
  size_t n = 0, cap = 16;
  fg_object **all = malloc(cap * sizeof *all);
  for (fg_object *o = s->store.objects; o && all; o = o->next) {
    if (strcmp(o->bucket, bucket) != 0 || strncmp(o->name, prefix, strlen(prefix)) != 0) continue;
    if (token && strcmp(o->name, token) <= 0) continue;
    if (n == cap) {
      fg_object **p = realloc(all, (cap *= 2) * sizeof *all);
      if (!p) break;
      all = p;
    }
    all[n++] = o;
  }
  if (all) qsort(all, n, sizeof *all, by_name);
  const char *next = NULL;
  for (size_t i = 0; i < n; i++) {
    if (json_array_size(items) + json_array_size(prefixes) >= max) {
      next = all[i - 1]->name;
      break;
    }
    list_add(&s->store, items, prefixes, all[i], prefix, delim);
  }
  json_t *j = json_pack("{s:s, s:o}", "kind", "storage#objects", "items", items);
  if (json_array_size(prefixes)) json_object_set(j, "prefixes", prefixes);
  if (next) json_object_set_new(j, "nextPageToken", json_string(next));
  pthread_mutex_unlock(&s->store.mu);
  json_decref(prefixes);
  free(all);
  return fg_reply_json(s, r, 200, j);
}

/* ---- download ---- */

typedef struct download {
  rw_fakegcs *s;
  fg_object *o;
  uint64_t pos, end, cut_at;
  fg_req *r;          /* lives until the reply is done */
  uint64_t stall_at;  /* stall-for-Ts-after-YK: pause once here */
  double stall_s;
  bool corrupt;       /* return-corrupted-data: flip the first byte served */
} download;

static ssize_t download_read(void *cls, uint64_t pos, char *buf, size_t max) {
  download *d = cls;
  uint64_t at = d->pos + pos;
  if (at >= d->cut_at) return MHD_CONTENT_READER_END_WITH_ERROR;
  if (at >= d->end) return MHD_CONTENT_READER_END_OF_STREAM;
  uint64_t want = d->end - at;
  if (d->cut_at - at < want) want = d->cut_at - at;
  if (want > max) want = max;
  if (d->stall_s > 0 && at >= d->stall_at) {
    fg_stall(d->s, d->r, d->stall_s);
    d->stall_s = 0;
  }
  if (d->stall_s > 0 && d->stall_at - at < want) want = d->stall_at - at;
  size_t got = fg_blob_read(d->o->blob, at, buf, (size_t)want);
  if (got && d->corrupt) {
    buf[0] ^= 0x5a;
    d->corrupt = false;
  }
  return got ? (ssize_t)got : MHD_CONTENT_READER_END_WITH_ERROR;
}

static void download_free(void *cls) {
  download *d = cls;
  pthread_mutex_lock(&d->s->store.mu);
  fg_object_release(&d->s->store, d->o);
  pthread_mutex_unlock(&d->s->store.mu);
  free(d);
}

/* "bytes=a-b", "bytes=a-", "bytes=-n"; false when unsatisfiable/malformed. */
static bool parse_range(const char *h, uint64_t size, uint64_t *a, uint64_t *b) {
  char first[24] = "", last[24] = "";
  if (strncmp(h, "bytes=", 6) != 0) return false;
  const char *dash = strchr(h + 6, '-');
  if (!dash || (size_t)(dash - h - 6) >= sizeof first || strlen(dash + 1) >= sizeof last)
    return false;
  memcpy(first, h + 6, (size_t)(dash - h - 6));
  strcpy(last, dash + 1);
  uint64_t x, y;
  if (!*first) {
    if (!fg_parse_u64(last, &y) || y == 0 || size == 0) return false;
    *a = y > size ? 0 : size - y;
    *b = size - 1;
    return true;
  }
  if (!fg_parse_u64(first, &x) || x >= size) return false;
  if (*last && (!fg_parse_u64(last, &y) || y < x)) return false;
  *a = x;
  *b = *last && y < size - 1 ? y : size - 1;
  return true;
}

static void add_object_headers(struct MHD_Response *resp, const fg_object *o) {
  char crc[9], md5[25], hash[64], num[32];
  rw_crc32c_base64(o->crc, crc);
  if (o->has_md5) {
    rw_md5_base64(o->md5, md5);
    snprintf(hash, sizeof hash, "crc32c=%s,md5=%s", crc, md5);
  } else {
    snprintf(hash, sizeof hash, "crc32c=%s", crc);
  }
  MHD_add_response_header(resp, "x-goog-hash", hash);
  snprintf(num, sizeof num, "%lld", (long long)o->generation);
  MHD_add_response_header(resp, "x-goog-generation", num);
  snprintf(num, sizeof num, "%llu", (unsigned long long)o->size);
  MHD_add_response_header(resp, "x-goog-stored-content-length", num);
  MHD_add_response_header(resp, "x-goog-stored-content-encoding", "identity");
  MHD_add_response_header(resp, "Content-Type", o->content_type);
  MHD_add_response_header(resp, "Accept-Ranges", "bytes");
}

/* Called with st->mu held and a ref on o, which the response takes over. */
static enum MHD_Result object_download(rw_fakegcs *s, fg_req *r, fg_object *o) {
  const char *range = fg_header(r, "Range");
  uint64_t a = 0, b = o->size ? o->size - 1 : 0;
  bool partial = range && *range;
  if (partial && !parse_range(range, o->size, &a, &b)) {
    fg_object_release(&s->store, o);
    pthread_mutex_unlock(&s->store.mu);
    return fg_reply_error(s, r, 416, "requested range not satisfiable");
  }
  pthread_mutex_unlock(&s->store.mu);
  download *d = calloc(1, sizeof *d);
  if (!d) return MHD_NO;
  *d = (download){s, o, a, o->size ? b + 1 : 0, UINT64_MAX, r, 0, 0, false};
  if (r->fault.kind == FG_F_BROKEN) d->cut_at = a + r->fault.after_bytes;
  if (r->fault.kind == FG_F_CORRUPT) d->corrupt = true;
  if (r->fault.kind == FG_F_STALL_AFTER && r->fault.after_bytes == 0) fg_stall(s, r, r->fault.stall_s);
  else if (r->fault.kind == FG_F_STALL_AFTER)
    d->stall_at = a + r->fault.after_bytes, d->stall_s = r->fault.stall_s;
  struct MHD_Response *resp =
      MHD_create_response_from_callback(d->end - a, 256 * 1024, download_read, d, download_free);
  if (!resp) {
    download_free(d);
    return MHD_NO;
  }
  add_object_headers(resp, o);
  if (partial) {
    char cr[80];
    snprintf(cr, sizeof cr, "bytes %llu-%llu/%llu", (unsigned long long)a,
             (unsigned long long)b, (unsigned long long)o->size);
    MHD_add_response_header(resp, "Content-Range", cr);
  }
  return fg_queue(s, r, partial ? 206 : 200, resp);
}

static enum MHD_Result object_get(rw_fakegcs *s, fg_req *r, const char *bucket, const char *name,
                                  bool media) {
  enum MHD_Result res;
  if (fg_take_fault(s, r, "storage.objects.get", &res)) return res;
  pthread_mutex_lock(&s->store.mu);
  fg_object *o = fg_object_find(&s->store, bucket, name);
  if (!o) {
    pthread_mutex_unlock(&s->store.mu);
    return fg_reply_error(s, r, 404, "No such object: %s/%s", bucket, name);
  }
  const char *gen = fg_arg(r, "generation");
  char gen_now[24];
  snprintf(gen_now, sizeof gen_now, "%lld", (long long)o->generation);
  if (gen && strcmp(gen, gen_now) != 0) { /* only the live generation is kept */
    pthread_mutex_unlock(&s->store.mu);
    return fg_reply_error(s, r, 404, "No such object: %s/%s#%s", bucket, name, gen);
  }
  if (!media) {
    /* instructions that act on a download's body wait for a download */
    fg_fault_kind k = r->fault.kind;
    if (r->retry_id && (k == FG_F_BROKEN || k == FG_F_STALL_AFTER || k == FG_F_CORRUPT))
      fg_retry_test_unpop(&s->faults, r->retry_id, r->fault_method, &r->fault);
    r->fault.kind = FG_F_NONE;
    json_t *j = fg_object_json(&s->store, o);
    pthread_mutex_unlock(&s->store.mu);
    return fg_reply_json(s, r, 200, j);
  }
  if (!fg_blob_has_bytes(o->blob)) {
    pthread_mutex_unlock(&s->store.mu);
    return fg_reply_error(s, r, 501, "the discard store keeps no bytes to download");
  }
  o->refs++;
  return object_download(s, r, o);
}

static enum MHD_Result object_delete(rw_fakegcs *s, fg_req *r, const char *bucket,
                                     const char *name) {
  enum MHD_Result res;
  if (fg_take_fault(s, r, "storage.objects.delete", &res)) return res;
  pthread_mutex_lock(&s->store.mu);
  bool found = fg_object_remove(&s->store, bucket, name);
  pthread_mutex_unlock(&s->store.mu);
  if (!found) return fg_reply_error(s, r, 404, "No such object: %s/%s", bucket, name);
  return fg_reply_empty(s, r, 204);
}

/* ---- compose ---- */

static fg_object *compose_new(fg_store *st, const char *bucket, const char *name, json_t *dest) {
  fg_object *o = calloc(1, sizeof *o);
  if (!o) return NULL;
  const char *ct = json_string_value(json_object_get(dest, "contentType"));
  json_t *md = json_object_get(dest, "metadata");
  o->bucket = strdup(bucket);
  o->name = strdup(name);
  o->content_type = strdup(ct ? ct : "application/octet-stream");
  o->metadata = json_is_object(md) ? json_deep_copy(md) : NULL;
  o->blob = fg_blob_new(st->kind, st->dir, 0);
  o->metageneration = 1;
  fg_now_rfc3339(o->created);
  return o;
}

/* Appends src to o; st->mu held. */
static bool compose_append(fg_object *o, fg_object *src) {
  char buf[65536];
  for (uint64_t off = 0; off < src->size && fg_blob_has_bytes(src->blob);) {
    size_t got = fg_blob_read(src->blob, off, buf, sizeof buf);
    if (!got || !fg_blob_write(o->blob, o->size + off, buf, got)) return false;
    off += got;
  }
  if (!fg_blob_has_bytes(src->blob)) fg_blob_truncate(o->blob, 0);
  o->crc = fg_crc32c_combine(o->crc, src->crc, src->size);
  o->size += src->size;
  o->component_count += src->component_count ? src->component_count : 1;
  return true;
}

static enum MHD_Result compose(rw_fakegcs *s, fg_req *r, const char *bucket, const char *name) {
  json_error_t jerr;
  json_t *body = r->body ? json_loadb(r->body, r->body_len, 0, &jerr) : NULL;
  json_t *srcs = json_object_get(body, "sourceObjects");
  if (!json_is_array(srcs) || json_array_size(srcs) == 0 || json_array_size(srcs) > 32) {
    json_decref(body);
    return fg_reply_error(s, r, 400, "compose needs 1 to 32 sourceObjects");
  }
  pthread_mutex_lock(&s->store.mu);
  fg_object *o = compose_new(&s->store, bucket, name, json_object_get(body, "destination"));
  char missing_buf[256];
  const char *missing = NULL;
  size_t i;
  json_t *e;
  json_array_foreach(srcs, i, e) {
    const char *sn = json_string_value(json_object_get(e, "name"));
    fg_object *src = sn ? fg_object_find(&s->store, bucket, sn) : NULL;
    if (!src || !o || !o->blob) {
      snprintf(missing_buf, sizeof missing_buf, "%s", sn ? sn : "(no name)");
      missing = missing_buf;
      break;
    }
    if (!compose_append(o, src)) missing = "(out of memory)";
  }
  json_t *j = NULL;
  if (!missing) {
    o->generation = ++s->store.next_generation;
    fg_object_insert(&s->store, o);
    j = fg_object_json(&s->store, o);
  }
  pthread_mutex_unlock(&s->store.mu);
  json_decref(body);
  if (missing) {
    if (o) {
      o->refs = 1;
      pthread_mutex_lock(&s->store.mu);
      fg_object_release(&s->store, o);
      pthread_mutex_unlock(&s->store.mu);
    }
    return fg_reply_error(s, r, 404, "compose source not found: %s", missing);
  }
  return fg_reply_json(s, r, 200, j);
}

/* ---- dispatch under /storage/v1/b ---- */

static enum MHD_Result on_object(rw_fakegcs *s, fg_req *r, const char *bucket, char *name,
                                 bool download) {
  size_t len = strlen(name);
  if (is(r, "POST") && len > 8 && strcmp(name + len - 8, "/compose") == 0) {
    name[len - 8] = 0;
    return compose(s, r, bucket, name);
  }
  if (!*name) return fg_reply_error(s, r, 400, "missing object name");
  const char *alt = fg_arg(r, "alt");
  if (is(r, "GET")) return object_get(s, r, bucket, name, download || (alt && !strcmp(alt, "media")));
  if (is(r, "DELETE")) return object_delete(s, r, bucket, name);
  return fg_reply_error(s, r, 405, "method %s not allowed on an object", r->method);
}

static enum MHD_Result dispatch(rw_fakegcs *s, fg_req *r, char *p, bool download) {
  if (!*p || strcmp(p, "/") == 0) {
    if (is(r, "GET")) return bucket_list(s, r);
    if (is(r, "POST")) return bucket_create(s, r);
    return fg_reply_error(s, r, 405, "method %s not allowed on buckets", r->method);
  }
  char *bucket = p + 1, *slash = strchr(bucket, '/');
  if (!slash) {
    if (is(r, "GET")) return bucket_get(s, r, bucket);
    return fg_reply_error(s, r, 405, "method %s not allowed on a bucket", r->method);
  }
  *slash = 0;
  char *rest = slash + 1;
  if (strcmp(rest, "o") == 0 || strcmp(rest, "o/") == 0) {
    if (is(r, "GET")) return object_list(s, r, bucket);
    return fg_reply_error(s, r, 405, "method %s not allowed on objects", r->method);
  }
  if (strncmp(rest, "o/", 2) != 0) return fg_reply_error(s, r, 404, "no such endpoint");
  return on_object(s, r, bucket, rest + 2, download);
}

enum MHD_Result fg_h_buckets(rw_fakegcs *s, fg_req *r, const char *data, size_t *n) {
  if (!fg_collect(r, data, n) || !r->headers_seen) return MHD_YES;
  if (r->body_too_big) return fg_reply_error(s, r, 413, "body too large");
  bool download = strncmp(r->path, "/download/", 10) == 0;
  char *p = strdup(r->path + (download ? 22 : 13)); /* after ".../storage/v1/b" */
  if (!p) return MHD_NO;
  enum MHD_Result res = dispatch(s, r, p, download);
  free(p);
  return res;
}
