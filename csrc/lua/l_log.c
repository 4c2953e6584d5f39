/* rw.log: capture the library's log lines in memory instead of stderr, for
 * tests that expect failures (they assert on the lines) and for programs
 * that route logs elsewhere (OpenResty: ngx.log). Lines are made on any
 * thread; the hook only copies them into a bounded list under a mutex, and
 * Lua reads them on its own thread. */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "lrw.h"

#define MAX_LINES 10000

static pthread_mutex_t cap_mu = PTHREAD_MUTEX_INITIALIZER;
static char *lines[MAX_LINES];
static size_t head, count, dropped;
static int cap_level = RW_LOG_WARN;

static void capture_hook(void *ud, rw_log_level lvl, const char *line) {
  (void)ud;
  if ((int)lvl > cap_level) return;
  char *copy = strdup(line);
  pthread_mutex_lock(&cap_mu);
  if (count == MAX_LINES) { /* drop the oldest */
    free(lines[head]);
    head = (head + 1) % MAX_LINES;
    count--;
    dropped++;
  }
  if (copy) lines[(head + count++) % MAX_LINES] = copy;
  else dropped++;
  pthread_mutex_unlock(&cap_mu);
}

/* Pushes the captured lines (a list, plus .dropped when some were lost) and
 * forgets them. */
static int push_lines(lua_State *L) {
  pthread_mutex_lock(&cap_mu);
  lua_createtable(L, (int)count, 1);
  for (size_t i = 0; i < count; i++) {
    char *s = lines[(head + i) % MAX_LINES];
    lua_pushstring(L, s);
    free(s);
    lua_rawseti(L, -2, (lua_Integer)i + 1);
  }
  if (dropped) {
    lua_pushinteger(L, (lua_Integer)dropped);
    lua_setfield(L, -2, "dropped");
  }
  head = count = dropped = 0;
  pthread_mutex_unlock(&cap_mu);
  return 1;
}

/* capture([level]): lines at level or above ("error", "warn" (default),
 * "info", "debug") go to memory from now on, not to stderr. */
static int log_capture(lua_State *L) {
  static const char *const levels[] = {"error", "warn", "info", "debug", NULL};
  int lvl = luaL_checkoption(L, 1, "warn", levels);
  pthread_mutex_lock(&cap_mu);
  cap_level = lvl;
  pthread_mutex_unlock(&cap_mu);
  rw_log_set_hook(capture_hook, NULL);
  return 0;
}

/* lines(): the lines captured since the last call, oldest first. */
static int log_lines(lua_State *L) { return push_lines(L); }

/* stop(): back to stderr; returns the lines not read yet. */
static int log_stop(lua_State *L) {
  rw_log_set_hook(NULL, NULL);
  return push_lines(L);
}

int rw_lua_open_log(lua_State *L) {
  static const luaL_Reg fns[] = {
      {"capture", log_capture}, {"lines", log_lines}, {"stop", log_stop}, {NULL, NULL}};
  luaL_newlib(L, fns);
  return 1;
}
