// bench/writer: one resumable upload of FILE by @google-cloud/storage
// (chunkSize 8 MiB, crc32c validation) to the fake GCS.
//   NODE_PATH=tests/fake/node/node_modules node bench/writer/node_up.js ENDPOINT BUCKET OBJECT FILE
// Prints: seconds bytes MiB/s
'use strict';
const fs = require('fs');
const {Storage} = require('@google-cloud/storage');

async function main() {
  const [url, bucketName, object, path] = process.argv.slice(2);
  const size = fs.statSync(path).size;
  const storage = new Storage({apiEndpoint: url, projectId: 'bench'});
  const t0 = process.hrtime.bigint();
  await storage.bucket(bucketName).upload(path, {
    destination: object, resumable: true, chunkSize: 8 * 1024 * 1024, validation: 'crc32c',
    contentType: 'application/octet-stream',
  });
  const dt = Number(process.hrtime.bigint() - t0) / 1e9;
  console.log(`${dt.toFixed(3)} ${size} ${(size / dt / 1048576).toFixed(1)}`);
}
main().catch((e) => { console.error('node_up FAILED:', e && e.stack ? e.stack : e); process.exit(1); });
