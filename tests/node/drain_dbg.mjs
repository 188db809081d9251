#!/usr/bin/env node
// Outstanding calls across a SIGTERM: sends COUNT Stat calls on one channel, signals the
// server (PID) while they are outstanding, waits for every answer and prints the count of
// each final status code as one JSON object. The channel retries UNAVAILABLE for Stat, as
// the README's service config says.
//
//   node drain.mjs TARGET DIGEST COUNT PID

import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";

const [target, digest, count, pid] = process.argv.slice(2);
const here = dirname(fileURLToPath(import.meta.url));
const root = join(here, "..", "..");
const def = protoLoader.loadSync("descriptor/v1/descriptor.proto", {
  includeDirs: [join(root, "protos"), join(root, "third_party", "googleapis")],
  keepCase: true, longs: String, defaults: true, oneofs: true,
});
const { BlobDescriptorService } = grpc.loadPackageDefinition(def).descriptor.v1;
const serviceConfig = {
  loadBalancingConfig: [{ round_robin: {} }],
  methodConfig: [{
    name: [{ service: "descriptor.v1.BlobDescriptorService", method: "Stat" }],
    retryPolicy: {
      maxAttempts: 3, initialBackoff: "0.05s", maxBackoff: "1s", backoffMultiplier: 2,
      retryableStatusCodes: ["UNAVAILABLE"],
    },
  }],
};
const client = new BlobDescriptorService(target, grpc.credentials.createInsecure(), {
  "grpc.service_config": JSON.stringify(serviceConfig),
});

await new Promise((resolve, reject) =>
  client.waitForReady(Date.now() + 10000, (err) => (err ? reject(err) : resolve())));
const calls = [];
for (let i = 0; i < Number(count); i++) {
  calls.push(new Promise((resolve) => {
    client.Stat({ digest, repository: "" }, { deadline: Date.now() + 30000 }, (err) =>
      resolve(err ? grpc.status[err.code] + " " + err.details : "OK"));
  }));
}
process.kill(Number(pid), "SIGTERM");
const counts = {};
for (const code of await Promise.all(calls)) counts[code] = (counts[code] ?? 0) + 1;
console.log(JSON.stringify(counts));
client.close();
