r"""The VGG-BN recipe scaled for a GPU/TPU, 100 epochs: test accuracy 0.9559 +/- 0.0009 over seeds 0-2, 90-96 s a
run on one NVIDIA H200.

python main.py --config=configs/vgg_bn_large.py --workdir=runs/vgg_bn_large
"""

import ml_collections

from configs import vgg_bn


def get_config() -> ml_collections.ConfigDict:
    config = vgg_bn.get_config()
    config.name = "vgg_bn_large"
    config.model.widths = (64, 128, 256)
    config.model.depths = (2, 2, 2)
    config.model.dropout = 0.3
    config.num_epochs = 100
    config.batch_size = 256
    config.learning_rate = 4e-3
    config.schedule.warmup_epochs = 3.0
    config.augment.erase_prob = 0.5
    config.ema_decay = 0.9995
    return config
