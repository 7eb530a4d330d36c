#!/usr/bin/env bash
# Makes an offline GPU box (PyTorch + CUDA 13 preinstalled, no package index) ready for
# benchmarks/gpu_paths.py. Source it: `source benchmarks/gpu_offline_setup.sh`.
#
# Carried in by hand under .devcarry/: faissgpu.tar.xz (faiss-gpu-cu12 1.14.1.post1 unpacked and
# xz-packed, half the wheel's size), cu12/nvidia_cuda_runtime_cu12-*.whl, and the open_clip_torch,
# ftfy and wcwidth wheels.
#
# faiss-gpu-cu12 links libcublas.so.12, the box has cuBLAS 13 only, and the CUDA 12 cuBLAS wheel
# (~400 MB) cannot be carried. A shim named libcublas.so.12 (symbol version libcublas.so.12, as
# the faiss library asks) forwards the eight cuBLAS calls faiss makes to libcublas.so.13, whose
# signatures for them are unchanged. This is a test-rig workaround for this box only: on a normal
# machine `pip install faiss-gpu-cu12` brings its own CUDA 12 libraries.
set -eu
SITE=/tmp/site CU12=/tmp/cu12 SHIM=/tmp/cublas-shim
mkdir -p "$SITE" "$CU12" "$SHIM"
python3 -m pip install -q --no-index --no-deps --no-compile --target "$SITE" .devcarry/*.whl
python3 -m pip install -q --no-index --no-deps --no-compile --target "$CU12" .devcarry/cu12/*.whl
tar -C "$SITE" -xJf .devcarry/faissgpu.tar.xz
python3 -m pip install -q --no-deps --no-build-isolation --no-compile --target "$SITE" . >/dev/null

CUBLAS13=$(python3 - <<'EOF'
import torch
a = torch.ones(8, 8, device="cuda")
(a @ a).sum().item()
print(next(line.split()[-1] for line in open("/proc/self/maps") if "libcublas.so.13" in line))
EOF
)
SYMS="cublasCreate_v2 cublasDestroy_v2 cublasGemmEx cublasGemmStridedBatchedEx cublasGetMathMode cublasSetMathMode cublasSetStream_v2 cublasSgemmEx"
{
  echo '#include <dlfcn.h>'
  echo '#include <stdio.h>'
  echo '#include <stdlib.h>'
  for s in $SYMS; do echo "__attribute__((used)) static void *real_$s;"; done
  echo '__attribute__((constructor)) static void init(void) {'
  echo "  void *h = dlopen(\"$CUBLAS13\", RTLD_NOW | RTLD_GLOBAL);"
  echo '  if (!h) { fprintf(stderr, "cublas shim: %s\n", dlerror()); abort(); }'
  for s in $SYMS; do
    echo "  if (!(real_$s = dlsym(h, \"$s\"))) { fprintf(stderr, \"cublas shim: no $s\n\"); abort(); }"
  done
  echo '}'
  # each export jumps to the real function, leaving every argument register and the stack as is
  for s in $SYMS; do echo "__attribute__((naked)) void $s(void) { __asm__ volatile(\"jmp *real_$s(%rip)\"); }"; done
} > "$SHIM/shim.c"
printf 'libcublas.so.12 { global: cublas*; local: *; };\n' > "$SHIM/v.map"
gcc -shared -fPIC -O2 -o "$SHIM/libcublas.so.12" -Wl,-soname,libcublas.so.12 \
    -Wl,--version-script="$SHIM/v.map" "$SHIM/shim.c" -ldl
echo 'void clipsearch_cublaslt_placeholder(void) {}' | gcc -shared -fPIC -x c - -o "$SHIM/libcublasLt.so.12" \
    -Wl,-soname,libcublasLt.so.12
# the faiss wheel preloads its CUDA libraries by package name; here the loader path finds them
export _FAISS_WHEEL_DISABLE_CUDA_PRELOAD=1
export PYTHONPATH="$SITE" LD_LIBRARY_PATH="$SHIM:$CU12/nvidia/cuda_runtime/lib:${LD_LIBRARY_PATH:-}"
python3 -c "import faiss; print('faiss', faiss.__version__, 'gpus', faiss.get_num_gpus())"
