#!/usr/bin/env bash
# Reproduce the README's SciFact quality tables in one command, each step writing benchmarks/results/:
#   1. train_scifact.py    base / fine-tuned dense / LM-Cocktail / M3 (dense, sparse, ColBERT, all three) and BM25
#   2. scifact_subsets.py  the same models per test query: overall, seen_docs, unseen_docs, paired p-values
#   3. rerank_scifact.py   first stage, trained cross-encoder, LLM reranker
#   4. train_scifact.py --without-dev-slice   the dense and M3 models' tuning copies (no results file)
#   5. best_pipeline.py    every first-stage signal fused, the cross-encoder on top, then CISI / Cranfield
# About 3 hours on 2 fast CPU cores (far more on cores without native bf16). Usage: bash benchmarks/scifact_tables.sh [SCIFACT_FOLDER]
# (needs `bash scripts/setup.sh bench`; SciFact in BEIR format, default ../shared/data/beir/scifact)
set -euo pipefail
cd "$(dirname "$0")/.."
data="${1:-../shared/data/beir/scifact}"
if [ ! -f "$data/corpus.jsonl" ] || [ ! -f "$data/qrels/train.tsv" ] || [ ! -f "$data/qrels/test.tsv" ]; then
  echo "scifact_tables.sh: $data is not a BEIR SciFact folder (corpus.jsonl, qrels/train.tsv, qrels/test.tsv)" >&2
  exit 2
fi
python=.venv/bin/python
for step in train_scifact scifact_subsets rerank_scifact; do
  echo "== $step ($(date -u +%H:%M) UTC)" >&2
  "$python" "benchmarks/$step.py" --data "$data"
done
echo "== train_scifact --without-dev-slice ($(date -u +%H:%M) UTC)" >&2
"$python" benchmarks/train_scifact.py --data "$data" --without-dev-slice
echo "== best_pipeline ($(date -u +%H:%M) UTC)" >&2
"$python" benchmarks/best_pipeline.py --data "$data"
