#!/usr/bin/env bash
# Regenerate the committed Python stubs from registry.proto (run after editing it):
#   make protos
# The stubs are committed so that installing Cargohold needs no protoc.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m grpc_tools.protoc -I. --python_out=. --grpc_python_out=. --pyi_out=. protos/registry.proto
