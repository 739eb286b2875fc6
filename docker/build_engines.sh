#!/usr/bin/env bash
# Build the TensorRT engines of a Triton model repository with the TensorRT of *this* image.
#
# Usage: build_engines.sh [--dry-run] [MODEL_REPOSITORY]     (default: $MODEL_REPOSITORY or /models)
#
# For every TensorRT model directory (default: <repo>/pneumonia_trt_*/) this turns the ONNX that
# `cxr convert` writes beside the version directory into the plan Triton loads:
#
#   <repo>/pneumonia_trt_<p>/model.onnx          input (FP16 ONNX, or Q/DQ ONNX for int8)
#   <repo>/pneumonia_trt_<p>/1/model.plan        engine (written atomically)
#   <repo>/pneumonia_trt_<p>/1/model.plan.json   stamp: TensorRT version, GPU compute capability,
#                                                build time, ONNX sha256, shapes
#   <repo>/pneumonia_trt_<p>/timing.cache        trtexec timing cache (reused between builds)
#   <repo>/pneumonia_trt_<p>/trtexec.log         log of the last build
#
# An engine is rebuilt when the plan is missing, older than the ONNX, or when its stamp differs
# from this machine (TensorRT version, compute capability, ONNX hash, shapes); otherwise it is kept.
# TensorRT 10+ builds are strongly typed: precision comes from the ONNX (FP16 weights, Q/DQ
# nodes), so trtexec gets --stronglyTyped and never --fp16/--int8.
#
# Environment:
#   MAX_BATCH     largest batch of the optimisation profile; default: max_batch_size of the
#                 model's config.pbtxt, else 64. Must be >= that max_batch_size.
#   OPT_BATCH     batch size the profile is tuned for; default: min(16, MAX_BATCH).
#   IMAGE_SIZE    S of the [N,1,S,S] input when the ONNX does not fix it; default 224.
#   TRT_MODELS    space-separated model names to build (default: every pneumonia_trt_* directory).
#   FORCE_REBUILD 1 = rebuild every engine.
#   WORKSPACE_MIB optional builder workspace limit (MiB), passed as --memPoolSize=workspace:N.
#   TRTEXEC       path of trtexec (default: PATH, then /usr/src/tensorrt/bin/trtexec).
#   TRTEXEC_EXTRA_ARGS  extra trtexec arguments, whitespace-separated.
# Exit status: 0 when every engine is up to date or built; 1 on any failure, and with --dry-run
# (which builds nothing and needs no trtexec) 1 when some engine would be rebuilt.
set -Eeuo pipefail

log() { printf '[build_engines] %s\n' "$*" >&2; }
die() {
    log "ERROR: $*"
    exit 1
}

DRY_RUN=0
if [[ "${1:-}" == "--dry-run" ]]; then
    DRY_RUN=1
    shift
fi
REPO="${1:-${MODEL_REPOSITORY:-/models}}"
[[ -d "$REPO" ]] || die "model repository '$REPO' is not a directory"

FORCE_REBUILD="${FORCE_REBUILD:-0}"
DEFAULT_IMAGE_SIZE="${IMAGE_SIZE:-224}"
INPUT_NAME="IMAGE" # client.contract.IMAGE

