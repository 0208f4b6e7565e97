r"""The speedrun at a GPU's batch: vgg_bn's convolutions (32, 64 and 128 channels; one, two and two per stage), batch
512, learning rate 6e-3 with 2 warm-up epochs, 24 epochs, no dropout, no moving average, on all 60k images. Chosen on
the validation split on a CPU (0.9493 at 24 epochs; docs/models.md#at-a-gpus-batch): test accuracy 0.9459 +/- 0.0017
over seeds 0-2, 28-31 min a run on 2 cores of an Intel Xeon (AVX-512). Its aims on one H200: test accuracy 0.94 (mean
of 5 seeds) in <= 2 s of training, 0.95 in <= 10 s (for which it is not enough: 40 epochs gave 0.9513 of validation
accuracy, against the 0.9530 asked; a wider form is screened on a GPU: docs/models.md). Its GPU time is unmeasured.

python main.py --config=configs/speedrun_gpu.py --workdir=runs/speedrun_gpu
python -m benchmarks time_to_accuracy --config=speedrun_gpu --seeds=5 --workdir=runs/speedrun_gpu_tta
"""

import ml_collections

from configs import speedrun


def get_config() -> ml_collections.ConfigDict:
    config = speedrun.get_config()
    config.name = "speedrun_gpu"
    # Screened on the 48k/12k split, seed 0, with the rule (validation >= 0.9450) written first: the speedrun's
    # 24/48/96 model at batch 512 reached 0.9360 in 16 epochs and 0.9422 in 24; one convolution per stage of 32/64/128,
    # 0.9424 in 24; these convolutions, 0.9493 in 24 (training accuracy under augmentation 0.9667, against 0.9484 and
    # 0.9518: the deeper model fits more in the same updates).
    config.model.widths = (32, 64, 128)
    config.model.depths = (1, 2, 2)
    config.batch_size = 512
    config.learning_rate = 6e-3
    config.schedule.warmup_epochs = 2.0
    config.num_epochs = 24
    config.tta_shift = 0  # screened and measured with the flip alone (the shifts came to the speedrun after)
    return config
