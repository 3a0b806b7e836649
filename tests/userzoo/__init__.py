"""Models written the way tutorials and projects write them, trained briefly, saved the way training
code saves them: the acceptance set for building checkpoints as they are, with ``--model``."""
