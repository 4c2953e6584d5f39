/* Token sources behind a credential (auth.h): key files, the JWT bearer and
 * refresh-token grants, the metadata server, and the ADC chain. Private to
 * net/auth.c. A source is written by one thread (its creator, or the one
 * fetcher that resolves the chain) and read-only after that. */
#ifndef RW_AUTH_SRC_H
#define RW_AUTH_SRC_H

#include <stddef.h>

#include "core/context.h"
#include "core/error.h"

typedef enum {
  RW_SRC_NONE = 0,
  RW_SRC_SERVICE_ACCOUNT,
  RW_SRC_AUTHORIZED_USER,
  RW_SRC_METADATA
} rw_auth_src_type;

typedef struct rw_auth_src {
  rw_auth_src_type type;
  char *path;                                  /* the key file */
  char *email, *key_pem, *key_id, *token_uri;  /* service account */
  char *client_id, *client_secret, *refresh_token; /* authorized user (token_uri too) */
  char *meta_host;                             /* metadata: "host[:port]" */
  char *ca_file;                               /* NULL: system CAs */
  double total_wait, probe_timeout;
  char desc[512];
} rw_auth_src;

#define RW_DEFAULT_TOKEN_URI "https://oauth2.googleapis.com/token"
#define RW_DEFAULT_METADATA_HOST "169.254.169.254"
#define RW_STORAGE_SCOPE "https://www.googleapis.com/auth/devstorage.read_write"

/* Reads a JSON key file (what names where the path came from, e.g.
 * "GOOGLE_APPLICATION_CREDENTIALS"). Errors name the file and the rule. */
rw_error *rw_auth_src_load_file(rw_auth_src *s, const char *path, const char *what);
/* The metadata server at $GCE_METADATA_HOST or 169.254.169.254. */
rw_error *rw_auth_src_metadata(rw_auth_src *s);
/* The ADC chain; auth.no_credentials lists what it tried. */
rw_error *rw_auth_src_resolve_default(rw_auth_src *s, rw_ctx *ctx);
/* One token (with retries and backoff within total_wait). */
rw_error *rw_auth_src_fetch(rw_auth_src *s, rw_ctx *ctx, char *tok, size_t n, double *expires_in);
const char *rw_auth_src_describe(const rw_auth_src *s);
void rw_auth_src_clear(rw_auth_src *s); /* frees the strings, wipes secrets */

/* A JWT for the service account (exposed for tests): header.claims.signature,
 * RS256. Returns malloc'd text or NULL with *err set. */
char *rw_auth_jwt(const rw_auth_src *s, double now, rw_error **err);
/* base64url without padding (malloc'd, NULL when out of memory). */
char *rw_auth_b64url(const unsigned char *p, size_t n);

#endif
