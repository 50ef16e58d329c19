#!/usr/bin/env bash
# The main job end to end on the embedded default, with no external server: convert the bundled
# SmolLM2-135M to safetensors (once), compress it by 30 % with IntraSlice, evaluate, save and verify.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
MODEL=$(python -m bench.smollm2)
OUT=${OUT:-out/smollm2-135m-intraslice-30}
slimkit compress "$MODEL" --method intraslice --ratio 0.3 --out "$OUT" "$@"
echo "compressed model: $OUT (load with AutoModelForCausalLM.from_pretrained('$OUT', trust_remote_code=True))"
