#!/bin/bash
# usage: DATA=../shared/datasets bash benchmarks/otgen_val.sh [ROW ...]   (about 7 minutes a row on 2 cores; the first 20: it trains the prior)
# otgen's unmeasured knobs (docs/fidelity.md: --ot-scale, --dev-scale, the UNet prior's --cfg-scale)
# chosen on a validation split: distil from the built-in sample (as the quality suite's otgen
# rows: IPC 10, prior 1,500 steps, channels 32,64,64, 50 sampling steps), relabel with a ConvNet
# teacher trained on the sample (15 epochs), judge under `otm` on 100 images per class of
# Fashion-MNIST's official *train* set that are not in the sample (the sample's test split, the
# suite's test set, is never used). Rows: otN (--ot-scale N; ot0 unguided, ot5 IGD's k, ot15 the
# UNet default since), cfgN (--cfg-scale N at --ot-scale 5), devN (--dev-scale N at --ot-scale
# 5), otN-devM, infK (IGD's influence guidance --influence-scale K, OT at its default),
# infK-otN, otN-rpcM (--real-per-class M: real samples in the OT cost; the sample preset's 64
# otherwise), otN-psM (--prior-steps M: a longer-trained prior), real (random real images,
# relabelled alike). RESULTS.md, "otgen's guidance scale".
set -e
D=${DATA:-../shared/datasets}/fashion_mnist
W=${WORKDIR:-/tmp/otval}; mkdir -p $W/val
# the validation split: the first 100 images per class of train.npz outside the sample
[ -s $W/val/val.npz ] || python - "$D" "$W/val" <<'PY'
import sys
from pathlib import Path
import numpy as np
sys.path.insert(0, "benchmarks")
from common import held_out_subset
from ddcli.data import sample_dir
src, out = Path(sys.argv[1]), Path(sys.argv[2])
held_out_subset(src, "train.npz", np.load(f"{sample_dir()}/train.npz")["images"], out,
                name="val.npz", classes=Path(sample_dir()))
PY
COMMON=(-m otgen --ipc 10 --prior-steps 1500 --prior-channels 32,64,64 --sampling-steps 50 --seed 0 --device cpu --checkpoint-every 0 --quiet)
JUDGE=(--test $W/val -p otm --models 3 --epochs 300 --seed 0 --device cpu --json --quiet)
run() { tag=$1; shift  # a row whose report exists is not run again (resumable)
  if [ ! -s $W/$tag.json ]; then
    if [ $tag = real ]; then  # random real images of the sample, relabelled by the same teacher
      soft=$(ls $W/*-soft.safetensors 2>/dev/null | head -1)  # any row's: its teacher
      [ -n "$soft" ] || { echo "run a distillation row first" >&2; exit 2; }
      ddcli evaluate $soft "${JUDGE[@]}" --baseline random > $W/real.full.json
      python -c "import json; r=json.load(open('$W/real.full.json')); print(json.dumps({'result': r['baseline']}))" > $W/real.json
    else
      /usr/bin/time -f "$tag distill %e s %M KB" ddcli distill "${COMMON[@]}" -o $W/$tag.safetensors --force "$@" "${EXTRA[@]}"
      ddcli relabel $W/$tag.safetensors --train-teacher convnet --teacher-epochs 15 --seed 0 --device cpu -o $W/$tag-soft.safetensors --force --quiet
      ddcli evaluate $W/$tag-soft.safetensors "${JUDGE[@]}" > $W/$tag.json
    fi
  fi
  python -c "import json; r=json.load(open('$W/$tag.json'))['result']; print('$tag', r['accuracy_mean'], r['accuracy_std'], r['accuracy_per_model'])"
}
for tag in ${@:-ot5 ot0 real ot15 ot50 cfg4 dev50}; do
  row=${tag%-noema}; EXTRA=(); [ $row = $tag ] || EXTRA=(--no-prior-ema)
  case $row in  # the cfg and dev rows at --ot-scale 5, as measured (the default is 15 since)
  real) run real ;;
  ot*-dev*) a=${row#ot}; run $tag --ot-scale ${a%-dev*} --dev-scale ${a#*-dev} ;;
  ot*-rpc*) a=${row#ot}; run $tag --ot-scale ${a%-rpc*} --real-per-class ${a#*-rpc} ;;
  ot*-ps*) a=${row#ot}; run $tag --ot-scale ${a%-ps*} --prior-steps ${a#*-ps} ;;
  inf*-ot*) a=${row#inf}; run $tag --influence-scale ${a%-ot*} --ot-scale ${a#*-ot} ;;
  inf*) run $tag --influence-scale ${row#inf} ;;
  ot*) run $tag --ot-scale ${row#ot} ;;
  cfg*) run $tag --ot-scale 5 --cfg-scale ${row#cfg} ;;
  dev*) run $tag --ot-scale 5 --dev-scale ${row#dev} ;;
  *) echo "unknown row $row" >&2; exit 2 ;;
  esac
done
