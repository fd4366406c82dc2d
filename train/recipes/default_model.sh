#!/usr/bin/env bash
# The shipped model again from its recipes on a CPU (57 minutes on two cores, other work beside it for half of them),
# then its weights' sha256 beside the shipped folder's and whether they match (they do on the AMD EPYC with AVX2 it was
# trained on; exit 1 where not). Each step writes its folder under runs/; docs/models.md gives every step's figures
# and why the kernels are pinned below:
#   pip install -e ".[train]" && bash train/recipes/default_model.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
DATA=../shared/data  # as in the recipes
# An AVX2 CPU's kernels on every x86 CPU: ATen's and oneDNN's instruction sets change the rounding of training (a CPU
# with AVX-512 trained other Keras weights from the same recipe), MKL's conditional reproducibility fixes its code path
export ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_CBWR=AVX2 OMP_NUM_THREADS=2

pneumo-hf checkpoint tf_efficientnet_lite0 --output_dir checkpoints/tf_efficientnet_lite0
python train/train.py train/recipes/tf_efficientnet_lite0_linear_probe.json
python train/train.py train/recipes/keras_cnn_104_seed1.json
python train/train.py train/recipes/keras_cnn_104_seed2.json
python train/ensemble.py runs/keras_cnn_104/seed_1 runs/keras_cnn_104/seed_2 --output_dir runs/keras_pair \
    --save_fp16 --fp16_tolerance 0.01 --test_dev_dir $DATA/chest_xray_224/test_dev
python train/ensemble.py runs/tf_efficientnet_lite0_linear_probe runs/keras_pair --output_dir runs/lite0_keras_pair \
    --min_sensitivity 0.95 --save_fp16 --fp16_tolerance 0.01 --test_dev_dir $DATA/chest_xray_224/test_dev \
    --hub_model_id pneumo-hf/chest-xray-pneumonia-ensemble-lite0-keras
python train/fit_domain_check.py --model runs/lite0_keras_pair --features pooled --calibration_dir $DATA/chest_xray_224/test_dev \
    --pool_validation --max_flagged 0.03 --report_dir $DATA/adult_check
python train/write_card.py --model runs/lite0_keras_pair  # the card again, with the check just fitted
sha256sum runs/lite0_keras_pair/model.safetensors pneumo_hf/default_model/model.safetensors
if cmp -s runs/lite0_keras_pair/model.safetensors pneumo_hf/default_model/model.safetensors; then
    echo "runs/lite0_keras_pair holds the shipped weights, bit for bit."
else
    echo "runs/lite0_keras_pair holds other weights than pneumo_hf/default_model: docs/models.md says which CPUs give them back." >&2
    exit 1
fi
