/* Checksums, base64, ids and Content-Range parsing for the fake GCS. */
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "testbed/fg_internal.h"

bool fg_digest_init(fg_digest *d, bool md5) {
  d->crc = 0;
  d->md5 = NULL;
  if (!md5) return true;
  EVP_MD_CTX *c = EVP_MD_CTX_new();
  if (!c || !EVP_DigestInit_ex(c, EVP_md5(), NULL)) {
    EVP_MD_CTX_free(c);
    return false;
  }
  d->md5 = c;
  return true;
}

void fg_digest_update(fg_digest *d, const void *p, size_t n) {
  d->crc = rw_crc32c(d->crc, p, n);
  if (d->md5 && n > 0) EVP_DigestUpdate(d->md5, p, n);
}

bool fg_digest_copy(fg_digest *dst, const fg_digest *src) {
  dst->crc = src->crc;
  if (!src->md5) return true;
  if (!dst->md5) dst->md5 = EVP_MD_CTX_new();
  return dst->md5 && EVP_MD_CTX_copy_ex(dst->md5, src->md5);
}

void fg_digest_finish(fg_digest *d, unsigned char md5[16]) {
  if (!d->md5) return;
  unsigned int len = 16;
  EVP_DigestFinal_ex(d->md5, md5, &len);
  EVP_MD_CTX_free(d->md5);
  d->md5 = NULL;
}

void fg_digest_free(fg_digest *d) {
  EVP_MD_CTX_free(d->md5);
  d->md5 = NULL;
}

void fg_random_hex(char *out, size_t nbytes) {
  unsigned char buf[64];
  if (nbytes > sizeof buf) nbytes = sizeof buf;
  int fd = open("/dev/urandom", O_RDONLY | O_CLOEXEC);
  ssize_t got = fd >= 0 ? read(fd, buf, nbytes) : -1;
  if (fd >= 0) close(fd);
  if (got != (ssize_t)nbytes)
    for (size_t i = 0; i < nbytes; i++) buf[i] = (unsigned char)rand();
  for (size_t i = 0; i < nbytes; i++) sprintf(out + 2 * i, "%02x", buf[i]);
}

char *fg_strdup(const char *s) {
  return s ? strdup(s) : NULL;
}

char *fg_url_encode(const char *s) {
  char *out = malloc(strlen(s) * 3 + 1), *o = out;
  if (!out) return NULL;
  for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
    if (isalnum(*p) || strchr("-_.~", *p)) *o++ = (char)*p;
    else o += sprintf(o, "%%%02X", *p);
  }
  *o = 0;
  return out;
}

/* Digits only, no sign, no overflow. */
bool fg_parse_u64(const char *s, uint64_t *v) {
  if (!s || !isdigit((unsigned char)*s)) return false;
  uint64_t x = 0;
  for (; isdigit((unsigned char)*s); s++) {
    unsigned d = (unsigned)(*s - '0');
    if (x > (UINT64_MAX - d) / 10) return false;
    x = x * 10 + d;
  }
  if (*s) return false;
  *v = x;
  return true;
}

bool fg_parse_i64(const char *s, int64_t *v) {
  uint64_t u;
  bool neg = s && *s == '-';
  if (!fg_parse_u64(neg ? s + 1 : s, &u) || u > (uint64_t)INT64_MAX) return false;
  *v = neg ? -(int64_t)u : (int64_t)u;
  return true;
}

/* Reads digits up to stop; advances *p past them. */
static bool take_u64(const char **p, char stop, uint64_t *v) {
  char buf[24];
  size_t n = 0;
  while (**p && **p != stop && n < sizeof buf - 1) buf[n++] = *(*p)++;
  if (**p != stop) return false;
  buf[n] = 0;
  return fg_parse_u64(buf, v);
}

bool fg_parse_content_range(const char *s, fg_range *r) {
  memset(r, 0, sizeof *r);
  if (!s || strncmp(s, "bytes ", 6) != 0) return false;
  const char *p = s + 6;
  /* The Node client says "bytes 0--1/0" for an empty upload; GCS takes it as
   * "bytes * /0". */
  if (strncmp(p, "0--1/", 5) == 0) p += 4, r->has_bytes = false;
  else if (*p == '*') {
    p++;
    if (*p != '/') return false;
  } else {
    if (!take_u64(&p, '-', &r->first)) return false;
    p++;
    if (!take_u64(&p, '/', &r->last) || r->last < r->first) return false;
    if (r->last >= (uint64_t)INT64_MAX) return false; /* offsets are below 2^63 */
    r->has_bytes = true;
  }
  p++; /* '/' */
  if (strcmp(p, "*") == 0) {
    r->total = -1;
    return true;
  }
  uint64_t t;
  if (!fg_parse_u64(p, &t) || t > (uint64_t)INT64_MAX) return false;
  if (r->has_bytes && t < r->last + 1) return false;
  r->total = (int64_t)t;
  return true;
}
