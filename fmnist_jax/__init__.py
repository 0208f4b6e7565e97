"""fmnist-jax: the Fashion-MNIST study's CNN in Flax NNX, its scikit-learn baselines, one metrics module."""

__version__ = "0.1.0"
