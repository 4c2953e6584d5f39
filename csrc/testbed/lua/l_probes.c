/* testbed.probes: what the tests count to show an upper bound on threads,
 * file descriptors and memory (Linux /proc/self):
 *   probes.thread_count(), probes.fd_count(), probes.rss_kib() */
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testbed/lua/ltb.h"

static long proc_status_field(const char *name) {
  FILE *f = fopen("/proc/self/status", "r");
  if (!f) return -1;
  char line[256];
  long v = -1;
  size_t nl = strlen(name);
  while (fgets(line, sizeof line, f))
    if (strncmp(line, name, nl) == 0 && line[nl] == ':') {
      v = strtol(line + nl + 1, NULL, 10);
      break;
    }
  fclose(f);
  return v;
}

static int p_thread_count(lua_State *L) {
  lua_pushinteger(L, proc_status_field("Threads"));
  return 1;
}

static int p_rss_kib(lua_State *L) {
  lua_pushinteger(L, proc_status_field("VmRSS"));
  return 1;
}

static int p_fd_count(lua_State *L) {
  DIR *d = opendir("/proc/self/fd");
  if (!d) return 0;
  long n = 0;
  struct dirent *e;
  while ((e = readdir(d)))
    if (e->d_name[0] != '.') n++;
  closedir(d);
  lua_pushinteger(L, n - 1); /* not the DIR's own fd */
  return 1;
}

int rw_tb_open_probes(lua_State *L) {
  static const luaL_Reg fns[] = {{"thread_count", p_thread_count}, {"fd_count", p_fd_count},
                                 {"rss_kib", p_rss_kib},           {NULL, NULL}};
  luaL_newlib(L, fns);
  return 1;
}
