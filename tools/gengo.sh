#!/usr/bin/env bash
# Regenerate the Go code for protos/ into client-go/descriptorv1/.
#
#   tools/gengo.sh            write the generated files in place
#   tools/gengo.sh --check    exit 1 if the committed files differ (./dev check runs this)
#   tools/gengo.sh --tools    only install the pinned plug-ins into .tools/bin
#
# buf is the one pinned in tests/node/package.json (npm ci installs it); the two
# plug-ins are installed with `go install` at the versions below into the
# git-ignored .tools/bin, so every machine generates byte-identical code.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

PROTOC_GEN_GO=v1.36.12     # google.golang.org/protobuf/cmd/protoc-gen-go
PROTOC_GEN_GO_GRPC=v1.6.2  # google.golang.org/grpc/cmd/protoc-gen-go-grpc

bin="$root/.tools/bin"
out="$root/client-go"
generated=(descriptorv1/descriptor.pb.go descriptorv1/descriptor_grpc.pb.go)

say() { printf '[gengo] %s\n' "$*" >&2; }

tools() {
  mkdir -p "$bin"
  if [ "$("$bin/protoc-gen-go" --version 2>/dev/null)" != "protoc-gen-go $PROTOC_GEN_GO" ]; then
    say "go install protoc-gen-go@$PROTOC_GEN_GO"
    GOBIN="$bin" go install "google.golang.org/protobuf/cmd/protoc-gen-go@$PROTOC_GEN_GO"
  fi
  if [ "$("$bin/protoc-gen-go-grpc" --version 2>/dev/null)" != "protoc-gen-go-grpc ${PROTOC_GEN_GO_GRPC#v}" ]; then
    say "go install protoc-gen-go-grpc@$PROTOC_GEN_GO_GRPC"
    GOBIN="$bin" go install "google.golang.org/grpc/cmd/protoc-gen-go-grpc@$PROTOC_GEN_GO_GRPC"
  fi
  if [ ! -x tests/node/node_modules/.bin/buf ] || [ tests/node/package-lock.json -nt tests/node/node_modules ]; then
    say "npm ci in tests/node (for buf)"
    (cd tests/node && npm ci --no-audit --no-fund --silent)
  fi
}

generate() { # into $1
  PATH="$bin:$PATH" tests/node/node_modules/.bin/buf generate \
    --template client-go/buf.gen.yaml --path protos/descriptor -o "$1"
}

mode=${1:-write}
tools
[ "$mode" = --tools ] && exit 0
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
generate "$tmp"
case "$mode" in
  --check)
    stale=()
    for f in "${generated[@]}"; do
      cmp -s "$tmp/$f" "$out/$f" || stale+=("client-go/$f")
    done
    # A file buf writes that is not in the list above is drift too.
    while IFS= read -r f; do
      case " ${generated[*]} " in *" ${f#"$tmp"/} "*) ;; *) stale+=("(new) ${f#"$tmp"/}") ;; esac
    done < <(find "$tmp" -type f)
    if [ ${#stale[@]} -gt 0 ]; then
      say "generated Go code is stale, run: tools/gengo.sh: ${stale[*]}"
      for f in "${generated[@]}"; do diff -u "$out/$f" "$tmp/$f" 2>/dev/null | head -40 >&2 || true; done
      exit 1
    fi
    ;;
  write)
    for f in "${generated[@]}"; do
      mkdir -p "$(dirname "$out/$f")"
      cp "$tmp/$f" "$out/$f"
    done
    say "wrote ${generated[*]/#/client-go/}"
    ;;
  *)
    sed -n '2,6p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
    ;;
esac
