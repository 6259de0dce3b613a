"""The grid: study files, datasets, baselines, the grid driver, executors, packing."""
