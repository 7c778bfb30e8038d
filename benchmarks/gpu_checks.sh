#!/bin/bash
# The checks to run when a GPU machine is lent (one call; ~5 minutes on an H100):
#   1. the CUDA-only tests, then the whole suite with CUDA visible (faults a CPU machine cannot show:
#      session 8 found four this way);
#   2. the synthetic Mask2Former config's training step: time, host synchronisations, copies, launches;
#   3. the Hugging Face comparison on CUDA.
# The machine's python has torch, timm, scipy and transformers but not pycocotools: put its wheel in
# .whl/ first (see the device tool's README: pip download --only-binary=:all: --python-version 3.12
# ... pycocotools) and carry .whl. Usage there: bash benchmarks/gpu_checks.sh
set -u
export PYTHONUNBUFFERED=1
T0=$(date +%s)
step() { echo "[t+$(( $(date +%s) - T0 ))s] $*"; }
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
fi
export PYTHONPATH=$PWD/src:/tmp/site
nvidia-smi -L
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
D=/tmp/masklab_gpu_data
python3 -m masklab data synth --out $D --num-train 2000 --num-val 60 --seed 0 | tail -1
CFG=configs/mask2former/mask2former_regnetx002_1xb8-2200i_synthetic-128x128.yaml
step "CUDA-only tests"
timeout 150 python3 -m pytest -q -p no:cacheprovider -o addopts="" -W ignore tests/engine/test_trainer.py -k cuda 2>&1 | tail -2
step "train step profile (piloting on, then off)"
for extra in "" "model.decoder.mask_piloting=null"; do
  timeout 120 python3 benchmarks/train_step_profile.py $CFG dataset.root=$D runtime.device=cuda \
    runtime.num_threads=4 train.num_workers=2 $extra --warmup 8 --steps 30 2>&1 | grep -E "step|per step"
done
step "HF comparison on CUDA"
timeout 150 python3 benchmarks/mask2former_vs_hf.py --device cuda --runs 10 --warmup 3 --threads 4 2>&1 | grep -E "ratio|device"
step "whole test suite with CUDA visible"
timeout 240 python3 -m pytest -q -n 14 -p no:cacheprovider -o addopts="" -W ignore --timeout 200 tests 2>&1 | tail -25
step "done"
