#!/bin/bash
# usage: DATA=../shared/datasets bash benchmarks/csdm_alpha_val.sh   (about 12 minutes on 2 cores)
# CSDM's alpha on a validation split: distil from the IF-50 subset of train_1..2, judge on train_3 (never train_4)
D=${DATA:-../shared/datasets}/cifar10
W=${WORKDIR:-/tmp/csdmval}; mkdir -p $W
run() { tag=$1; shift
  ddcli distill $D --train-files "train_[12].npz" --imbalance-factor 50 --ipc 10 --iterations 300 --batch-real 64 --width 64 --seed 0 --device cpu --checkpoint-every 0 -o $W/$tag.safetensors --force --quiet "$@"
  ddcli evaluate $W/$tag.safetensors --test $D --test-files train_3.npz -p dm --models 3 --epochs 300 --seed 0 --device cpu --json --quiet > $W/$tag.json
  python3 -c "import json; r=json.load(open('$W/$tag.json'))['result']; print('$tag', r['accuracy_mean'], r['accuracy_std'], r['accuracy_per_model'], r.get('group_accuracy'))"
}
run dm -m dm
run csdm-0.7-0.3 -m csdm
run csdm-0.5-0.5 -m csdm --alpha-head 0.5 --alpha-tail 0.5
run csdm-0.9-0.1 -m csdm --alpha-head 0.9 --alpha-tail 0.1
