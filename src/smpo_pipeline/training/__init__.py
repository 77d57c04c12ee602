"""Every training loop of the project and what it reads: the preference loop (``trainer``) with its
engine, policy, batch losses and checkpoints, the training cache, the multi-process launch, and the
bootstrap's pretraining of the tiny base model. Core: no Kedro."""