is_uint() { [[ "$1" =~ ^[0-9]+$ ]] && ((10#$1 > 0)); }
is_uint "$DEFAULT_IMAGE_SIZE" || die "IMAGE_SIZE must be a positive integer, got '$DEFAULT_IMAGE_SIZE'"
[[ -z "${MAX_BATCH:-}" ]] || is_uint "$MAX_BATCH" || die "MAX_BATCH must be a positive integer"
[[ -z "${OPT_BATCH:-}" ]] || is_uint "$OPT_BATCH" || die "OPT_BATCH must be a positive integer"

# --- tools and this machine ------------------------------------------------------------------
find_trtexec() {
    local candidate
    for candidate in "${TRTEXEC:-}" "$(command -v trtexec || true)" \
        /usr/src/tensorrt/bin/trtexec /opt/tensorrt/bin/trtexec; do
        if [[ -n "$candidate" && -x "$candidate" ]]; then
            printf '%s\n' "$candidate"
            return 0
        fi
    done
    return 1
}

# The TensorRT the serving backend loads: the libnvinfer the dynamic linker resolves, then the
# Debian package, then trtexec's banner ("[TensorRT v100800]").
tensorrt_version() {
    local lib real version code
    lib="$(ldconfig -p 2>/dev/null | awk '/[[:space:]]libnvinfer\.so\.[0-9]+ /{print $NF; exit}')" || true
    if [[ -n "$lib" ]]; then
        real="$(readlink -f "$lib")"
        version="${real##*/libnvinfer.so.}"
        if [[ "$version" =~ ^[0-9]+(\.[0-9]+)+$ ]]; then
            printf '%s\n' "$version"
            return 0
        fi
    fi
    if command -v dpkg-query >/dev/null 2>&1; then
        version="$(dpkg-query -W -f='${Version}\n' 'libnvinfer[0-9]*' 2>/dev/null | grep -v '^$' | head -n1)" || true
        if [[ -n "$version" ]]; then
            printf '%s\n' "${version%%-*}"
            return 0
        fi
    fi
    if [[ -n "${TRTEXEC_BIN:-}" ]]; then
        code="$("$TRTEXEC_BIN" --help 2>&1 | grep -o 'TensorRT v[0-9]\+' | head -n1 | tr -dc '0-9')" || true
        if [[ -n "$code" ]]; then
            printf '%d.%d.%d\n' $((10#$code / 10000)) $((10#$code / 100 % 100)) $((10#$code % 100))
            return 0
        fi
    fi
    printf 'unknown\n'
}

# Compute capabilities of the visible GPUs, e.g. "9.0" (comma-joined when they differ).
gpu_compute_caps() {
    local caps=""
    if command -v nvidia-smi >/dev/null 2>&1; then
        caps="$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null |
            tr -d ' \r' | grep -v '^$' | sort -u | paste -sd, -)" || true
    fi
    printf '%s\n' "${caps:-unknown}"
}

# S of the [N,1,S,S] input from the ONNX graph (onnx, else onnxruntime); empty when not fixed.
onnx_image_size() {
    python3 - "$1" "$INPUT_NAME" 2>/dev/null <<'PY' || true
import sys

path, wanted = sys.argv[1], sys.argv[2]
dims = None
try:
    import onnx

    graph = onnx.load(path, load_external_data=False).graph
    initializers = {t.name for t in graph.initializer}
    inputs = [i for i in graph.input if i.name not in initializers]
    chosen = next((i for i in inputs if i.name == wanted), inputs[0] if inputs else None)
    if chosen is not None:
        dims = [d.dim_value if d.HasField("dim_value") else None
                for d in chosen.type.tensor_type.shape.dim]
except ImportError:
    import onnxruntime as ort

    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    inputs = session.get_inputs()
    chosen = next((i for i in inputs if i.name == wanted), inputs[0] if inputs else None)
    if chosen is not None:
        dims = [d if isinstance(d, int) else None for d in chosen.shape]
if dims and len(dims) == 4 and dims[2] and dims[2] == dims[3]:
    print(dims[2])
PY
}

# max_batch_size of a Triton config.pbtxt, empty when absent.
config_max_batch() {
    [[ -f "$1" ]] || return 0
    sed -n 's/^[[:space:]]*max_batch_size[[:space:]]*:[[:space:]]*\([0-9]\+\).*/\1/p' "$1" | head -n1
}

# Why the engine must be rebuilt (one line), or nothing when the stamp matches.
stamp_mismatch() { # stamp_file key=value...
    python3 - "$@" <<'PY'
import json
import sys

path, pairs = sys.argv[1], sys.argv[2:]
try:
    with open(path, encoding="utf-8") as f:
        stamp = json.load(f)
except FileNotFoundError:
    print("no stamp file")
    sys.exit(0)
except (OSError, ValueError) as exc:
    print(f"unreadable stamp ({exc})")
    sys.exit(0)
for pair in pairs:
    key, _, want = pair.partition("=")
    have = str(stamp.get(key, ""))
    if have != want:
        print(f"{key} changed: {have or '-'} -> {want}")
        break
PY
}

write_stamp() { # stamp_file key=value...
    python3 - "$@" <<'PY'
import json
import os
import sys

path, pairs = sys.argv[1], sys.argv[2:]
stamp = {}
for pair in pairs:
    key, _, value = pair.partition("=")
    stamp[key] = int(value) if value.isdigit() and key.endswith(("_batch", "_size")) else value
tmp = f"{path}.tmp"
with open(tmp, "w", encoding="utf-8") as f:
    json.dump(stamp, f, indent=2, sort_keys=True)
    f.write("\n")
os.replace(tmp, path)
PY
}

# --- one model -------------------------------------------------------------------------------
TMP_FILES=()
cleanup() { ((${#TMP_FILES[@]} == 0)) || rm -f "${TMP_FILES[@]}"; }
trap cleanup EXIT

build_model() {
    local dir="$1" name onnx plan stamp cache buildlog config
    name="$(basename "$dir")"
    onnx="$dir/model.onnx"
    plan="$dir/1/model.plan"
    stamp="$dir/1/model.plan.json"
    cache="$dir/timing.cache"
    buildlog="$dir/trtexec.log"
    config="$dir/config.pbtxt"

    if [[ ! -f "$onnx" ]]; then
        [[ -f "$plan" ]] || die "$name: neither $onnx nor $plan exists; run \`cxr convert\` first"
        # A prebuilt plan without its ONNX: keep it only if it was built by this TensorRT/GPU.
        local why
        why="$(stamp_mismatch "$stamp" "tensorrt_version=$TRT_VERSION" "compute_capability=$GPU_CAPS")"
        [[ -z "$why" ]] || die "$name: prebuilt plan does not match this image/GPU ($why) and" \
            "there is no model.onnx beside it to rebuild from"
        log "$name: prebuilt plan matches TensorRT $TRT_VERSION on sm $GPU_CAPS; kept"
        return 0
    fi

    local size cfg_batch max_batch opt_batch onnx_sha
    size="$(onnx_image_size "$onnx")"
    if [[ -z "$size" ]]; then
        size="$DEFAULT_IMAGE_SIZE"
        log "$name: input size not fixed in (or not readable from) the ONNX; using IMAGE_SIZE=$size"
    elif [[ -n "${IMAGE_SIZE:-}" && "$IMAGE_SIZE" != "$size" ]]; then
        log "$name: WARNING: IMAGE_SIZE=$IMAGE_SIZE ignored, the ONNX input is ${size}x${size}"
    fi
    cfg_batch="$(config_max_batch "$config")"
    max_batch="${MAX_BATCH:-${cfg_batch:-64}}"
    if [[ -n "$cfg_batch" ]] && ((10#$max_batch < 10#$cfg_batch)); then
        die "$name: MAX_BATCH=$max_batch is below max_batch_size $cfg_batch in $config;" \
            "Triton would refuse the engine"
    fi
    opt_batch="${OPT_BATCH:-$((10#$max_batch < 16 ? 10#$max_batch : 16))}"
    ((10#$opt_batch <= 10#$max_batch)) || die "$name: OPT_BATCH=$opt_batch > MAX_BATCH=$max_batch"
    onnx_sha="$(sha256sum "$onnx" | cut -d' ' -f1)"

    local -a want=(
        "tensorrt_version=$TRT_VERSION"
        "compute_capability=$GPU_CAPS"
        "onnx_sha256=$onnx_sha"
        "image_size=$size"
        "max_batch=$max_batch"
        "opt_batch=$opt_batch"
    )
    local reason=""
    if [[ "$FORCE_REBUILD" == "1" ]]; then
        reason="FORCE_REBUILD=1"
    elif [[ ! -f "$plan" ]]; then
        reason="no plan yet"
    elif [[ "$onnx" -nt "$plan" ]]; then
        reason="plan is older than the ONNX"
    elif [[ "$TRT_VERSION" == "unknown" || "$GPU_CAPS" == "unknown" ]]; then
        reason="cannot verify the stamp (TensorRT $TRT_VERSION, compute capability $GPU_CAPS)"
    else
        reason="$(stamp_mismatch "$stamp" "${want[@]}")"
    fi
    if [[ -z "$reason" ]]; then
        log "$name: up to date (TensorRT $TRT_VERSION, sm $GPU_CAPS, ${size}x${size}, batch <= $max_batch)"
        return 0
    fi
    if ((DRY_RUN)); then
        log "$name: would rebuild: $reason"
        STALE=$((STALE + 1))
        return 0
    fi

    log "$name: building ($reason): ${size}x${size}, batch 1..$max_batch (opt $opt_batch); log: $buildlog"
    # A timing cache from another TensorRT or GPU is useless at best.
    if [[ -f "$cache" && -f "$stamp" ]] && [[ -n "$(stamp_mismatch "$stamp" \
        "tensorrt_version=$TRT_VERSION" "compute_capability=$GPU_CAPS")" ]]; then
        rm -f "$cache"
    fi
    mkdir -p "$dir/1"
    local tmp_plan="$plan.tmp.$$"
    TMP_FILES+=("$tmp_plan")
    local -a args=(
        "--onnx=$onnx"
        "--saveEngine=$tmp_plan"
        "--stronglyTyped"
        "--minShapes=${INPUT_NAME}:1x1x${size}x${size}"
        "--optShapes=${INPUT_NAME}:${opt_batch}x1x${size}x${size}"
        "--maxShapes=${INPUT_NAME}:${max_batch}x1x${size}x${size}"
        "--timingCacheFile=$cache"
        "--skipInference"
    )
    [[ -z "${WORKSPACE_MIB:-}" ]] || args+=("--memPoolSize=workspace:${WORKSPACE_MIB}")
    if [[ -n "${TRTEXEC_EXTRA_ARGS:-}" ]]; then
        local -a extra
        read -r -a extra <<<"$TRTEXEC_EXTRA_ARGS"
        args+=("${extra[@]}")
    fi
    local started=$SECONDS
    if ! "$TRTEXEC_BIN" "${args[@]}" >"$buildlog" 2>&1; then
        tail -n 40 "$buildlog" >&2 || true
        die "$name: trtexec failed (full log: $buildlog)"
    fi
    [[ -s "$tmp_plan" ]] || die "$name: trtexec wrote no engine (see $buildlog)"
    mv -f "$tmp_plan" "$plan"
    write_stamp "$stamp" "${want[@]}" \
        "built_at=$(date -u +%Y-%m-%dT%H:%M:%SZ)" \
        "gpu=$GPU_NAMES" \
        "onnx=$(basename "$onnx")" \
        "trtexec_flags=--stronglyTyped"
    log "$name: built in $((SECONDS - started)) s -> $plan"
    BUILT=$((BUILT + 1))
}

# --- main --------------------------------------------------------------------------------------
models=()
if [[ -n "${TRT_MODELS:-}" ]]; then
    read -r -a names <<<"$TRT_MODELS"
    for name in "${names[@]}"; do
        [[ -d "$REPO/$name" ]] || die "TRT_MODELS names '$name' but $REPO/$name does not exist"
        models+=("$REPO/$name")
    done
else
    shopt -s nullglob
    for dir in "$REPO"/pneumonia_trt_*/; do
        models+=("${dir%/}")
    done
    shopt -u nullglob
fi
if ((${#models[@]} == 0)); then
    log "no TensorRT models (pneumonia_trt_*) in $REPO; nothing to build"
    exit 0
fi

TRTEXEC_BIN=""
if ! TRTEXEC_BIN="$(find_trtexec)"; then
    ((DRY_RUN)) || die "trtexec not found (set TRTEXEC); run this in the cxr-triage-triton image"
fi
TRT_VERSION="$(tensorrt_version)"
GPU_CAPS="$(gpu_compute_caps)"
GPU_NAMES="$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | sort -u | paste -sd, - || true)"
GPU_NAMES="${GPU_NAMES:-unknown}"
[[ "$GPU_CAPS" != *,* ]] || log "WARNING: GPUs of different compute capability ($GPU_CAPS);" \
    "an engine built on one may not load on another"
[[ "$GPU_CAPS" != "unknown" ]] || log "WARNING: nvidia-smi gave no compute capability; is a GPU visible?"
log "TensorRT $TRT_VERSION, compute capability $GPU_CAPS ($GPU_NAMES), trtexec ${TRTEXEC_BIN:-none}"

BUILT=0
STALE=0
for dir in "${models[@]}"; do
    build_model "$dir"
done
if ((DRY_RUN)); then
    log "dry run: $STALE of ${#models[@]} engine(s) would be rebuilt"
    ((STALE == 0))
else
    log "done: $BUILT built, $((${#models[@]} - BUILT)) up to date"
fi
