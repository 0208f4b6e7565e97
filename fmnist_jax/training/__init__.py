"""Training the CNN: `state` (the train state and recipe), `step` (the jitted programs), `evaluate` (scoring
and inference), `loop` (`train_and_evaluate`)."""
