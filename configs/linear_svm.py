r"""The study's linear SVM on pixels / 255: test accuracy 0.8392 +/- 0.0013 over seeds 0-2 (the study: 0.76), 96-113 s
on 2 cores of an AMD EPYC (AVX-512, seed 0, two sittings). The study's setting (second command): 0.7925, 348 s, not
converged.

    python main.py --config=configs/linear_svm.py --workdir=runs/linear_svm          # pixels / 255, primal solver
    python main.py --config=configs/linear_svm.py --workdir=runs/svm_study \
        --config.preprocess=none --config.model.dual=true --config.model.max_iter=1000   # the study's setting
"""

import ml_collections

from configs import common


def get_config() -> ml_collections.ConfigDict:
    config = common.baseline_config("linear_svm")
    config.preprocess = "scale"  # "none" (raw 0-255, the study), "scale" (/255) or "standardize" (StandardScaler)
    m = config.model
    # scikit-learn's LinearSVC arguments (its documentation has each in full); dual's text becomes True, False or "auto"
    m.C = 1.0  # the inverse of the regularisation's strength
    m.loss = "squared_hinge"  # or "hinge" (with penalty "l2", and dual "true" or "auto")
    m.penalty = "l2"  # or "l1" (with loss "squared_hinge", and dual "false" or "auto")
    m.dual = "auto"  # "auto" (today's default: primal here), "true" (the study's solver), "false"
    m.tol = 1e-4  # the solver's stopping tolerance
    m.max_iter = 1000  # the solver's most passes; reaching it warns that the fit has not converged
    m.fit_intercept = True  # learn a bias per class
    m.verbose = 1  # liblinear prints its iterations while it fits (the fit's progress); 0: silent
    return config
