r"""Beyond the study: a VGG-style CNN with BatchNorm and a modern recipe, 20 epochs on all 60k images: test accuracy
0.9441 +/- 0.0020 over seeds 0-2, 24-25 min a run on 2 cores of an AMD EPYC (AVX-512).

python main.py --config=configs/vgg_bn.py --workdir=runs/vgg_bn_seed0
python main.py --config=configs/vgg_bn.py --workdir=runs/vgg_bn_seed1 --config.seed=1
python main.py --config=configs/vgg_bn.py --workdir=runs/vgg_bn_val --config.data.validation_size=12000
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
    config.model.fused_pool = True  # each stage's last BatchNorm-ReLU on the pooled values (docs/models.md)
    config.num_epochs = 20
    # The final runs train on all 60k images (no validation split); the recipe was chosen with the 48k/12k
    # split: --config.data.validation_size=12000 (docs/models.md).
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
    config.augment.erase_prob = 0.0  # 0.25: validation 0.9433 in 20 epochs (docs/models.md); pays off in longer runs
    config.ema_decay = 0.999
    config.tta_flip = True
    return config
