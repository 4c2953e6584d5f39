/* RWP/1 handshake crypto: see auth.h. */
#include "proxy/auth.h"

#include <string.h>

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/kdf.h>
#include <openssl/rand.h>

#define E_CRYPTO RW_E_INTERNAL

rw_error *rwp_hmac(const void *key, size_t key_len, const void *const *parts, const size_t *lens,
                   size_t nparts, uint8_t out[32]) {
  rw_error *err = NULL;
  EVP_MAC *mac = EVP_MAC_fetch(NULL, "HMAC", NULL);
  EVP_MAC_CTX *ctx = mac ? EVP_MAC_CTX_new(mac) : NULL;
  OSSL_PARAM params[] = {OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, "SHA256", 0),
                         OSSL_PARAM_construct_end()};
  size_t olen = 0;
  if (!ctx || !EVP_MAC_init(ctx, key, key_len, params)) goto fail;
  for (size_t i = 0; i < nparts; i++)
    if (lens[i] && !EVP_MAC_update(ctx, parts[i], lens[i])) goto fail;
  if (!EVP_MAC_final(ctx, out, &olen, 32) || olen != 32) goto fail;
  goto done;
fail:
  err = rw_err(E_CRYPTO, "HMAC-SHA256 failed in OpenSSL");
done:
  EVP_MAC_CTX_free(ctx);
  EVP_MAC_free(mac);
  return err;
}

/* One HKDF-SHA256 step: mode is EVP_KDF_HKDF_MODE_EXTRACT_ONLY or _EXPAND_ONLY. */
static rw_error *hkdf(int mode, const void *key, size_t key_len, const void *salt,
                      size_t salt_len, const void *info, size_t info_len, uint8_t *out,
                      size_t out_len) {
  EVP_KDF *kdf = EVP_KDF_fetch(NULL, "HKDF", NULL);
  EVP_KDF_CTX *ctx = kdf ? EVP_KDF_CTX_new(kdf) : NULL;
  OSSL_PARAM p[6], *q = p;
  *q++ = OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST, "SHA256", 0);
  *q++ = OSSL_PARAM_construct_int(OSSL_KDF_PARAM_MODE, &mode);
  *q++ = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_KEY, (void *)key, key_len);
  if (salt_len) *q++ = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_SALT, (void *)salt, salt_len);
  if (info_len) *q++ = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_INFO, (void *)info, info_len);
  *q = OSSL_PARAM_construct_end();
  int ok = ctx && EVP_KDF_derive(ctx, out, out_len, p) > 0;
  EVP_KDF_CTX_free(ctx);
  EVP_KDF_free(kdf);
  return ok ? NULL : rw_err(E_CRYPTO, "HKDF-SHA256 failed in OpenSSL");
}

rw_error *rwp_hkdf_extract(const void *salt, size_t salt_len, const void *ikm, size_t ikm_len,
                           uint8_t prk[32]) {
  return hkdf(EVP_KDF_HKDF_MODE_EXTRACT_ONLY, ikm, ikm_len, salt, salt_len, NULL, 0, prk, 32);
}

rw_error *rwp_hkdf_expand(const uint8_t prk[32], const void *info, size_t info_len, uint8_t *out,
                          size_t out_len) {
  if (out_len == 0 || out_len > 255 * 32)
    return rw_err(RW_E_INVALID, "hkdf expand: out_len %zu must be 1..8160", out_len);
  return hkdf(EVP_KDF_HKDF_MODE_EXPAND_ONLY, prk, 32, NULL, 0, info, info_len, out, out_len);
}

rw_error *rwp_transcript_hash(const void *hello, size_t hello_len, const void *challenge,
                              size_t challenge_len, uint8_t th[32]) {
  EVP_MD_CTX *md = EVP_MD_CTX_new();
  unsigned olen = 0;
  int ok = md && EVP_DigestInit_ex(md, EVP_sha256(), NULL) &&
           EVP_DigestUpdate(md, hello, hello_len) && EVP_DigestUpdate(md, challenge, challenge_len) &&
           EVP_DigestFinal_ex(md, th, &olen) && olen == 32;
  EVP_MD_CTX_free(md);
  return ok ? NULL : rw_err(E_CRYPTO, "SHA-256 of the transcript failed in OpenSSL");
}

static rw_error *proof(const char *label, const void *secret, size_t secret_len,
                       const uint8_t th[32], uint8_t out[32]) {
  if (secret_len < RWP_MIN_SECRET)
    return rw_err(RW_E_INVALID, "secret: %zu bytes, must be at least %d", secret_len,
                  RWP_MIN_SECRET);
  const void *parts[] = {label, th};
  size_t lens[] = {strlen(label), 32};
  return rwp_hmac(secret, secret_len, parts, lens, 2, out);
}

rw_error *rwp_client_proof(const void *secret, size_t secret_len, const uint8_t th[32],
                           uint8_t out[32]) {
  return proof("rwp1 client", secret, secret_len, th, out);
}

rw_error *rwp_server_proof(const void *secret, size_t secret_len, const uint8_t th[32],
                           uint8_t out[32]) {
  return proof("rwp1 server", secret, secret_len, th, out);
}

bool rwp_proof_equal(const uint8_t a[32], const uint8_t b[32]) {
  return CRYPTO_memcmp(a, b, 32) == 0;
}

static void key_info(uint8_t info[16], const char *label, uint64_t client_id) {
  memcpy(info, label, 8);
  for (int i = 0; i < 8; i++) info[8 + i] = (uint8_t)(client_id >> (56 - 8 * i));
}

rw_error *rwp_derive_keys(const void *secret, size_t secret_len,
                          const uint8_t client_nonce[32], const uint8_t server_nonce[32],
                          uint64_t client_id, uint8_t k_c2s[32], uint8_t k_s2c[32]) {
  if (secret_len < RWP_MIN_SECRET)
    return rw_err(RW_E_INVALID, "secret: %zu bytes, must be at least %d", secret_len,
                  RWP_MIN_SECRET);
  uint8_t salt[64], prk[32], info[16];
  memcpy(salt, client_nonce, 32);
  memcpy(salt + 32, server_nonce, 32);
  rw_error *err = rwp_hkdf_extract(salt, sizeof salt, secret, secret_len, prk);
  if (!err) key_info(info, "rwp1 c2s", client_id), err = rwp_hkdf_expand(prk, info, 16, k_c2s, 32);
  if (!err) key_info(info, "rwp1 s2c", client_id), err = rwp_hkdf_expand(prk, info, 16, k_s2c, 32);
  OPENSSL_cleanse(prk, sizeof prk);
  if (err) {
    OPENSSL_cleanse(k_c2s, 32);
    OPENSSL_cleanse(k_s2c, 32);
  }
  return err;
}

rw_error *rwp_random(void *buf, size_t len) {
  if (len > (size_t)INT32_MAX) return rw_err(RW_E_INVALID, "rwp_random: len %zu too big", len);
  return RAND_bytes(buf, (int)len) == 1 ? NULL : rw_err(E_CRYPTO, "RAND_bytes failed");
}

void rwp_wipe(void *p, size_t len) { OPENSSL_cleanse(p, len); }
