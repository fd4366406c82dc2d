#!/usr/bin/env bash
# The shipped model again from its recipes on a CPU (57 minutes on two cores, other work beside it for half of them),
# then its weights' sha256 beside the shipped folder's and one sentence: the same model (every tensor within one fp16
# step, every JSON float within 1e-9 relative: pneumo_hf/reproduce.py) or the first tensor or key that differs (exit
# 1). Each step writes its folder under runs/; docs/models.md gives every step's figures and why the kernels are capped:
#   pip install -e ".[train]" && bash train/recipes/default_model.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
DATA=../shared/data  # as in the recipes
# An AVX2 CPU's kernels on every x86 CPU (torch's, MKL's and OpenBLAS's): the instruction set changes the rounding of
# training (a CPU with AVX-512 trained other Keras weights from the same recipe); the caps live in pneumo_hf/reproduce.py
eval "$(python -m pneumo_hf.reproduce --exports)"
export OMP_NUM_THREADS=2

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
python -m pneumo_hf.reproduce runs/lite0_keras_pair pneumo_hf/default_model
