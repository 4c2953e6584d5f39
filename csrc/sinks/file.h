/* The local file sink: writes a temporary file beside the target and renames
 * it over the target on the final put. It never destroys what it did not
 * create.
 *
 * new: the target (path) must be missing or a regular file; a FIFO, socket,
 * device or directory is rw.invalid_argument naming the path, as is a folder
 * that is missing. A symlink is resolved once, here: the file it points to is
 * the target (it must exist and be regular; a dangling link is refused), and
 * the link itself is kept. Nothing is created yet.
 * begin: creates the temporary file "<folder>/.<name>.<16 hex>.rwtmp",
 * exclusively (O_EXCL, O_CLOEXEC, mode 0666 & ~umask, or the target's mode
 * when it exists). The target is not touched.
 * put: pwritev straight from the iovecs into the temporary file; persisted is
 * the contiguous size written. The final put truncates to the total, fsyncs,
 * reads the file back for its crc32c (and md5 when the sums ask for it),
 * compares them with the sums given (a mismatch is gcs.checksum_mismatch and
 * the target is left alone), checks the target is still missing or regular,
 * renames the temporary file over it and fsyncs the folder: a reader sees the
 * old file or the whole new one. A put or query after that returns the same
 * object again.
 * abort and destroy remove the temporary file, never the target.
 * There is no resume: put or query before begin is rw.unsupported.
 * Errors: EINTR, EAGAIN, ENOSPC -> "io.transient" (retryable); others "io.error";
 * a put starting past the persisted size -> "rw.gap". on_sent gets the number
 * of bytes newly written. */
#ifndef RW_FILE_SINK_H
#define RW_FILE_SINK_H

#include "sinks/sink.h"

rw_sink *rw_file_sink_new(const char *path, rw_error **err);

#endif
