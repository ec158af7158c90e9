#!/usr/bin/env bash
# Run HERE (not on the device machine): download into .whl/ (git-ignored) the wheels of the packages llamalab's
# tests and benches import that the device machine's image lacks (it has torch, transformers, sentencepiece,
# tiktoken, tokenizers, safetensors, ...: see /work/.library/device/KINDS.md), at the versions installed here,
# built for the device's Python 3.12 on x86-64. The benches need only gguf; the test suite needs the rest.
# A `run` call then carries .whl and installs them (docs/gpu.md).
set -euo pipefail
cd "$(dirname "$0")/.."
exclude=$(git rev-parse --git-path info/exclude)
mkdir -p "$(dirname "$exclude")"
grep -qx '/.whl/' "$exclude" 2>/dev/null || echo '/.whl/' >> "$exclude"

packages="gguf fastapi starlette pydantic pydantic-core annotated-types annotated-doc typing-inspection
          typing-extensions opentelemetry-api uvicorn openai jiter sniffio httpx2 httpcore2 truststore
          llguidance jsonschema jsonschema-specifications referencing rpds-py"
pins=$(python - $packages <<'EOF'
import sys
from importlib.metadata import PackageNotFoundError, version

pins = []
for name in sys.argv[1:]:
    try:
        pins.append(f"{name}=={version(name)}")
    except PackageNotFoundError:  # not a dependency of this environment's versions
        pass
print(" ".join(pins))
EOF
)
rm -rf .whl
platforms=""
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
  platforms="$platforms --platform $p"
done
# shellcheck disable=SC2086
python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp $platforms \
  -d .whl $pins
ls .whl
du -sh .whl
