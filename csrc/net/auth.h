/* Credentials and access tokens for Google APIs (issue 11).
 *
 * A credential (rw_cred) is a source of OAuth2 bearer tokens plus a cache of
 * the current one. Sources:
 *   static      a token given by the caller (never refreshed);
 *   pushed      tokens handed in by the owner (the Lua binding's token_fn,
 *               called on the Lua thread) through rw_cred_push_token;
 *   file        a JSON key file: "service_account" (a JWT signed RS256 with
 *               OpenSSL, exchanged at the key's token_uri) or
 *               "authorized_user" (refresh-token grant at its token_uri);
 *   metadata    the GCE metadata server ($GCE_METADATA_HOST, else
 *               169.254.169.254), used only after a quick probe answered;
 *   default     the ADC chain, resolved on the first token request:
 *               $GOOGLE_APPLICATION_CREDENTIALS, the gcloud file
 *               ($CLOUDSDK_CONFIG or ~/.config/gcloud)/application_default_credentials.json,
 *               then the metadata server; none -> auth.no_credentials
 *               listing what was tried.
 *
 * File, metadata and default credentials are shared by the process: two
 * rw_cred_new with the same source (and ca_file) return the same object, so
 * every writer, reader or proxy of the process shares one token cache.
 *
 * Token cache: rw_cred_token gives the cached token while it is valid. Ahead
 * of its expiry (a quarter of its lifetime, at most 225 s) one caller fetches
 * a new one (single flight) while the others keep using the valid token; when
 * no valid token exists, the others wait for that one fetch (on a condition
 * variable, with their context). Fetches retry with backoff (fetch_total_wait)
 * and honour the caller's context.
 *
 * Secrets (tokens, private keys, refresh tokens, client secrets) never appear
 * in errors or log lines: errors name the file, the URI and the rule.
 *
 * Thread safety: all functions may be called from any thread. */
#ifndef RW_AUTH_H
#define RW_AUTH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/context.h"
#include "core/error.h"

#define RW_VERSION "0.1.0"
/* Header lines naming the library, for every request to Google. */
#define RW_USER_AGENT_LINE "User-Agent: reliablewriter/" RW_VERSION
#define RW_API_CLIENT_LINE "x-goog-api-client: gl-c/11 reliablewriter/" RW_VERSION

#define RW_E_NO_CREDENTIALS "auth.no_credentials"
#define RW_E_UNAUTHENTICATED "auth.unauthenticated"
#define RW_E_BAD_CREDENTIALS "auth.bad_credentials"
#define RW_E_TOKEN_PENDING "auth.token_pending"

#define RW_TOKEN_MAX 4096 /* longest token accepted (GCE's are ~250 bytes) */

typedef struct rw_cred rw_cred;

typedef enum {
  RW_CRED_STATIC = 0,
  RW_CRED_PUSHED,
  RW_CRED_FILE,
  RW_CRED_METADATA,
  RW_CRED_DEFAULT
} rw_cred_kind;

/* A value config; strings are copied. */
typedef struct rw_cred_options {
  rw_cred_kind kind;
  const char *token;    /* STATIC: the token */
  const char *path;     /* FILE: the key file */
  const char *ca_file;  /* CA bundle for the token URI / metadata; NULL: system CAs */
  double fetch_total_wait; /* seconds of retries per fetch; <= 0: 10 */
  double probe_timeout;    /* metadata probe; <= 0: 1 s */
} rw_cred_options;

/* A FILE credential reads and checks its file here (errors name the file and
 * the rule, e.g. "no private_key"); nothing goes on the network until the
 * first rw_cred_token. Returns a new reference. */
rw_cred *rw_cred_new(const rw_cred_options *o, rw_error **err);
rw_cred *rw_cred_ref(rw_cred *c);
void rw_cred_unref(rw_cred *c); /* NULL is fine */

/* A valid token into out (NUL-terminated; out must hold RW_TOKEN_MAX + 1).
 * May fetch (see above). A PUSHED credential without a valid token fails at
 * once with auth.token_pending (retryable): its owner is asked for one
 * (rw_cred_wants_token) and pushes it on the owner's thread. */
rw_error *rw_cred_token(rw_cred *c, rw_ctx *ctx, char *out, size_t n);
/* The server refused this token (a 401): the next rw_cred_token fetches a new
 * one unless another caller already did. */
void rw_cred_invalidate(rw_cred *c, const char *token);
/* PUSHED: true when the owner should push a token (none yet, close to expiry
 * or refused). */
bool rw_cred_wants_token(rw_cred *c);
/* PUSHED: a new token, valid for expires_in seconds (<= 0: one hour). */
rw_error *rw_cred_push_token(rw_cred *c, const char *token, double expires_in);

/* PUSHED: the owner could not get a token (its function failed): requests
 * fail with e (a reference is taken) until a token is pushed. */
void rw_cred_push_error(rw_cred *c, rw_error *e);

/* The credential a GCS client (sink, source) uses: NULL in *out with a fixed
 * token or anonymous; `given` (a new reference) when set; NULL too with an
 * endpoint or an emulator variable ($STORAGE_EMULATOR_HOST,
 * $CLOUD_STORAGE_EMULATOR_ENDPOINT), which are anonymous by default as in the
 * Node client; else the shared ADC chain (resolved at the first request). */
rw_error *rw_cred_pick(const char *endpoint, bool has_token, bool anonymous, rw_cred *given,
                       const char *ca_file, rw_cred **out);

/* What the credential is, for messages: "service account file /p/key.json"
 * (never a secret). Valid while c lives. */
const char *rw_cred_describe(rw_cred *c);
/* Token fetches that reached the network so far (tests count them). */
uint64_t rw_cred_fetches(rw_cred *c);

/* Shared credentials stay in the process-wide registry (and keep their cached
 * token) after their last user let go, until this forgets them (tests, or a
 * process that rotated its key files): objects in use stay valid, new
 * rw_cred_new calls make new ones. */
void rw_cred_forget_shared(void);

#endif
