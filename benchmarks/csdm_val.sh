#!/bin/bash
# usage: DATA=../shared/datasets [ITERS=300] [SEED=0] [IF=50] bash benchmarks/csdm_val.sh alpha|kernel|long|extractor|batch   (about 3 minutes a row on 2 cores)
# CSDM's unknowns (methods.md §2) chosen on a validation split: distil from the IF-50 subset of
# train_1..2 (IF=200: the paper's headline imbalance), judge on train_3 (the test split train_4
# is never used).
#   alpha:  the α schedule (head / tail), Gaussian kernel, σ = 1
#   kernel: the kernel (Gaussian, Laplacian, Cauchy) at the default bandwidth σ = 1, and the
#           Gaussian's bandwidth (0.5, 1, 2, the median pairwise distance), α 0.7 / 0.3
#   long:   DM against CSDM (defaults) at ITERS iterations (ITERS=2000: 13-16 minutes a row)
#   extractor: DM, CSDM with random extractors (the default) and with NCFM's pool of trained,
#           blended extractors at a CPU scale (POOL=4x10: 4 networks of 10 epochs; NCFM's 20x60)
#   batch:  DM against CSDM with BR real images per class a step (BR=256, DM's default; the
#           other modes use the suite's 64 unless BR is set; NCFM reads 1,024 a class)
set -e
D=${DATA:-../shared/datasets}/cifar10
ITERS=${ITERS:-300}
BR=${BR:-$([ "$1" = batch ] && echo 256 || echo 64)}  # real images per class a step
SEED=${SEED:-0}  # distillation and judge; another seed writes rows of its own (TAG-sN)
IF=${IF:-50}  # imbalance factor of the long-tailed subset; another writes rows of its own (TAG-ifN)
W=${WORKDIR:-/tmp/csdmval}; [ $ITERS = 300 ] || W=$W-$ITERS; mkdir -p $W
SETS=(--train-files "train_[12].npz" --imbalance-factor $IF)
run() { tag=$1; shift  # a row whose report exists is not run again (resumable)
  # the tag names every knob off its default, so a row of another batch or seed never reuses
  # (resumes from) a report made with other knobs
  [ $BR = 64 ] || tag=$tag-br$BR
  [ $SEED = 0 ] || tag=$tag-s$SEED
  [ $IF = 50 ] || tag=$tag-if$IF
  [ -s $W/$tag.json ] || ddcli distill $D "${SETS[@]}" --ipc 10 --iterations $ITERS --batch-real $BR --width 64 --seed $SEED --device cpu --checkpoint-every 0 -o $W/$tag.safetensors --force --quiet "$@"
  [ -s $W/$tag.json ] || ddcli evaluate $W/$tag.safetensors --test $D --test-files train_3.npz -p dm --models 3 --epochs 300 --seed $SEED --device cpu --json --quiet > $W/$tag.json
  python -c "import json; r=json.load(open('$W/$tag.json'))['result']; print('$tag', r['accuracy_mean'], r['accuracy_std'], r['accuracy_per_model'], r.get('group_accuracy'))"
}
case ${1:-alpha} in
alpha)
  run dm -m dm
  run csdm-0.7-0.3 -m csdm
  run csdm-0.5-0.5 -m csdm --alpha-head 0.5 --alpha-tail 0.5
  run csdm-0.9-0.1 -m csdm --alpha-head 0.9 --alpha-tail 0.1 ;;
kernel)
  run dm -m dm
  run csdm-gaussian-1 -m csdm
  run csdm-laplacian-1 -m csdm --kernel laplacian
  run csdm-cauchy-1 -m csdm --kernel cauchy
  run csdm-gaussian-0.5 -m csdm --sigma 0.5
  run csdm-gaussian-2 -m csdm --sigma 2
  run csdm-gaussian-median -m csdm --sigma median ;;
long)
  run dm -m dm
  run csdm -m csdm ;;
extractor)
  POOL=${POOL:-4x10}
  run dm -m dm
  run csdm -m csdm
  run csdm-pool-$POOL -m csdm --extractor pool --pool-size ${POOL%x*} --pool-epochs ${POOL#*x} ;;
batch)
  run dm -m dm
  run csdm -m csdm ;;
*) echo "usage: [ITERS=N] [POOL=NxE] [BR=N] [SEED=N] [IF=N] $0 alpha|kernel|long|extractor|batch" >&2; exit 2 ;;
esac
