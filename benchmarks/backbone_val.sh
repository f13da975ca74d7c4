#!/bin/bash
# usage: DATA=../shared/datasets bash benchmarks/backbone_val.sh [ROW ...]   (on 2 cores: SFM ~12, LGM ~30 minutes a row, each evaluation ~4)
# SFM's and LGM's unmeasured knobs (docs/fidelity.md) chosen on a validation split: distil as
# the quality suite's IPC 1 backbone rows (cifar10-30k, 100 real images per class, 1,000
# iterations, SFM 1 view, LGM 2 views, golden head 10 epochs, EfficientNet-Lite0, seed 0), judge
# with the linear probe (300 epochs, 3 heads) with and without classifier inheritance on 100
# images per class of the real set (train_3) that are not in the 100-per-class subset (the test
# split, train_4, is never used). Rows: M-rN (M sfm or lgm; --syn-res N, 0 the data's 32 px;
# --pyramid-every 150 at 32 px, the suite's, and 100 at 256 px, so that the finest level arrives
# at 75-80 % of the run either way), M-rN-peK (--pyramid-every K), M-rN-peK-itI (--iterations I,
# 1,000 otherwise; sfm-r0-pe200-it5000: the reference's schedule and length). The sfm-r0 row also
# evaluates random real images (--baseline random). TEST=1 also judges every row on the backbone
# rows' test set (the first 100 images per class of train_4): only for settings chosen without it
# (the reference's). RESULTS.md, "Synthetic resolution".
set -e
D=${DATA:-../shared/datasets}/cifar10
W=${WORKDIR:-/tmp/bbval}; mkdir -p $W/val
# the validation split: the first 100 images per class of train_3 outside the distilled subset
[ -s $W/val/test.npz ] || python - "$D" "$W/val" <<'PY'
import sys
from pathlib import Path
sys.path.insert(0, "benchmarks")
from common import held_out_subset
from ddcli.data import load_dataset
src, out = Path(sys.argv[1]), Path(sys.argv[2])
ds = load_dataset(src, files="train_[123].npz", max_per_class=100)
held_out_subset(src, "train_3.npz", ds.images.permute(0, 2, 3, 1).numpy(), out, by_class=True)
PY
[ -z "$TEST" ] || [ -s $W/test/test.npz ] || python -c "import sys; from pathlib import Path
sys.path.insert(0, 'benchmarks'); from common import per_class_subset
per_class_subset(Path('$D'), Path('$W/test'), 100)"
JUDGE=(-p linear-probe --models 3 --epochs 300 --seed 0 --device cpu --json --quiet)
run() { tag=$1 m=$2; shift 2  # a row whose reports exist is not run again (resumable)
  augs=1; [ $m = lgm ] && augs=2
  base=(); [ $tag = sfm-r0 ] && base=(--baseline random --real $D --real-files 'train_[123].npz')
  [ -s $W/$tag.safetensors ] || /usr/bin/time -f "$tag distill %e s %M KB" ddcli distill $D \
    --train-files 'train_[123].npz' -m $m --ipc 1 --max-per-class 100 \
    --augs $augs --golden-head-epochs 10 --seed 0 --device cpu -o $W/$tag.safetensors --force \
    --checkpoint-every 0 --quiet "$@"
  for mode in probe inherit ${TEST:+test.probe test.inherit}; do  # [test.]probe|inherit
    split=val; [ $mode = ${mode#test.} ] || split=test
    flag=(); [ ${mode#test.} = inherit ] && flag=(--inherit)
    [ -s $W/$tag.$mode.json ] || ddcli evaluate $W/$tag.safetensors "${JUDGE[@]}" --test $W/$split "${flag[@]}" "${base[@]}" > $W/$tag.$mode.json
    python -c "import json; d=json.load(open('$W/$tag.$mode.json')); r=d['result']; b=d.get('baseline') or {}
print('$tag', '$mode', r['accuracy_mean'], r['accuracy_std'], r['accuracy_per_model'], *(['random real', b['accuracy_mean'], b['accuracy_std']] if b else []))"
  done
}
for row in ${@:-sfm-r0 sfm-r256 lgm-r0 lgm-r256}; do
  m=${row%%-*} res=0 pe= it=1000
  for part in $(echo ${row#*-} | tr - ' '); do
    case $part in r*) res=${part#r} ;; pe*) pe=${part#pe} ;; it*) it=${part#it} ;; esac
  done
  [ -n "$pe" ] || pe=$([ $res = 0 ] && echo 150 || echo 100)
  run $row $m --syn-res $res --pyramid-every $pe --iterations $it
done
