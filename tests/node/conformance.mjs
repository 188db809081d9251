#!/usr/bin/env node
// A Node.js caller of descriptor.v1.BlobDescriptorService built from protos/ alone
// (no generated code, nothing from the Python packages): it checks every RPC, the
// contract's conformance cases (docs/api.md, Semantics) and the google.rpc.ErrorInfo
// reasons (section 2) decoded from the grpc-status-details-bin trailer.
//
//   node conformance.mjs TARGET [--blob DIGEST --blob-size N --blob-repo REPO]
//                               [--max-batch N] [--no-delete-target TARGET2] [--wait SECONDS]
//                               [--auth-target TARGET3 --read-token R --write-token W]
//
// TARGET must serve an empty cache with deletion enabled. --blob names a blob the
// backend holds (pushed to --blob-repo); --max-batch is the server's grpc.maxbatch;
// --no-delete-target is a second server with storage.delete.enabled false (also used to
// check round robin over both with the README's service config); --wait is
// how long to wait for TARGET to accept connections (default 10 s); --auth-target is a
// server with bearer tokens (auth.tokens) R of scope read and W of scope write. Every
// check prints one line; the exit status is 1 when any check failed.

import { existsSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";

import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";
import protobuf from "protobufjs";

const here = dirname(fileURLToPath(import.meta.url));
const root = join(here, "..", "..");
const includeDirs = [join(root, "protos"), join(root, "third_party", "googleapis")];

const A384 = "sha384:abc" + "1".repeat(93);
const A256 = "sha256:abc" + "1".repeat(61);
const OCT = "application/octet-stream";
const REPO = "foo/bar";
const DOMAIN = "descriptor.v1";
const RPCS = ["Stat", "SetDescriptor", "Clear", "BatchStat", "GetMetrics", "Revalidate"];

// ---- loading the API from protos/ at run time ---------------------------------

const packageDefinition = protoLoader.loadSync("descriptor/v1/descriptor.proto", {
  includeDirs,
  keepCase: true, // field names exactly as in the proto: media_type, not mediaType
  longs: String, // int64/uint64 as decimal strings: no precision loss
  enums: String,
  defaults: true,
  oneofs: true, // BatchStatResult.result names the member that is set
});
const api = grpc.loadPackageDefinition(packageDefinition);
const Service = api.descriptor.v1.BlobDescriptorService;

// google.rpc.Status and ErrorInfo, to decode the grpc-status-details-bin trailer.
const rpcRoot = new protobuf.Root();
rpcRoot.resolvePath = (_origin, target) =>
  includeDirs.map((dir) => join(dir, target)).find((path) => existsSync(path)) ?? target;
rpcRoot.loadSync(["google/rpc/status.proto", "google/rpc/error_details.proto"]);
const StatusType = rpcRoot.lookupType("google.rpc.Status");
const ErrorInfoType = rpcRoot.lookupType("google.rpc.ErrorInfo");
const ERROR_INFO_URL = "type.googleapis.com/google.rpc.ErrorInfo";

/** The ErrorInfo of a google.rpc.Status ({code, message, details: Any[]}), or null. */
function errorInfoOf(status) {
  for (const any of status.details ?? []) {
    if (any.type_url === ERROR_INFO_URL || any.typeUrl === ERROR_INFO_URL) {
      return ErrorInfoType.toObject(ErrorInfoType.decode(any.value), { defaults: true });
    }
  }
  return null;
}

/** Code, message, reason and domain of a failed call, read from its trailer. */
function decodeError(err) {
  const raw = err.metadata?.get("grpc-status-details-bin") ?? [];
  if (raw.length === 0) {
    return { code: err.code, trailer: null, info: null };
  }
  const status = StatusType.toObject(StatusType.decode(raw[0]), { defaults: true });
  return { code: err.code, trailer: status, info: errorInfoOf(status) };
}

// ---- checks -------------------------------------------------------------------

const results = [];
const rpcsSeen = new Set();

function record(rpc, name, error) {
  rpcsSeen.add(rpc);
  results.push({ rpc, name, ok: !error });
  console.log(`${error ? "FAIL" : "ok  "} ${rpc}: ${name}${error ? `: ${error}` : ""}`);
}

async function check(rpc, name, body) {
  try {
    await body();
    record(rpc, name, null);
  } catch (err) {
    record(rpc, name, describe(err));
  }
}

/** A failed check's reason; for a gRPC error, its code and ErrorInfo reason. */
function describe(err) {
  if (err?.code !== undefined && err?.metadata instanceof grpc.Metadata) {
    const { info } = decodeError(err);
    return `call failed with ${grpc.status[err.code]} ${info?.reason ?? "(no ErrorInfo)"}: ${err.details}`;
  }
  return err?.message ?? String(err);
}

function assertEqual(got, want, what) {
  const g = JSON.stringify(got);
  const w = JSON.stringify(want);
  if (g !== w) {
    throw new Error(`${what}: got ${g}, want ${w}`);
  }
}

function call(client, rpc, request, metadata = new grpc.Metadata()) {
  return new Promise((resolve, reject) => {
    const deadline = new Date(Date.now() + 10_000);
    client[rpc](request, metadata, { deadline }, (err, response) => (err ? reject(err) : resolve(response)));
  });
}

/** Call ``rpc`` expecting it to fail with ``code`` and the ErrorInfo ``reason``. */
async function expectError(client, rpc, request, code, reason, metadata = new grpc.Metadata()) {
  let response;
  try {
    response = await call(client, rpc, request, metadata);
  } catch (err) {
    if (err.code === undefined) {
      throw err;
    }
    const got = decodeError(err);
    assertEqual(grpc.status[got.code], grpc.status[code], "status code");
    if (got.trailer === null) {
      throw new Error("no grpc-status-details-bin trailer");
    }
    assertEqual(got.trailer.code, code, "google.rpc.Status.code in the trailer");
    if (got.info === null) {
      throw new Error("no google.rpc.ErrorInfo in the trailer's details");
    }
    assertEqual([got.info.domain, got.info.reason], [DOMAIN, reason], "ErrorInfo (domain, reason)");
    return;
  }
  throw new Error(`succeeded with ${JSON.stringify(response)}, want ${grpc.status[code]} ${reason}`);
}

const desc = (media_type, digest, size) => ({ media_type, digest, size: String(size) });

async function stat(client, digest, repository = "") {
  const resp = await call(client, "Stat", { digest, repository });
  return resp.descriptor;
}

async function metrics(client) {
  const m = await call(client, "GetMetrics", {});
  return Object.fromEntries(["requests", "hits", "misses", "errors"].map((k) => [k, BigInt(m[k])]));
}

function delta(after, before) {
  return Object.fromEntries(Object.keys(after).map((k) => [k, Number(after[k] - before[k])]));
}

// ---- the run --------------------------------------------------------------------

async function run(opts) {
  const client = new Service(opts.target, grpc.credentials.createInsecure());
  await new Promise((resolve, reject) =>
    client.waitForReady(new Date(Date.now() + opts.wait * 1000), (err) => (err ? reject(err) : resolve())),
  );
  const { INVALID_ARGUMENT, NOT_FOUND, UNIMPLEMENTED } = grpc.status;

  await check("GetMetrics", "counters are uint64 decimal strings", async () => {
    const m = await call(client, "GetMetrics", {});
    for (const k of ["requests", "hits", "misses", "errors"]) {
      if (!/^\d+$/.test(m[k])) throw new Error(`${k} = ${JSON.stringify(m[k])}`);
    }
  });

  // Conformance case 1: an empty cache.
  await check("Stat", "case 1: global Stat(A384) on an empty cache is NOT_FOUND BLOB_UNKNOWN", () =>
    expectError(client, "Stat", { digest: A384 }, NOT_FOUND, "BLOB_UNKNOWN"),
  );
  await check("Stat", "case 1: repository Stat(A384) is NOT_FOUND BLOB_UNKNOWN", () =>
    expectError(client, "Stat", { digest: A384, repository: REPO }, NOT_FOUND, "BLOB_UNKNOWN"),
  );

  // Conformance case 2: invalid input stores nothing.
  await check("SetDescriptor", 'case 2: key digest "" is DIGEST_INVALID_FORMAT', () =>
    expectError(
      client,
      "SetDescriptor",
      { digest: "", descriptor: desc(OCT, A384, 10), repository: REPO },
      INVALID_ARGUMENT,
      "DIGEST_INVALID_FORMAT",
    ),
  );
  await check("SetDescriptor", "case 2: descriptor with an empty digest is DESCRIPTOR_INVALID", () =>
    expectError(
      client,
      "SetDescriptor",
      { digest: A384, descriptor: desc(OCT, "", 10), repository: REPO },
      INVALID_ARGUMENT,
      "DESCRIPTOR_INVALID",
    ),
  );
  await check("Stat", "case 2: nothing was stored (repository and global)", async () => {
    await expectError(client, "Stat", { digest: A384, repository: REPO }, NOT_FOUND, "BLOB_UNKNOWN");
    await expectError(client, "Stat", { digest: A384 }, NOT_FOUND, "BLOB_UNKNOWN");
  });

  // Conformance case 3: an alias is stored under both digests.
  await check("SetDescriptor", "case 3: repository SetDescriptor(A384, {A256, 10, OCT})", () =>
    call(client, "SetDescriptor", { digest: A384, descriptor: desc(OCT, A256, 10), repository: REPO }),
  );
  await check("Stat", "case 3: repository Stat(A384), global Stat(A384) and Stat(A256) agree", async () => {
    const want = desc(OCT, A256, 10);
    assertEqual(await stat(client, A384, REPO), want, "repository Stat(A384)");
    assertEqual(await stat(client, A384), want, "global Stat(A384)");
    assertEqual(await stat(client, A256), want, "global Stat(A256)");
  });

  // Conformance case 4: the repository's media type overrides the global one.
  await check("SetDescriptor", "case 4: repository media type overrides, global keeps OCT", async () => {
    await call(client, "SetDescriptor", {
      digest: A384,
      descriptor: desc("application/json", A256, 10),
      repository: REPO,
    });
    assertEqual((await stat(client, A384, REPO)).media_type, "application/json", "repository media type");
    assertEqual((await stat(client, A384)).media_type, OCT, "global media type");
  });

  // Conformance case 5: a repository Clear.
  await check("Clear", "case 5: repository Clear, then repository Stat is BLOB_UNKNOWN", async () => {
    await call(client, "Clear", { digest: A384, repository: REPO });
    await expectError(client, "Stat", { digest: A384, repository: REPO }, NOT_FOUND, "BLOB_UNKNOWN");
  });
  await check("Clear", "clearing it again is NOT_FOUND BLOB_UNKNOWN", () =>
    expectError(client, "Clear", { digest: A384, repository: REPO }, NOT_FOUND, "BLOB_UNKNOWN"),
  );

  // The backend behind the cache (a blob pushed to the registry's storage).
  if (opts.blob) {
    const want = desc(OCT, opts.blob, opts.blobSize);
    await check("Stat", "a pushed blob is answered from the backend, then from the cache", async () => {
      const before = await metrics(client);
      assertEqual(await stat(client, opts.blob), want, "first global Stat");
      assertEqual(await stat(client, opts.blob), want, "second global Stat");
      assertEqual(delta(await metrics(client), before), { requests: 2, hits: 1, misses: 1, errors: 0 }, "metrics delta");
    });
    await check("Stat", "the pushed blob is known in its repository, unknown in another", async () => {
      assertEqual(await stat(client, opts.blob, opts.blobRepo), want, "Stat in its repository");
      await expectError(client, "Stat", { digest: opts.blob, repository: "other/repo" }, NOT_FOUND, "BLOB_UNKNOWN");
    });
  }

  // Revalidate: the backend decides; an entry it does not hold leaves the cache.
  if (opts.blob) {
    const want = desc(OCT, opts.blob, opts.blobSize);
    await check("Revalidate", "a blob the backend holds is answered from the backend", async () => {
      const got = (await call(client, "Revalidate", { digest: opts.blob, repository: opts.blobRepo })).descriptor;
      assertEqual(got, want, "Revalidate in its repository");
    });
  }
  await check("Revalidate", "an entry the backend does not hold is BLOB_UNKNOWN and leaves the cache", async () => {
    const ghost = "sha256:" + "c".repeat(64);
    await call(client, "SetDescriptor", { digest: ghost, descriptor: desc(OCT, ghost, 3), repository: REPO });
    assertEqual(await stat(client, ghost, REPO), desc(OCT, ghost, 3), "Stat before");
    await expectError(client, "Revalidate", { digest: ghost, repository: REPO }, NOT_FOUND, "BLOB_UNKNOWN");
    await expectError(client, "Stat", { digest: ghost, repository: REPO }, NOT_FOUND, "BLOB_UNKNOWN");
    await expectError(client, "Stat", { digest: ghost }, NOT_FOUND, "BLOB_UNKNOWN");
  });
  await check("Revalidate", "a bad digest is INVALID_ARGUMENT DIGEST_INVALID_LENGTH", () =>
    expectError(client, "Revalidate", { digest: "sha384:abc" }, INVALID_ARGUMENT, "DIGEST_INVALID_LENGTH"),
  );

  // Every digest and repository error of the table (docs/api.md, Errors).
  const digestCases = [
    ["sha256", "DIGEST_INVALID_FORMAT"],
    ["SHA256:" + "a".repeat(64), "DIGEST_INVALID_FORMAT"],
    ["sha256:" + "A".repeat(64), "DIGEST_INVALID_FORMAT"],
    ["md5:abc!", "DIGEST_INVALID_FORMAT"],
    ["sha384:abc", "DIGEST_INVALID_LENGTH"],
    ["md5:abc", "DIGEST_UNSUPPORTED"],
  ];
  for (const [digest, reason] of digestCases) {
    await check("Stat", `Stat(${JSON.stringify(digest)}) is INVALID_ARGUMENT ${reason}`, () =>
      expectError(client, "Stat", { digest }, INVALID_ARGUMENT, reason),
    );
  }
  for (const repository of ["Foo/Bar", "foo//bar", "foo/bar:tag", "localhost:5000/x", "../x"]) {
    await check("Stat", `repository ${JSON.stringify(repository)} is REPOSITORY_NAME_INVALID`, () =>
      expectError(client, "Stat", { digest: A256, repository }, INVALID_ARGUMENT, "REPOSITORY_NAME_INVALID"),
    );
  }
  await check("SetDescriptor", "a negative size is DESCRIPTOR_INVALID", () =>
    expectError(client, "SetDescriptor", { digest: A256, descriptor: desc(OCT, A256, -1) }, INVALID_ARGUMENT, "DESCRIPTOR_INVALID"),
  );
  await check("SetDescriptor", "a malformed media type is DESCRIPTOR_INVALID", () =>
    expectError(client, "SetDescriptor", { digest: A256, descriptor: desc("not a type", A256, 1) }, INVALID_ARGUMENT, "DESCRIPTOR_INVALID"),
  );
  await check("Clear", "validation order: a bad key digest answers before a bad repository", () =>
    expectError(client, "Clear", { digest: "sha384:abc", repository: "Foo" }, INVALID_ARGUMENT, "DIGEST_INVALID_LENGTH"),
  );

  // A request body that does not decode as the request message.
  await check("Stat", "an undecodable request body is INVALID_ARGUMENT REQUEST_INVALID", async () => {
    const raw = new grpc.Client(opts.target, grpc.credentials.createInsecure());
    try {
      await new Promise((resolve, reject) => {
        raw.makeUnaryRequest(
          "/descriptor.v1.BlobDescriptorService/Stat",
          () => Buffer.from([0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f]), // field 1, length past the end
          (b) => b,
          null,
          new grpc.Metadata(),
          { deadline: new Date(Date.now() + 10_000) },
          (err, resp) => (err ? reject(err) : resolve(resp)),
        );
      }).then(
        () => {
          throw new Error("undecodable request succeeded");
        },
        (err) => {
          if (err.code === undefined) throw err;
          const got = decodeError(err);
          assertEqual([grpc.status[got.code], got.info?.reason], ["INVALID_ARGUMENT", "REQUEST_INVALID"], "status");
        },
      );
    } finally {
      raw.close();
    }
  });

  // BatchStat: per-item results in request order, call-level failures.
  await check("BatchStat", "items answer in request order; a bad or unknown digest fails its item only", async () => {
    await call(client, "SetDescriptor", { digest: A256, descriptor: desc(OCT, A256, 10) });
    const digests = [A256, A384, "md5:abc", "sha384:abc"];
    const resp = await call(client, "BatchStat", { digests });
    assertEqual(resp.results.map((r) => r.digest), digests, "result digests");
    const [found, unknown, unsupported, short] = resp.results;
    assertEqual([found.result, found.descriptor], ["descriptor", desc(OCT, A256, 10)], "item 0");
    const items = [unknown, unsupported, short].map((r) => [r.result, r.status?.code, errorInfoOf(r.status ?? {})?.reason]);
    assertEqual(
      items,
      [
        ["status", NOT_FOUND, "BLOB_UNKNOWN"],
        ["status", INVALID_ARGUMENT, "DIGEST_UNSUPPORTED"],
        ["status", INVALID_ARGUMENT, "DIGEST_INVALID_LENGTH"],
      ],
      "items 1..3 (oneof member, google.rpc.Status.code, ErrorInfo.reason)",
    );
  });
  await check("BatchStat", "a bad repository fails the whole call: REPOSITORY_NAME_INVALID", () =>
    expectError(client, "BatchStat", { digests: [A256], repository: "/etc" }, INVALID_ARGUMENT, "REPOSITORY_NAME_INVALID"),
  );
  if (opts.maxBatch) {
    await check("BatchStat", `${opts.maxBatch} digests are served; ${opts.maxBatch + 1} are BATCH_TOO_LARGE`, async () => {
      const resp = await call(client, "BatchStat", { digests: Array(opts.maxBatch).fill(A256) });
      assertEqual(resp.results.length, opts.maxBatch, "results at the limit");
      await expectError(client, "BatchStat", { digests: Array(opts.maxBatch + 1).fill(A256) }, INVALID_ARGUMENT, "BATCH_TOO_LARGE");
    });
  }

  // GetMetrics counts every lookup, BatchStat items included.
  await check("GetMetrics", "a cache hit and a miss count as the contract says", async () => {
    const before = await metrics(client);
    await stat(client, A256); // hit
    await expectError(client, "Stat", { digest: "sha512:" + "e".repeat(128) }, NOT_FOUND, "BLOB_UNKNOWN"); // miss
    await call(client, "BatchStat", { digests: [A256, A256] }); // two hits
    assertEqual(delta(await metrics(client), before), { requests: 4, hits: 3, misses: 1, errors: 0 }, "metrics delta");
  });

  // Global Clear.
  await check("Clear", "global Clear removes the descriptor", async () => {
    await call(client, "Clear", { digest: A256 });
    await expectError(client, "Stat", { digest: A256 }, NOT_FOUND, "BLOB_UNKNOWN");
  });
  client.close();

  if (opts.noDeleteTarget) {
    const nodelete = new Service(opts.noDeleteTarget, grpc.credentials.createInsecure());
    await check("Clear", "with deletion disabled, Clear is UNIMPLEMENTED UNSUPPORTED", () =>
      expectError(nodelete, "Clear", { digest: A256 }, UNIMPLEMENTED, "UNSUPPORTED"),
    );

    // Round robin over both servers with the documented service config (README).
    await check("Stat", "the service config balances an ipv4:A,B target round robin", async () => {
      const hostPort = (t) => t.replace(/^ipv4:/, "");
      const both = `ipv4:${hostPort(opts.target)},${hostPort(opts.noDeleteTarget)}`;
      const balanced = new Service(both, grpc.credentials.createInsecure(), {
        "grpc.service_config": JSON.stringify(SERVICE_CONFIG),
      });
      const main = new Service(opts.target, grpc.credentials.createInsecure());
      try {
        // Until both connections are up, round robin has only the ready one: call in
        // rounds of 10 (at most 20 rounds) until both servers have answered.
        const before = [await metrics(main), await metrics(nodelete)];
        let calls = 0;
        let counts = [0, 0];
        while (calls < 200 && Math.min(...counts) === 0) {
          for (let i = 0; i < 10; i++, calls++) {
            await expectError(balanced, "Stat", { digest: A384 }, NOT_FOUND, "BLOB_UNKNOWN");
          }
          counts = [delta(await metrics(main), before[0]), delta(await metrics(nodelete), before[1])].map(
            (d) => d.requests,
          );
        }
        assertEqual(counts[0] + counts[1], calls, "Stat lookups on the two servers");
        if (Math.min(...counts) === 0) throw new Error(`one server got all ${calls} calls: ${counts}`);
      } finally {
        balanced.close();
        main.close();
      }
    });
    nodelete.close();
  }

  if (opts.authTarget) {
    const secured = new Service(opts.authTarget, grpc.credentials.createInsecure());
    const bearer = (token) => {
      const md = new grpc.Metadata();
      md.set("authorization", `Bearer ${token}`);
      return md;
    };
    const { UNAUTHENTICATED, PERMISSION_DENIED } = grpc.status;
    const set = { digest: A256, descriptor: desc(OCT, A256, 10) };
    await check("Stat", "without a bearer token: UNAUTHENTICATED", () =>
      expectError(secured, "Stat", { digest: A256 }, UNAUTHENTICATED, "UNAUTHENTICATED"),
    );
    await check("Stat", "with an unknown bearer token: UNAUTHENTICATED", () =>
      expectError(secured, "Stat", { digest: A256 }, UNAUTHENTICATED, "UNAUTHENTICATED", bearer("not-a-token")),
    );
    await check("SetDescriptor", "a read token cannot write: PERMISSION_DENIED", () =>
      expectError(secured, "SetDescriptor", set, PERMISSION_DENIED, "PERMISSION_DENIED", bearer(opts.readToken)),
    );
    await check("SetDescriptor", "a write token writes; a read token reads it back", async () => {
      await call(secured, "SetDescriptor", set, bearer(opts.writeToken));
      const resp = await call(secured, "Stat", { digest: A256 }, bearer(opts.readToken));
      assertEqual(resp.descriptor, desc(OCT, A256, 10), "Stat with the read token");
    });
    secured.close();
  }
}

// The service config of the README's load-balancing section (as the Python client's).
const SERVICE_CONFIG = {
  loadBalancingConfig: [{ round_robin: {} }],
  methodConfig: [
    {
      name: [{ service: "descriptor.v1.BlobDescriptorService" }],
      retryPolicy: {
        maxAttempts: 3,
        initialBackoff: "0.05s",
        maxBackoff: "1s",
        backoffMultiplier: 2,
        retryableStatusCodes: ["UNAVAILABLE"],
      },
    },
  ],
};

async function main() {
  const { values, positionals } = parseArgs({
    allowPositionals: true,
    options: {
      blob: { type: "string" },
      "blob-size": { type: "string", default: "0" },
      "blob-repo": { type: "string", default: REPO },
      "max-batch": { type: "string" },
      "no-delete-target": { type: "string" },
      wait: { type: "string", default: "10" },
      "auth-target": { type: "string" },
      "read-token": { type: "string", default: "" },
      "write-token": { type: "string", default: "" },
    },
  });
  if (positionals.length !== 1) {
    console.error("usage: node conformance.mjs TARGET [--blob DIGEST --blob-size N --blob-repo REPO] [--max-batch N] [--no-delete-target TARGET2] [--wait SECONDS]\n  [--auth-target TARGET3 --read-token R --write-token W]");
    return 2;
  }
  const opts = {
    target: positionals[0],
    blob: values.blob,
    blobSize: Number(values["blob-size"]),
    blobRepo: values["blob-repo"],
    maxBatch: values["max-batch"] ? Number(values["max-batch"]) : 0,
    noDeleteTarget: values["no-delete-target"],
    wait: Number(values.wait),
    authTarget: values["auth-target"],
    readToken: values["read-token"],
    writeToken: values["write-token"],
  };
  try {
    await run(opts);
  } catch (err) {
    console.error(`error: ${opts.target}: ${err?.message ?? err}`);
    return 1;
  }
  const failed = results.filter((r) => !r.ok);
  const missing = RPCS.filter((rpc) => !rpcsSeen.has(rpc));
  console.log(`RPCs checked: ${RPCS.filter((rpc) => rpcsSeen.has(rpc)).join(", ")}`);
  if (missing.length) console.log(`RPCs NOT checked: ${missing.join(", ")}`);
  console.log(`${results.length - failed.length} passed, ${failed.length} failed`);
  return failed.length || missing.length ? 1 : 0;
}

process.exitCode = await main();
