// Peer test: @google-cloud/storage (resumable, chunkSize 8 MiB, crc32c validation)
// uploads random objects to the fake GCS and reads back identical bytes.
// Usage: node peer.js URL BUCKET [seed]
'use strict';
const crypto = require('crypto');
const {Storage} = require('@google-cloud/storage');

const [url, bucketName, seedArg] = process.argv.slice(2);
const seed = seedArg ? Number(seedArg) : Date.now() % 1e9;
console.log(`node peer: seed=${seed} url=${url}`);

// Seeded random bytes: AES-CTR keystream keyed by the seed.
function randomBytes(n, s) {
  const key = crypto.createHash('sha256').update(String(s)).digest();
  const c = crypto.createCipheriv('aes-256-ctr', key, Buffer.alloc(16));
  return Buffer.concat([c.update(Buffer.alloc(n)), c.final()]);
}

async function roundTrip(bucket, name, size, resumable, i) {
  const data = randomBytes(size, seed + i);
  const file = bucket.file(name);
  await file.save(data, {resumable, chunkSize: 8 * 1024 * 1024, validation: 'crc32c',
                         contentType: 'application/octet-stream'});
  const [back] = await file.download({validation: 'crc32c'});
  if (!back.equals(data)) throw new Error(`${name}: ${back.length} bytes back, ${size} sent`);
  const [meta] = await file.getMetadata();
  if (Number(meta.size) !== size) throw new Error(`${name}: size ${meta.size}, want ${size}`);
  console.log(`ok ${name} ${size} bytes resumable=${resumable}`);
}

async function main() {
  const storage = new Storage({apiEndpoint: url, projectId: 'test'});
  const bucket = storage.bucket(bucketName);
  const sizes = [0, 1, 256 * 1024, 256 * 1024 + 1, 40 * 1024 * 1024];
  let i = 0;
  for (const size of sizes) {
    await roundTrip(bucket, `node/r-${size}`, size, true, i++);
    await roundTrip(bucket, `node/s-${size}`, size, false, i++);
  }
  const [files] = await bucket.getFiles({prefix: 'node/'});
  if (files.length !== sizes.length * 2) throw new Error(`listed ${files.length} files`);
  console.log('node peer: all ok');
}

main().catch((e) => {
  console.error(`node peer FAILED (seed=${seed}):`, e && e.stack ? e.stack : e);
  process.exit(1);
});
