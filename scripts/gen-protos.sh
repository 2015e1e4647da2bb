#!/usr/bin/env bash
# Regenerates the Swift code for Protos/ into Sources/PrismProto/.
#
# Uses Debian's protoc and a protoc-gen-swift built once (release, ~2.5 min) from the exact
# swift-protobuf version SwiftPM resolved, so the generated code always matches the runtime
# library. The generated files are committed; run this only after changing a .proto file.
set -euo pipefail
cd "$(dirname "$0")/.."

command -v protoc >/dev/null || { echo "protoc missing: run scripts/install-deps.sh" >&2; exit 1; }
swift package resolve >/dev/null
src=.build/checkouts/swift-protobuf
plugin=.build-protoc/release/protoc-gen-swift
if [[ ! -x $plugin ]]; then
  echo "building protoc-gen-swift (once)..." >&2
  swift build -c release --package-path "$src" --scratch-path .build-protoc --product protoc-gen-swift >&2
fi

out=Sources/PrismProto
rm -f "$out"/*.pb.swift
protoc --plugin=protoc-gen-swift="$plugin" \
  --swift_opt=Visibility=Public \
  --swift_opt=FileNaming=DropPath \
  --swift_opt=UseAccessLevelOnImports=true \
  --swift_out="$out" \
  -I Protos Protos/prism/v1/*.proto
echo "generated: $(ls "$out")"
