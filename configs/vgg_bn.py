r"""Beyond the study: a VGG-style CNN with BatchNorm and a modern recipe, >= 0.94 test accuracy on a 2-core CPU.

python main.py --config=configs/vgg_bn.py --workdir=runs/vgg_bn
python main.py --config=configs/vgg_bn.py --workdir=runs/vgg_bn_gpu --config.model.widths=64,128,256 \
    --config.model.depths=2,2,2 --config.num_epochs=100        # aimed at 0.95+ on a GPU/TPU (README)

Choices (each made on the validation split, README "Beyond the study"): BatchNorm after every convolution,
flips + 2-pixel shifts on device, AdamW with warm-up and cosine decay, label smoothing 0.1, a moving average of
the weights for evaluation, and flip test-time augmentation. Most were made while the VGG-BN's training gradient
was wrong (README, "A wrong gradient, found and fixed"); with the right one (fused_pool), three validation runs
decided the rest: random erasing stays off (p = 0.25: validation accuracy 0.9433 against 0.9453 without) and
dropout drops from 0.25 to 0.1 (0.9469 against 0.9453).
"""

import ml_collections

from configs import cnn


def get_config() -> ml_collections.ConfigDict:
    config = cnn.get_config()
    config.name = "vgg_bn"
    config.model.name = "vgg_bn"  # fmnist_jax.models.VGGBatchNorm
    config.model.widths = (32, 64, 128)  # channels of each stage (28x28, 14x14, 7x7)
    config.model.depths = (1, 2, 2)  # convolutions per stage
    config.model.dropout = 0.1  # before each Dense layer (0.25: validation accuracy 0.9453; 0.1: 0.9469)
    config.model.head_width = 256  # a hidden Dense-ReLU layer before the output (0: none)
    config.model.fused_pool = True  # each stage's last BatchNorm-ReLU on the pooled values (benchmarks/fused_pool.py)
    config.num_epochs = 20
    # The final runs train on all 60k images (no validation split); the recipe was chosen with the 48k/12k
    # split: --config.data.validation_size=12000 (README, "Beyond the study").
    config.data.validation_size = 0
    config.batch_size = 128
    config.learning_rate = 3e-3
    config.adam.eps = 1e-8
    config.schedule.name = "warmup_cosine"
    config.schedule.warmup_epochs = 1.0
    config.weight_decay = 5e-2
    config.label_smoothing = 0.1
    config.augment.flip = True
    config.augment.translate = 2
    config.augment.erase_prob = 0.0  # 0.25: validation accuracy 0.9433 in 20 epochs (README); pays off in longer runs
    config.ema_decay = 0.999
    config.tta_flip = True
    return config
