/* CRC32C (ISA-L, chainable) and MD5 (OpenSSL EVP), and the base64 forms GCS uses. */
#ifndef RW_CHECKSUM_H
#define RW_CHECKSUM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* crc32c of data continuing from crc (start with 0). "123456789" -> 0xe3069283. */
uint32_t rw_crc32c(uint32_t crc, const void *data, size_t len);

typedef struct rw_md5 {
  void *evp; /* EVP_MD_CTX*, private */
} rw_md5;
bool rw_md5_init(rw_md5 *m);
void rw_md5_update(rw_md5 *m, const void *data, size_t len);
void rw_md5_final(rw_md5 *m, unsigned char out[16]); /* also frees */
void rw_md5_free(rw_md5 *m);                          /* safe after final */

/* GCS form: base64 of the big-endian 4 bytes ("yZRlqg==" style), out >= 9 bytes. */
void rw_crc32c_base64(uint32_t crc, char out[9]);
/* base64 of 16 bytes, out >= 25 bytes. */
void rw_md5_base64(const unsigned char md5[16], char out[25]);
/* Parses the GCS base64 crc32c; false when malformed. */
bool rw_crc32c_from_base64(const char *s, uint32_t *crc);

#endif
