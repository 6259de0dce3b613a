"""The run: the round engine, the run loop, training, the model and its one network seam."""
