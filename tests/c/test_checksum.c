/* checksum: known vectors, chaining, base64 forms. */
#include <stdint.h>

#include "core/checksum.h"
#include "ctest.h"

static unsigned rng_state;
static unsigned rnd(void) {
  rng_state = rng_state * 1103515245u + 12345u;
  return (rng_state >> 8) ^ (rng_state << 13);
}

/* Bitwise reference CRC32C (Castagnoli, reflected 0x82F63B78). */
static uint32_t crc32c_ref(uint32_t crc, const unsigned char *p, size_t n) {
  crc = ~crc;
  for (size_t i = 0; i < n; i++) {
    crc ^= p[i];
    for (int k = 0; k < 8; k++) crc = (crc >> 1) ^ (0x82F63B78u & (0u - (crc & 1)));
  }
  return ~crc;
}

static void test_crc_vectors(void) {
  CHECK_EQ_INT(rw_crc32c(0, "123456789", 9), 0xe3069283u);
  CHECK_EQ_INT(rw_crc32c(0, "", 0), 0);
  unsigned char zeros[32] = {0};
  CHECK_EQ_INT(rw_crc32c(0, zeros, 32), 0x8a9136aau); /* RFC 3720 B.4 */
  char b64[9];
  rw_crc32c_base64(rw_crc32c(0, "hello world", 11), b64);
  CHECK(strcmp(b64, "yZRlqg==") == 0);
  uint32_t back = 0;
  CHECK(rw_crc32c_from_base64("yZRlqg==", &back));
  CHECK_EQ_INT(back, rw_crc32c(0, "hello world", 11));
  rw_crc32c_base64(0, b64);
  CHECK(strcmp(b64, "AAAAAA==") == 0);
  CHECK(!rw_crc32c_from_base64("yZRlqg=", &back));
  CHECK(!rw_crc32c_from_base64("yZR!qg==", &back));
  CHECK(!rw_crc32c_from_base64("yZRlqh==", &back)); /* stray bits */
  CHECK(!rw_crc32c_from_base64(NULL, &back));
}

static void test_crc_chaining_random(void) {
  enum { N = 1 << 20 };
  unsigned char *d = malloc(N);
  for (size_t i = 0; i < N; i++) d[i] = (unsigned char)(rnd() >> 7);
  uint32_t one = rw_crc32c(0, d, N);
  CHECK_EQ_INT(one, crc32c_ref(0, d, N));
  for (int round = 0; round < 20; round++) {
    uint32_t c = 0;
    size_t at = 0;
    while (at < N) {
      size_t n = rnd() % 70000;
      if (n > N - at) n = N - at;
      c = rw_crc32c(c, d + at, n);
      at += n;
    }
    CHECK_EQ_INT(c, one);
  }
  for (int round = 0; round < 50; round++) {
    size_t n = rnd() % 300;
    size_t off = rnd() % (N - n);
    CHECK_EQ_INT(rw_crc32c(0, d + off, n), crc32c_ref(0, d + off, n));
  }
  free(d);
}

static void hex(const unsigned char *m, char out[33]) {
  for (int i = 0; i < 16; i++) sprintf(out + 2 * i, "%02x", m[i]);
}

static void test_md5(void) {
  rw_md5 m;
  unsigned char out[16];
  char h[33], b64[25];
  CHECK(rw_md5_init(&m));
  rw_md5_final(&m, out);
  hex(out, h);
  CHECK(strcmp(h, "d41d8cd98f00b204e9800998ecf8427e") == 0);
  rw_md5_free(&m); /* safe after final */
  CHECK(rw_md5_init(&m));
  rw_md5_update(&m, "hello ", 6);
  rw_md5_update(&m, "world", 5);
  rw_md5_final(&m, out);
  rw_md5_base64(out, b64);
  CHECK(strcmp(b64, "XrY7u+Ae7tCTyyK7j1rNww==") == 0);
  /* Chained random pieces equal one shot. */
  enum { N = 200000 };
  unsigned char *d = malloc(N), o1[16], o2[16];
  for (size_t i = 0; i < N; i++) d[i] = (unsigned char)rnd();
  CHECK(rw_md5_init(&m));
  rw_md5_update(&m, d, N);
  rw_md5_final(&m, o1);
  CHECK(rw_md5_init(&m));
  for (size_t at = 0; at < N;) {
    size_t n = rnd() % 5000;
    if (n > N - at) n = N - at;
    rw_md5_update(&m, d + at, n);
    at += n;
  }
  rw_md5_final(&m, o2);
  CHECK(memcmp(o1, o2, 16) == 0);
  CHECK(rw_md5_init(&m));
  rw_md5_free(&m); /* abandon without final: no leak */
  free(d);
}

int main(void) {
  rng_state = ct_seed();
  RUN(test_crc_vectors);
  RUN(test_crc_chaining_random);
  RUN(test_md5);
  return ct_finish("test_checksum");
}
