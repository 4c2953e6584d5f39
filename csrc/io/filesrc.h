/* A file to upload (w:write_file's source), read into memory its caller owns.
 *
 * Only regular files on a real file system are taken: a FIFO, socket, device,
 * directory, or a file of /proc, /sys and the like (regular by S_ISREG but
 * sized 0 or made up on each read) is rw.invalid_argument naming the path.
 * The file is never mapped: a truncation cannot kill the process (SIGBUS),
 * and the bytes read are the bytes the caller hashes and sends.
 *
 * The source remembers what the file looked like when it was opened (device,
 * inode, size, mtime, ctime). Every read must return all the bytes asked for,
 * and after it the file (and the path, which must still name the same inode)
 * must look the same: otherwise rw.source_changed naming the path and the
 * offset. A rewrite that keeps the size and lands in the same clock tick as
 * the open cannot be seen; the bytes read are still what is sent.
 *
 * One thread at a time per source. */
#ifndef RW_FILESRC_H
#define RW_FILESRC_H

#include <stddef.h>
#include <stdint.h>

#include "core/error.h"

typedef struct rw_filesrc rw_filesrc;

/* Opens path (following symlinks) without blocking, whatever it names.
 * Errors: rw.invalid_argument (not a regular file on a real file system),
 * io.error (missing, no permission, ...), rw.resource_exhausted (no fds). */
rw_filesrc *rw_filesrc_open(const char *path, rw_error **err);
uint64_t rw_filesrc_size(const rw_filesrc *s);
const char *rw_filesrc_path(const rw_filesrc *s);
/* Reads exactly len bytes at off into buf, then checks the file did not
 * change. off + len must be <= the size seen at open. */
rw_error *rw_filesrc_read(rw_filesrc *s, uint64_t off, void *buf, size_t len);
/* Closes the file and frees s (NULL is fine). Buffers still out stay valid. */
void rw_filesrc_close(rw_filesrc *s);

/* Buffers to read pieces into, recycled while the source is open: a fresh
 * buffer faults in (and the kernel zeroes) every page, which cost write_file
 * a quarter of its speed. A released buffer is kept (at most a few) for the
 * next piece of about its size; once the source is closed, released buffers
 * are freed, so nothing is kept after the call. Released from any thread
 * (it may outlive the source). NULL when out of memory. */
void *rw_filesrc_buffer(rw_filesrc *s, size_t len);
void rw_filesrc_buffer_release(void *buf);

#endif
