"""Data on disk: datasets' manifests and volumes, a lab's CSV cohort, the nnU-Net export."""
