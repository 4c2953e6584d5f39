/* Diagnostic for bench/writer (not built by run.sh): an LD_PRELOAD shim that
 * adds MAP_POPULATE to read-only private file mappings of >= 1 MiB (the
 * pieces w:write_file maps), so the page faults happen inside mmap (before
 * rw_writer_write_some takes w->mu) instead of inside the CRC32C under w->mu.
 * Shows what prefaulting would buy without touching the library.
 *   cc -O2 -shared -fPIC -o /tmp/populate.so bench/writer/populate.c -ldl
 *   LD_PRELOAD=/tmp/populate.so lua5.4 bench/writer/lua_up.lua file URL obj FILE */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <sys/mman.h>
#include <sys/types.h>

void *mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off) {
  static void *(*real)(void *, size_t, int, int, int, off_t);
  if (!real) real = (void *(*)(void *, size_t, int, int, int, off_t))dlsym(RTLD_NEXT, "mmap");
  if (fd >= 0 && prot == PROT_READ && (flags & MAP_PRIVATE) && len >= (1u << 20)) flags |= MAP_POPULATE;
  return real(addr, len, prot, flags, fd, off);
}
