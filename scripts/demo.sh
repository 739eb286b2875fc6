#!/usr/bin/env bash
# The main job end to end on the embedded default (no GPU, no Docker):
# data -> cxr train -> cxr convert -> cxr serve -> cxr client predict -> Locust (20 s) -> stop.
# DATA: a Kermany-style folder or a MedMNIST .npz (default: synthetic images made here).
set -euo pipefail
WORK=${WORK:-build/demo}
REPO="$WORK/model_repository"
GRPC_PORT=${GRPC_PORT:-8001}
mkdir -p "$WORK"

step() { printf '\n== %s\n' "$*"; }

if [[ -z "${DATA:-}" ]]; then
  DATA="$WORK/data"
  step "synthetic data (clearly labelled SYNTHETIC) -> $DATA"
  cxr data synth --out "$DATA" --count 1200 --image-size 128
fi

step "train (EfficientNet-Lite0 fine-tuned from ImageNet weights installed with the train extra)"
cxr train --data "$DATA" --out "$WORK/run" --epochs "${EPOCHS:-4}"

step "convert: ONNX + INT8, parity and accuracy gate, publish into $REPO"
cxr convert "$WORK/run" --repo "$REPO"
cxr repo check "$REPO" --no-engines  # no TensorRT here: engines are built on the GPU server

step "serve: embedded Triton on 127.0.0.1:$GRPC_PORT"
cxr serve --repo "$REPO" --grpc-port "$GRPC_PORT" --http-port $((GRPC_PORT - 1)) \
  --metrics-port $((GRPC_PORT + 1)) > "$WORK/serve.log" 2>&1 &
SERVER=$!
trap 'kill -TERM $SERVER 2>/dev/null; wait $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 1 120); do
  cxr client health --url "127.0.0.1:$GRPC_PORT" --timeout 1 >/dev/null 2>&1 && break
  kill -0 $SERVER 2>/dev/null || { cat "$WORK/serve.log"; exit 1; }
  sleep 0.5
done
cat "$WORK/serve.log"

step "predict a few images"
SAMPLES_DIR="$WORK/samples"
mkdir -p "$SAMPLES_DIR"
if [[ -d "$DATA" ]]; then
  # three images of each of the first two classes of the held-out split (test, else val)
  split=$( [[ -d "$DATA/test" ]] && echo test || echo val )
  for class_dir in "$DATA/$split"/*/; do
    find "$class_dir" -type f | sort | sed -n 1,3p | while read -r f; do cp "$f" "$SAMPLES_DIR/"; done
  done
else
  # a MedMNIST .npz: write six of its validation images as PNGs
  python - "$DATA" "$SAMPLES_DIR" <<'PY'
import sys
import numpy as np
from PIL import Image
archive = np.load(sys.argv[1])
for i, image in enumerate(archive["val_images"][:6]):
    Image.fromarray(image).save(f"{sys.argv[2]}/val_{i}_label{int(archive['val_labels'][i][0])}.png")
PY
fi
cxr client predict "$SAMPLES_DIR" --url "127.0.0.1:$GRPC_PORT" || true

step "load test: Locust, 20 s headless"
cxr loadtest run --url "127.0.0.1:$GRPC_PORT" --users 8 --duration 20s \
  --html "$WORK/locust.html" --csv "$WORK/locust" || true

step "stop the server"
kill -TERM $SERVER
wait $SERVER || true
trap - EXIT
echo "demo finished: artefacts in $WORK"
