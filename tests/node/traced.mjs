#!/usr/bin/env node
// Trace context from a Node.js caller: one Stat call whose metadata carries the W3C
// `traceparent` given (as an OpenTelemetry-instrumented Node client sends it), added by
// a grpc-js client interceptor. Prints the final status code.
//
//   node traced.mjs TARGET DIGEST TRACEPARENT

import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";

const [target, digest, traceparent] = process.argv.slice(2);
const here = dirname(fileURLToPath(import.meta.url));
const root = join(here, "..", "..");
const def = protoLoader.loadSync("descriptor/v1/descriptor.proto", {
  includeDirs: [join(root, "protos"), join(root, "third_party", "googleapis")],
  keepCase: true, longs: String, defaults: true, oneofs: true,
});
const { BlobDescriptorService } = grpc.loadPackageDefinition(def).descriptor.v1;

// The interceptor a Node client puts on its channel to propagate the caller's context.
const propagate = (options, nextCall) =>
  new grpc.InterceptingCall(nextCall(options), {
    start(metadata, listener, next) {
      metadata.set("traceparent", traceparent);
      next(metadata, listener);
    },
  });
const client = new BlobDescriptorService(target, grpc.credentials.createInsecure(), { interceptors: [propagate] });
client.Stat({ digest, repository: "" }, { deadline: Date.now() + 10000 }, (err) => {
  console.log(err ? grpc.status[err.code] : "OK");
  client.close();
});
