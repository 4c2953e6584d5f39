/* RWP/1 handshake crypto (docs/PROTOCOL.md section 4.4): the transcript hash,
 * the client and server proofs, the per-direction keys, and the HMAC and HKDF
 * plumbing under them. Pure functions over caller buffers (OpenSSL 3 EVP);
 * any thread. Secrets and derived keys are never logged nor put in an error;
 * intermediate secrets (the PRK) are wiped with OPENSSL_cleanse before return.
 * The caller wipes what it owns (rwp_wipe). */
#ifndef RW_PROXY_AUTH_H
#define RW_PROXY_AUTH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/error.h"

#define RWP_KEY_LEN 32
#define RWP_NONCE_LEN 32
#define RWP_PROOF_LEN 32
#define RWP_MIN_SECRET 32 /* section 4.5: 32 or more bytes */

/* HMAC-SHA256(key, parts[0] || parts[1] || ...) into out[32]. */
rw_error *rwp_hmac(const void *key, size_t key_len, const void *const *parts, const size_t *lens,
                   size_t nparts, uint8_t out[32]);
/* RFC 5869 with SHA-256: Extract into prk[32]; Expand prk into out[out_len] (<= 255*32). */
rw_error *rwp_hkdf_extract(const void *salt, size_t salt_len, const void *ikm, size_t ikm_len,
                           uint8_t prk[32]);
rw_error *rwp_hkdf_expand(const uint8_t prk[32], const void *info, size_t info_len, uint8_t *out,
                          size_t out_len);

/* SHA256(T), T = the HELLO frame's header and op fields then the CHALLENGE's,
 * exactly as sent (rwp_encoded.head / rwp_frame.raw). */
rw_error *rwp_transcript_hash(const void *hello, size_t hello_len, const void *challenge,
                              size_t challenge_len, uint8_t th[32]);
/* HMAC(secret, "rwp1 client" || th) and HMAC(secret, "rwp1 server" || th). */
rw_error *rwp_client_proof(const void *secret, size_t secret_len, const uint8_t th[32],
                           uint8_t proof[32]);
rw_error *rwp_server_proof(const void *secret, size_t secret_len, const uint8_t th[32],
                           uint8_t proof[32]);
/* Constant-time comparison of two proofs (CRYPTO_memcmp). */
bool rwp_proof_equal(const uint8_t a[32], const uint8_t b[32]);
/* prk = HKDF-Extract(client_nonce || server_nonce, secret);
 * k_c2s = HKDF-Expand(prk, "rwp1 c2s" || u64(client_id), 32), k_s2c likewise. */
rw_error *rwp_derive_keys(const void *secret, size_t secret_len,
                          const uint8_t client_nonce[32], const uint8_t server_nonce[32],
                          uint64_t client_id, uint8_t k_c2s[32], uint8_t k_s2c[32]);
/* Fresh random bytes from the CSPRNG (nonces, client ids). */
rw_error *rwp_random(void *buf, size_t len);
/* OPENSSL_cleanse. */
void rwp_wipe(void *p, size_t len);

#endif
