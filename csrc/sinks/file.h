/* The local file sink: pwritev straight from the iovecs, fsync on the final put.
 *
 * begin creates or truncates the file; put/query without begin resume an
 * existing file (persisted = its size). persisted is the contiguous size
 * written. The final put truncates to the total, fsyncs, and reads the file
 * back to compute the crc32c (and md5 when the sums ask for it), so the object
 * describes what is on disk. abort closes and removes an unfinished file.
 * Errors: EINTR, EAGAIN, ENOSPC -> "io.transient" (retryable); others "io.error";
 * a put starting past the persisted size -> "rw.gap". on_sent gets the number
 * of bytes newly written. */
#ifndef RW_FILE_SINK_H
#define RW_FILE_SINK_H

#include "sinks/sink.h"

rw_sink *rw_file_sink_new(const char *path, rw_error **err);

#endif
