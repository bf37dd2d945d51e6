#!/usr/bin/env bash
# Train default-voice LM candidates side by side on one GPU from a token pack, inside a time budget.
#   scripts/gpu_voice.sh PACK OUTDIR MINUTES
# Made for a time-boxed GPU lease: it needs torch, numpy, safetensors and tqdm there, and no audio,
# codec or audio libraries. Small models leave most of a GPU idle, so the candidates train concurrently.
# Each candidate: the base LM with its MTP heads (--keep-best keeps the lowest validation loss), then,
# where asked, a quarter of the budget of heads-only self-distillation on that best base. The result is
# packed as OUTDIR/NAME.tar.gz (weights in float16: half the bytes; loading casts back to float32), with
# the training logs, metrics and cards of both stages; files over 15 MB are split (cat NAME.tar.gz.* | tar xz).
set -uo pipefail
pack="$1"; outdir="$2"; minutes="$3"
export PYTHONUNBUFFERED=1
py="${PYTHON:-python3}"
mkdir -p "$outdir" runs/gpu
"$py" -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu')"

common=(--data "$pack" --batch-size 64 --max-seconds 15 --val-every 250 --save-every 1000000 --log-every 25
        --no-progress --val-fraction 0.03 --steps 1000000)

candidate() {  # NAME DISTILL(yes|no) ARCH_ARGS...
  local name="$1" distill="$2"; shift 2
  local run="runs/gpu/$name" base_min="$minutes" d_min=0
  if [ "$distill" = yes ]; then
    d_min=$("$py" -c "print(round($minutes * 0.25, 2))"); base_min=$("$py" -c "print(round($minutes - $d_min, 2))")
  fi
  "$py" -m speechmtp.cli train "${common[@]}" --out "$run" --time-budget "$base_min" --keep-best --warmup 300 \
    --mtp-heads 3 --max-seq-len 1024 "$@" > "$run.log" 2>&1 || { echo "$name: base training failed"; tail -n 5 "$run.log"; }
  local best="$run/best"; [ -f "$best/model.safetensors" ] || best="$run"
  local final="$best"
  if [ "$distill" = yes ]; then
    "$py" -m speechmtp.cli train "${common[@]}" --out "$run-distilled" --from "$best" --heads-only --distill \
      --lr 1e-3 --warmup 100 --time-budget "$d_min" > "$run-distilled.log" 2>&1 \
      && final="$run-distilled" || { echo "$name: distillation failed"; tail -n 5 "$run-distilled.log"; }
  fi
  [ -f "$final/model.safetensors" ] || { echo "$name: no weights"; return; }
  local ship="runs/gpu/ship-$name"
  rm -rf "$ship"; mkdir -p "$ship/base" "$ship/distill"
  "$py" - "$final" "$ship" <<'PY'
import sys
from safetensors.torch import load_file, save_file
t = load_file(sys.argv[1] + "/model.safetensors")
save_file({k: v.half() if v.is_floating_point() else v for k, v in t.items()}, sys.argv[2] + "/model.safetensors",
          metadata={"format": "speechmtp-lm"})
PY
  cp "$final/config.json" "$ship/"
  cp "$run.log" "$run"/{metrics.jsonl,README.md,loss.png} "$best/best.json" "$ship/base/" 2>/dev/null
  [ "$final" = "$run-distilled" ] && cp "$run-distilled.log" "$run-distilled"/{metrics.jsonl,README.md,loss.png} "$ship/distill/" 2>/dev/null
  tar -C runs/gpu -czf "$outdir/$name.tar.gz" "ship-$name"
  if [ "$(stat -c %s "$outdir/$name.tar.gz")" -gt 15000000 ]; then
    split -b 15000000 "$outdir/$name.tar.gz" "$outdir/$name.tar.gz." && rm "$outdir/$name.tar.gz"
  fi
  echo "$name: shipped $final"; grep -h '"split": "val"' "$run/metrics.jsonl" | tail -n 1 | cut -c1-300
}

# s / sc: the shipped size (d256, 4 layers: real time on a 2-core CPU), independent vs cascaded heads.
# m: a larger model, to measure what capacity is worth on this data (too slow for the 2-core target).
candidate s yes --d-model 256 --n-layers 4 --n-heads 4 --dropout 0.1 --lr 2e-3 &
candidate sc yes --d-model 256 --n-layers 4 --n-heads 4 --dropout 0.1 --lr 2e-3 --mtp-kind cascaded &
candidate m no --d-model 384 --n-layers 6 --n-heads 6 --dropout 0.1 --lr 1e-3 &
wait
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv
ls -la "$outdir"
