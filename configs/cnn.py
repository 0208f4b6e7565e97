r"""The study's CNN, 30 epochs: test accuracy 0.9009 +/- 0.0020 over seeds 0-2 (the study: 0.8997); 13.9-14.3 min
of training on 2 cores of an AMD EPYC (AVX-512; two sittings), 14.1 s on one NVIDIA H200 (seed 0).

python main.py --config=configs/cnn.py --workdir=runs/cnn
python main.py --config=configs/cnn.py --workdir=runs/try --config.num_epochs=1 --config.data.num_train=6000  # quick
"""

import ml_collections
from ml_collections import config_dict

from configs import common


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.kind = "cnn"  # what main.py runs: "cnn", "baseline" or "compare"
    config.mode = "train"  # "train" (or resume, or report a finished run), "evaluate", "predict"
    config.name = "cnn"  # a label for results.json and the report
    config.seed = 0  # the split, the initialisation, dropout and the data order all follow from it
    config.num_epochs = 30  # passes over the training images (the study's 30)
    config.batch_size = 64  # global batch, split over all devices: must be a multiple of the device count
    config.learning_rate = 1e-3  # Adam's step size (the peak of a warmup_cosine schedule)
    config.adam = ml_collections.ConfigDict({"b1": 0.9, "b2": 0.999, "eps": 1e-7})  # Keras' Adam defaults

    # Beyond the study (configs/vgg_bn.py uses them); here each is off, so the study's run is unchanged.
    # "constant", or "warmup_cosine": linear warm-up over warmup_epochs, then a cosine decay to zero.
    config.schedule = ml_collections.ConfigDict({"name": "constant", "warmup_epochs": 0.0})
    config.weight_decay = 0.0  # > 0: AdamW, decoupled weight decay on the kernels (not biases or BatchNorm)
    config.label_smoothing = 0.0  # > 0: cross-entropy against (1 - s) one-hot + s / 10
    # On-device augmentation of the training batches, a pure function of (seed, step, image index): horizontal
    # flips, shifts of up to `translate` pixels (zero fill), random erasing of a rectangle with probability p.
    config.augment = ml_collections.ConfigDict({"flip": False, "translate": 0, "erase_prob": 0.0})
    config.ema_decay = 0.0  # > 0: evaluate, checkpoint and predict with a moving average of the weights
    config.tta_flip = False  # True: predict with the mean probabilities of each image and its mirror image
    config.tta_shift = 0  # N > 0: and of each of those shifted N pixels up and N down (3x the views)

    # "float32", or "bfloat16": activations and the matrix products' inputs in bfloat16, accumulation,
    # parameters, optimizer state, loss and metrics in float32 (TPU, recent GPUs, CPUs with AMX; docs/running.md).
    config.compute_dtype = "float32"

    # Speed only, never the maths: how many train steps one compiled call runs (through lax.scan), and
    # whether that scan is unrolled: "auto" (rolled, except for XLA convolutions on CPU, which a rolled XLA:CPU
    # loop slows ~15x; docs/history.md#the-speed-work-on-the-study-cnn), "full", "rolled".
    config.steps_per_call = 10
    config.scan_unroll = "auto"
    # 0: 100 on CPU, 1000 on GPU/TPU; rounded up to a multiple of the device count; the last batch is padded.
    config.eval_batch_size = 0
    # Speed only: whether the host reads an epoch's end (scores, history, checkpoint) while the devices train the
    # next epoch ("on") or at once, waiting for them ("off"); "auto": on for a one-process GPU/TPU run; off on CPU,
    # where XLA runs small programs in the calling thread (the host waits anyway), and across processes.
    config.host_overlap = "auto"
    # Speed only: where compiled programs are kept for the next run's start ("off", or a folder); "auto": the
    # folder JAX_COMPILATION_CACHE_DIR names, else ~/.cache/fmnist_jax/xla on GPU/TPU and none on CPU.
    config.compilation_cache = "auto"

    config.model = ml_collections.ConfigDict()
    config.model.name = "seed_cnn"  # a name in fmnist_jax.models.MODELS
    # Speed only: convolutions as patch matrix products ("im2col"), XLA's own ("xla"), sums of shifted
    # products ("taps"), or "auto": on CPU im2col for training (taps for bfloat16 over several input channels)
    # and the fastest forward pass for evaluation; xla on GPU/TPU. See fmnist_jax/ops.py, docs/performance.md.
    config.model.conv = "auto"

    config.data = common.data_config()

    config.checkpoint = ml_collections.ConfigDict()
    config.checkpoint.every_steps = 0  # 0: once per epoch
    config.checkpoint.max_to_keep = 3  # the newest N checkpoints stay; older ones are deleted
    config.checkpoint.async_save = True  # write in the background while training goes on
    # How a finished checkpoint is marked: "rename" (a temporary folder renamed when complete), "commit_file"
    # (a commit_success.txt file: for Google Drive and other FUSE mounts, where a rename is a slow copy), or
    # "auto" (commit_file under /content/drive and on FUSE mounts, rename elsewhere).
    config.checkpoint.atomicity = "auto"
    config.checkpoint.step = config_dict.placeholder(int)  # evaluate/predict: this step (None: the latest)

    # TensorBoard events in WORKDIR/tensorboard (tensorboard --logdir runs): per epoch and every N train steps.
    config.tensorboard = ml_collections.ConfigDict({"enabled": True, "loss_every_steps": 50})

    # mode=predict: inputs, comma-separated image/.npy paths; output, the predictions' JSON ("": WORKDIR/predict.json)
    config.predict = ml_collections.ConfigDict({"inputs": "", "output": ""})

    config.resume_with_changes = False  # allow resuming a workdir whose saved config differs in safe fields
    return config
