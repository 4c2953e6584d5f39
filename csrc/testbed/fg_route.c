/* Routing of requests to handlers, fault taking, and /retry_test. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testbed/fg_internal.h"

static bool starts_with(const char *s, const char *prefix) {
  return strncmp(s, prefix, strlen(prefix)) == 0;
}

static bool is(const fg_req *r, const char *method) {
  return strcmp(r->method, method) == 0;
}

bool fg_take_fault(rw_fakegcs *s, fg_req *r, const char *method, enum MHD_Result *res) {
  const char *id = fg_header(r, "x-retry-test-id");
  r->fault_method = method;
  memset(&r->fault, 0, sizeof r->fault);
  if (id && *id) {
    r->retry_id = strdup(id);
    if (!fg_retry_test_next(&s->faults, id, method, &r->fault)) {
      *res = fg_reply_error(s, r, 400, "unknown retry test id '%s'", id);
      return true;
    }
  } else if (strcmp(method, "storage.objects.insert") == 0) {
    fg_faults_draw(&s->faults, &r->fault);
  }
  if (r->fault.kind == FG_F_RETURN) {
    *res = fg_reply_error(s, r, r->fault.status, "injected fault: return-%d", r->fault.status);
    return true;
  }
  if (r->fault.kind == FG_F_RESET) {
    *res = fg_cut(s, r);
    return true;
  }
  return false;
}

static enum MHD_Result route_upload(rw_fakegcs *s, fg_req *r) {
  const char *type = fg_arg(r, "uploadType");
  const char *upload_id = fg_arg(r, "upload_id");
  const char *method = is(r, "DELETE") ? "storage.objects.delete" : "storage.objects.insert";
  enum MHD_Result res = MHD_YES;
  if (upload_id && is(r, "PUT")) r->handler = fg_h_upload_put;
  else if (upload_id && is(r, "POST")) r->handler = fg_h_upload_put;
  else if (upload_id && is(r, "DELETE")) r->handler = fg_h_upload_delete;
  else if (!is(r, "POST"))
    return fg_reply_error(s, r, 405, "method %s not allowed on an upload URL", r->method);
  else if (!type) return fg_reply_error(s, r, 400, "missing uploadType");
  else if (strcmp(type, "resumable") == 0) r->handler = fg_h_upload_start;
  else if (strcmp(type, "media") == 0) r->handler = fg_h_upload_media;
  else if (strcmp(type, "multipart") == 0) r->handler = fg_h_upload_multipart;
  else return fg_reply_error(s, r, 400, "unknown uploadType '%s'", type);
  if (fg_take_fault(s, r, method, &res) && !r->deferred) r->handler = NULL;
  return res;
}

enum MHD_Result fg_route(rw_fakegcs *s, fg_req *r) {
  const char *p = r->path;
  enum MHD_Result auth_res;
  if (fg_auth_route(s, r, &auth_res)) return auth_res;
  if (starts_with(p, "/retry_test")) {
    r->handler = fg_h_retry_test;
    return MHD_YES;
  }
  if (starts_with(p, "/upload/storage/v1/b/")) return route_upload(s, r);
  if (starts_with(p, "/storage/v1/b") || starts_with(p, "/download/storage/v1/b/")) {
    r->handler = fg_h_buckets;
    return MHD_YES;
  }
  return fg_reply_error(s, r, 404, "no such endpoint: %s %s", r->method, p);
}

/* ---- /retry_test ---- */

static enum MHD_Result retry_test_create(rw_fakegcs *s, fg_req *r) {
  json_error_t jerr;
  char why[160] = "";
  json_t *body = r->body ? json_loadb(r->body, r->body_len, 0, &jerr) : NULL;
  if (!body) return fg_reply_error(s, r, 400, "retry_test: body is not JSON");
  json_t *j = fg_retry_test_create(&s->faults, body, why, sizeof why);
  json_decref(body);
  if (!j) return fg_reply_error(s, r, 400, "retry_test: %s", why);
  return fg_reply_json(s, r, 200, j);
}

enum MHD_Result fg_h_retry_test(rw_fakegcs *s, fg_req *r, const char *data, size_t *n) {
  if (!fg_collect(r, data, n) || !r->headers_seen) return MHD_YES;
  if (r->body_too_big) return fg_reply_error(s, r, 413, "body too large");
  const char *p = r->path;
  if (strcmp(p, "/retry_test") == 0 && is(r, "POST")) return retry_test_create(s, r);
  if ((strcmp(p, "/retry_tests") == 0 || strcmp(p, "/retry_test") == 0) && is(r, "GET"))
    return fg_reply_json(s, r, 200, fg_retry_test_list(&s->faults));
  if (!starts_with(p, "/retry_test/") || !p[12])
    return fg_reply_error(s, r, 404, "no such endpoint: %s %s", r->method, p);
  const char *id = p + 12;
  if (is(r, "GET")) {
    json_t *j = fg_retry_test_json(&s->faults, id);
    return j ? fg_reply_json(s, r, 200, j) : fg_reply_error(s, r, 404, "no retry test %s", id);
  }
  if (is(r, "DELETE"))
    return fg_retry_test_delete(&s->faults, id) ? fg_reply_empty(s, r, 200)
                                                : fg_reply_error(s, r, 404, "no retry test %s", id);
  return fg_reply_error(s, r, 405, "method %s not allowed", r->method);
}

/* ---- crc32c of a concatenation (zlib's crc32_combine, Castagnoli) ---- */

static uint32_t gf2_times(const uint32_t *mat, uint32_t vec) {
  uint32_t sum = 0;
  for (; vec; vec >>= 1, mat++)
    if (vec & 1) sum ^= *mat;
  return sum;
}

static void gf2_square(uint32_t *sq, const uint32_t *mat) {
  for (int n = 0; n < 32; n++) sq[n] = gf2_times(mat, mat[n]);
}

uint32_t fg_crc32c_combine(uint32_t crc1, uint32_t crc2, uint64_t len2) {
  uint32_t even[32], odd[32];
  if (len2 == 0) return crc1;
  odd[0] = 0x82F63B78u;
  uint32_t row = 1;
  for (int n = 1; n < 32; n++, row <<= 1) odd[n] = row;
  gf2_square(even, odd);
  gf2_square(odd, even);
  do {
    gf2_square(even, odd);
    if (len2 & 1) crc1 = gf2_times(even, crc1);
    len2 >>= 1;
    if (!len2) break;
    gf2_square(odd, even);
    if (len2 & 1) crc1 = gf2_times(odd, crc1);
    len2 >>= 1;
  } while (len2);
  return crc1 ^ crc2;
}
