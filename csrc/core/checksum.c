/* CRC32C through ISA-L, MD5 through OpenSSL EVP, base64 through OpenSSL. */
#include "checksum.h"

#include <isa-l.h>
#include <openssl/evp.h>
#include <string.h>

uint32_t rw_crc32c(uint32_t crc, const void *data, size_t len) {
  const unsigned char *p = data;
  /* crc32_iscsi takes a 32-bit length; feed huge buffers in slices. */
  while (len > 0) {
    size_t n = len > (1u << 30) ? (1u << 30) : len;
    crc = crc32_iscsi((unsigned char *)p, (int)n, crc ^ 0xFFFFFFFFu) ^ 0xFFFFFFFFu;
    p += n;
    len -= n;
  }
  return crc;
}

bool rw_md5_init(rw_md5 *m) {
  EVP_MD_CTX *c = EVP_MD_CTX_new();
  if (!c) {
    m->evp = NULL;
    return false;
  }
  if (EVP_DigestInit_ex(c, EVP_md5(), NULL) != 1) {
    EVP_MD_CTX_free(c);
    m->evp = NULL;
    return false;
  }
  m->evp = c;
  return true;
}

void rw_md5_update(rw_md5 *m, const void *data, size_t len) {
  if (m->evp && len > 0) EVP_DigestUpdate(m->evp, data, len);
}

void rw_md5_final(rw_md5 *m, unsigned char out[16]) {
  unsigned int n = 16;
  memset(out, 0, 16);
  if (!m->evp) return;
  EVP_DigestFinal_ex(m->evp, out, &n);
  rw_md5_free(m);
}

void rw_md5_free(rw_md5 *m) {
  if (!m->evp) return;
  EVP_MD_CTX_free(m->evp);
  m->evp = NULL;
}

void rw_crc32c_base64(uint32_t crc, char out[9]) {
  unsigned char be[4] = {(unsigned char)(crc >> 24), (unsigned char)(crc >> 16),
                         (unsigned char)(crc >> 8), (unsigned char)crc};
  EVP_EncodeBlock((unsigned char *)out, be, 4);
}

void rw_md5_base64(const unsigned char md5[16], char out[25]) {
  EVP_EncodeBlock((unsigned char *)out, md5, 16);
}

bool rw_crc32c_from_base64(const char *s, uint32_t *crc) {
  if (!s || strlen(s) != 8 || strcmp(s + 6, "==") != 0) return false;
  unsigned char raw[8];
  if (EVP_DecodeBlock(raw, (const unsigned char *)s, 8) != 6) return false;
  char back[9];
  uint32_t v = (uint32_t)raw[0] << 24 | (uint32_t)raw[1] << 16 | (uint32_t)raw[2] << 8 | raw[3];
  rw_crc32c_base64(v, back);
  if (strcmp(back, s) != 0) return false; /* rejects non-canonical padding bits */
  *crc = v;
  return true;
}
