#!/bin/sh
# X-ELM on one GPU node, as the paper does it: experts branched from a pretrained XGLM, each
# trained on the mC4 text of its typological cluster (streamed from the Hugging Face Hub),
# several experts at once on the node's GPUs, then the ensemble against the dense model on
# FLORES-200. Every size is a variable; the defaults are the recipe (README "A GPU node").
#
#   DEVICES=0,1,2,3,4,5,6,7 NPROC=2 sh docs/recipes/gpu-node.sh
#
# A re-run continues: finished steps are skipped, a killed data preparation or training
# resumes. tests/test_recipe.py runs this script with tiny sizes on a CPU (PARALLEL=2).
set -eu

XELM=${XELM:-xelm}                       # the command (tests: "python -m xelm_cli")
MODEL=${MODEL:-facebook/xglm-564M}       # a Hub id or a local model directory
LANGS=${LANGS:-ar,bg,de,el,en,es,fr,hi,ja,ko,ru,sw,tr,ur,vi,zh}
CORPUS=${CORPUS:-mc4}                    # a shipped corpus recipe, a Hub dataset or a directory
CAP=${CAP:-500M}                         # training tokens read per language
K=${K:-4}                                # experts
BUDGET=${BUDGET:-2B}                     # dense tokens; the K experts share as many
TRAIN_ARGS=${TRAIN_ARGS:---block-size 2048 --batch-size 8 --lr 2e-4 --warmup-steps 200}
DEVICES=${DEVICES:-}                     # GPUs to share out, e.g. 0,1,2,3,4,5,6,7
NPROC=${NPROC:-1}                        # GPUs per run (torchrun, DDP) when more than 1
PARALLEL=${PARALLEL:-1}                  # without DEVICES: runs at once (a CPU machine)
EVAL=${EVAL:-openlanguagedata/flores_plus}
EVAL_LIMIT=${EVAL_LIMIT:-1012}           # sentences per language
OUT=${OUT:-xelm-node}

mkdir -p "$OUT"
# The seed: XGLM ships only pytorch_model.bin; --convert-pickle reads it with torch's
# weights_only loader and stores safetensors (recorded in the lineage).
[ -f "$OUT/seed/xelm.json" ] ||
    $XELM bundle init --hf "$MODEL" --convert-pickle --langs "$LANGS" -o "$OUT/seed"
# Token shards with the seed's own tokenizer (a killed run continues; a finished one is kept).
[ -f "$OUT/shards/shards.json" ] ||
    $XELM data prepare "$CORPUS" --langs "$LANGS" --cap "$CAP" -t "$OUT/seed" -o "$OUT/shards"
[ -f "$OUT/alloc.json" ] ||
    $XELM cluster typology --langs "$LANGS" -k "$K" -o "$OUT/alloc.json"
# Equal compute: each expert BUDGET/K tokens of its languages, the dense model BUDGET of all.
$XELM plan --budget "$BUDGET" --allocation "$OUT/alloc.json" --seed-bundle "$OUT/seed" \
    --data "$OUT/shards" -o "$OUT/runs" --train-args "$TRAIN_ARGS" --nproc-per-node "$NPROC" \
    --json > "$OUT/plan.json.tmp"
mv "$OUT/plan.json.tmp" "$OUT/plan.json"
if [ -n "$DEVICES" ]; then
    $XELM train-all "$OUT/plan.json" --devices "$DEVICES" --nproc-per-node "$NPROC"
else
    $XELM train-all "$OUT/plan.json" --parallel "$PARALLEL"
fi
# The ensemble (language router), each expert alone and the dense model on the same text.
$XELM ensemble eval "$OUT"/runs/experts/* --router language --data "$EVAL" --langs "$LANGS" \
    --limit "$EVAL_LIMIT" --each --baseline "$OUT/runs/dense" -o "$OUT/results.json" --force
