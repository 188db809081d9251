#!/usr/bin/env node
// A Node.js caller passing a registry bearer token (auth.token) to
// descriptor.v1.BlobDescriptorService, the API loaded from protos/ at run time.
//
//   node token_stat.mjs TARGET TOKEN DIGEST REPO OTHER
//
// Prints one JSON line per call: Stat of DIGEST in REPO with the token, in OTHER with
// the token, and in REPO without a token. Each line has the gRPC code and, on failure,
// the google.rpc.ErrorInfo reason, its "scope" and "www-authenticate" metadata.

import { existsSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";
import protobuf from "protobufjs";

const here = dirname(fileURLToPath(import.meta.url));
const includeDirs = [join(here, "..", "..", "protos"), join(here, "..", "..", "third_party", "googleapis")];
const definition = protoLoader.loadSync("descriptor/v1/descriptor.proto", { includeDirs, keepCase: true });
const Service = grpc.loadPackageDefinition(definition).descriptor.v1.BlobDescriptorService;

const rpcRoot = new protobuf.Root();
rpcRoot.resolvePath = (_origin, target) =>
  includeDirs.map((dir) => join(dir, target)).find((path) => existsSync(path)) ?? target;
rpcRoot.loadSync(["google/rpc/status.proto", "google/rpc/error_details.proto"]);
const StatusType = rpcRoot.lookupType("google.rpc.Status");
const ErrorInfoType = rpcRoot.lookupType("google.rpc.ErrorInfo");

function errorInfo(err) {
  const raw = err.metadata?.get("grpc-status-details-bin") ?? [];
  if (raw.length === 0) return null;
  const status = StatusType.decode(raw[0]);
  for (const any of status.details ?? []) {
    if ((any.type_url ?? any.typeUrl).endsWith("google.rpc.ErrorInfo")) {
      return ErrorInfoType.toObject(ErrorInfoType.decode(any.value), { defaults: true });
    }
  }
  return null;
}

const [target, token, digest, repo, other] = process.argv.slice(2);
const client = new Service(target, grpc.credentials.createInsecure());

function stat(repository, bearer) {
  const md = new grpc.Metadata();
  if (bearer) md.set("authorization", `Bearer ${bearer}`);
  return new Promise((resolve) => {
    client.Stat({ digest, repository }, md, { deadline: Date.now() + 10000 }, (err, resp) => {
      if (!err) {
        resolve({ repository, code: 0, digest: resp.descriptor.digest });
        return;
      }
      const info = errorInfo(err);
      resolve({
        repository,
        code: err.code,
        reason: info?.reason ?? null,
        scope: info?.metadata?.scope ?? null,
        "www-authenticate": info?.metadata?.["www-authenticate"] ?? null,
      });
    });
  });
}

for (const [repository, bearer] of [[repo, token], [other, token], [repo, null]]) {
  console.log(JSON.stringify(await stat(repository, bearer)));
}
client.close();
