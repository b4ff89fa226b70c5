#!/usr/bin/env bash
# Regenerate the console captures in docs/captures/ (run from the repository root, offline, CPU;
# DATA is the offline data folder with the benchmark files).
set -euo pipefail
DATA=${DATA:-../shared/data}
OUT=docs/captures
RUN=$(mktemp -d)
export OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
{ echo '$ lightning-robust --help'; python cli.py --help; } > $OUT/help.txt 2>&1
{ echo '$ lightning-robust fit --model.help DPO  (first 30 lines)'; python cli.py fit --model.help DPO | head -30; } > $OUT/model_help.txt 2>&1
# a short tiny DPO fit: progress bar with DPO figures, a table per validation, first-vs-last at the end,
# and the sample table with the robust weight n*q of each example (TV ball rho=0.4 over the batch)
{ echo '$ lightning-robust fit --config configs/dpo/tiny_dr_dpo_tv.yaml --trainer.max_steps 40 --trainer.val_check_interval 20 --trainer.callbacks+=SampleTable --trainer.callbacks.every_n_steps=20 --trainer.callbacks+=HFExport ...'
  python cli.py fit --config configs/dpo/tiny_dr_dpo_tv.yaml --trainer.max_steps 40 --trainer.val_check_interval 20 \
    --trainer.default_root_dir "$RUN/dpo" --trainer.logger false --trainer.enable_checkpointing false \
    --trainer.callbacks+=SampleTable --trainer.callbacks.every_n_steps=20 --trainer.callbacks.num_rows=6 \
    --trainer.callbacks+=HFExport --trainer.callbacks.output_dir="$RUN/dpo/hf_model" 2>&1 \
    | tr '\r' '\n' | grep -v -E '^(Validation|Sanity|Training:)|^\s*(\[A)?\s*$' \
    | awk '!/^Epoch 0:/ || /\| (1|10|20|30|40)\/250 .*train\/loss/'; } > $OUT/fit_dpo.txt 2>&1
cp "$RUN/dpo/hf_model/README.md" $OUT/model_card_dpo.md
# the quickstart's DR reward model: the sample table with both rewards of each pair
{ echo '$ lightning-robust fit --config configs/quickstart.yaml --trainer.max_steps 21 --trainer.callbacks+=SampleTable --trainer.callbacks.every_n_steps=10 ...'
  python cli.py fit --config configs/quickstart.yaml --trainer.max_steps 21 --trainer.default_root_dir "$RUN/rm" \
    --trainer.logger false --trainer.enable_progress_bar false \
    --trainer.callbacks+=SampleTable --trainer.callbacks.every_n_steps=10 --trainer.callbacks.num_rows=6 \
    --trainer.callbacks.max_chars=36 2>&1; } > $OUT/fit_reward_samples.txt 2>&1
{ echo "\$ lightning-robust eval --model tiny --benchmarks rewardbench,hhh,mt_bench,pairwise --data $DATA --max-rows 40 --max-length 256"
  python cli.py eval --model tiny --benchmarks rewardbench,hhh,mt_bench,pairwise --data "$DATA" --max-rows 40 \
    --max-length 256 --output "$RUN/eval"; ls "$RUN/eval"; } > $OUT/eval_tiny.txt 2>&1
{ echo '$ pip install -e . (pins in pyproject.toml) ; python -m pytest -q tests/test_pins.py'
  sed -n '/^dependencies = \[/,/^\]/p;/^\[project.optional-dependencies\]/,/^dev = /p' pyproject.toml
  python -m pytest -q tests/test_pins.py 2>&1 | tail -1; } > $OUT/pins.txt 2>&1
rm -rf "$RUN"
