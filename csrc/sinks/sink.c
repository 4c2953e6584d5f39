/* Shared sink helpers. */
#include "sink.h"

#include <stdlib.h>
#include <string.h>

void rw_sink_result_clear(rw_sink_result *r) {
  rw_sink_object *o = &r->obj;
  free(o->bucket);
  free(o->name);
  free(o->generation);
  free(o->crc32c);
  free(o->md5);
  free(o->json);
  memset(r, 0, sizeof *r);
}
