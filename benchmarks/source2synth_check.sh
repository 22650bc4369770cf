#!/usr/bin/env bash
# Issue 18 check (benchmarks/RESULTS.md, stop 38). Inputs in $T: corpus.jsonl + tables.jsonl written by
# write_inputs(..., questions=3, tables=10) of tests/test_source2synth_pipeline.py, run2 = the curated run
# (synthrag run source2synth ... --out $T/run2 --limit 10), heldout.tsv = WTQ questions on other tables.
set -x
cd "$(dirname "$0")/.."
S=.venv/bin/synthrag
T=${T:-/tmp/s2sb}
rm -rf $T/run3 && cp -r $T/run2 $T/run3
time $S run source2synth --corpus $T/corpus.jsonl --tables $T/tables.jsonl --out $T/run3 --limit 10 \
  --set source2synth.multihop.enabled=false --set source2synth.curation.max_steps=5 --set source2synth.curation.enabled=false > $T/run3.log 2>&1
tail -5 $T/run3.log
for v in run2:cur run3:uncur; do r=${v%%:*}; n=${v##*:}
  time $S train generator --data $T/$r --out $T/ft_$n --lora --workers 1 --epochs 3 --batch-size 2 > $T/ft_$n.log 2>&1
  tail -3 $T/ft_$n.log
done
for m in embedded $T/ft_cur/model $T/ft_uncur/model; do n=$(basename $(dirname $m)); [ $m = embedded ] && n=base
  time $S eval tableqa --model $m --questions $T/heldout.tsv --tables ../shared/data/wikitablequestions/tables.jsonl \
    --limit 30 --out $T/eval_$n.json > $T/eval_$n.log 2>&1
  tail -4 $T/eval_$n.log
done
