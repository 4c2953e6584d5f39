// Uploads FILE to gs://BUCKET/NAME at URL with @google-cloud/storage
// (resumable, 8 MiB chunks, its default retries; ifGenerationMatch=0 like our
// writer, so the client deems the upload idempotent and retries it: without a
// precondition it does not retry at all). Prints "ok SECONDS" or
// "fail SECONDS message". Run with NODE_PATH=tests/fake/node/node_modules.
'use strict';
const fs = require('fs');
const {Storage} = require('@google-cloud/storage');
const [url, bucket, name, file] = process.argv.slice(2);
const t0 = process.hrtime.bigint();
const secs = () => Number(process.hrtime.bigint() - t0) / 1e9;
const storage = new Storage({apiEndpoint: url, projectId: 'bench'});
storage.bucket(bucket).upload(file, {destination: name, resumable: true, chunkSize: 8 * 1024 * 1024,
                                     validation: 'crc32c', contentType: 'application/octet-stream',
                                     preconditionOpts: {ifGenerationMatch: 0}})
  .then(() => console.log(`ok ${secs().toFixed(2)}`))
  .catch((e) => { console.log(`fail ${secs().toFixed(2)} ${String(e && e.message || e).split('\n')[0]}`); });
