#!/usr/bin/env bash
# Train default-voice LM candidates side by side on one GPU from a token pack, inside a time budget.
#   scripts/gpu_voice.sh PACK OUTDIR MINUTES
# Made for a time-boxed GPU lease (no audio, codec or extra packages needed there: torch, numpy,
# safetensors, tqdm). Small models leave most of a GPU idle, so the candidates train concurrently.
# Each candidate's lowest-validation-loss weights are kept (--keep-best) and packed as
# OUTDIR/NAME.tar.gz with the weights in float16 (half the bytes; loading casts back to float32).
set -uo pipefail
pack="$1"; outdir="$2"; minutes="$3"
export PYTHONUNBUFFERED=1
py="${PYTHON:-python3}"
mkdir -p "$outdir" runs/gpu
"$py" -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu')"

common=(--data "$pack" --batch-size 64 --warmup 300 --mtp-heads 3 --max-seq-len 1024 --max-seconds 15
        --val-every 250 --save-every 1000000 --log-every 25 --keep-best --no-progress --val-fraction 0.03)
distill_minutes=$(python3 -c "print(round($minutes * 0.25, 2))")
base_minutes=$(python3 -c "print(round($minutes - $distill_minutes, 2))")
train() {  # NAME MINUTES ARGS...
  local name="$1" mins="$2"; shift 2
  "$py" -m speechmtp.cli train "${common[@]}" --out "runs/gpu/$name" --time-budget "$mins" --steps 200000 "$@" \
    > "$outdir/$name.log" 2>&1
}
# s: the shipped size (CPU real time on 2 cores); its heads are then self-distilled on the best base
( train s "$base_minutes" --d-model 256 --n-layers 4 --n-heads 4 --dropout 0.1 --lr 2e-3 \
  && base=runs/gpu/s/best && { [ -d "$base" ] || base=runs/gpu/s; } \
  && "$py" -m speechmtp.cli train --data "$pack" --out runs/gpu/s-distilled --from "$base" --heads-only \
       --distill --batch-size 64 --lr 1e-3 --warmup 100 --steps 200000 --time-budget "$distill_minutes" \
       --max-seconds 15 --val-every 250 --save-every 1000000 --log-every 25 --no-progress --val-fraction 0.03 \
       > "$outdir/s-distilled.log" 2>&1 ) &
# m: a larger model, to measure how much capacity is worth on this data
train m "$minutes" --d-model 384 --n-layers 6 --n-heads 6 --dropout 0.1 --lr 1e-3 &
wait
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv || true

for name in s s-distilled m; do
  src="runs/gpu/$name"; [ -d "$src/best" ] && [ "$name" != s-distilled ] && src="$src/best"
  [ -f "$src/model.safetensors" ] || { echo "no weights for $name"; continue; }
  "$py" - "$src" "runs/gpu/ship-$name" <<'PY'
import sys, shutil
from pathlib import Path
from safetensors.torch import load_file, save_file
src, dst = Path(sys.argv[1]), Path(sys.argv[2])
dst.mkdir(parents=True, exist_ok=True)
t = load_file(str(src / "model.safetensors"))
save_file({k: v.half() if v.is_floating_point() else v for k, v in t.items()}, str(dst / "model.safetensors"),
          metadata={"format": "speechmtp-lm"})
for f in ("config.json", "best.json"):
    if (src / f).is_file():
        shutil.copy(src / f, dst / f)
run = src.parent if src.name == "best" else src
for f in ("metrics.jsonl", "README.md", "loss.png"):
    if (run / f).is_file():
        shutil.copy(run / f, dst / f)
PY
  tar -C runs/gpu -czf "$outdir/$name.tar.gz" "ship-$name"
  # the lease returns files of at most 16 MB: split bigger ones (cat NAME.tar.gz.part-* | tar xz)
  if [ "$(stat -c %s "$outdir/$name.tar.gz")" -gt 15000000 ]; then
    split -b 15000000 "$outdir/$name.tar.gz" "$outdir/$name.tar.gz.part-" && rm "$outdir/$name.tar.gz"
  fi
done
ls -la "$outdir"
