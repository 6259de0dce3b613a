"""fairal: fairness-aware active learning for 3D brain MRI segmentation.

The public Python API (docs/api.md): the paper's scores and group weights for any model's probability maps,
the fairness metrics, and the statistics over seeds::

    import fairal
    w = fairal.group_weights(dice_of_labeled, groups_of_labeled, ["F", "M"])          # Eq. 2's weights
    table = fairal.rank_for_annotation(probability_maps, groups, w, budget=4)         # who to annotate next
    fairal.fairness_summary(test_dice, test_groups)                                   # Dice, Delta, ESSP
"""

__version__ = "0.1.0"

#: name -> module of the public API (imported on first use, so that ``import fairal`` stays light).
_API = {
    "rank_for_annotation": "fairal.owndata.api",
    "group_weights": "fairal.acquisition",
    "case_weights": "fairal.acquisition",
    "expected_weights": "fairal.acquisition",
    "voxel_entropy": "fairal.acquisition",
    "mean_entropy": "fairal.acquisition",
    "localized_entropy": "fairal.acquisition",
    "roi_mask": "fairal.acquisition",
    "mutual_information": "fairal.acquisition",
    "strategy_scores": "fairal.acquisition",
    "select": "fairal.acquisition",
    "parse_strategy": "fairal.acquisition",
    "dice": "fairal.metrics",
    "dice_from_proba": "fairal.metrics",
    "delta": "fairal.metrics",
    "essp": "fairal.metrics",
    "fairness_summary": "fairal.metrics",
    "mean_ci": "fairal.stats",
    "paired": "fairal.stats",
    "UNet3D": "fairal.run.model",
    "FairalError": "fairal.errors",
}
__all__ = ["__version__", "versions", *_API]


def __getattr__(name: str):
    if name in _API:
        import importlib

        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'fairal' has no attribute {name!r}")


def versions() -> dict[str, str]:
    """Versions of fairal and of the libraries that shape its results, for the records."""
    import monai
    import nibabel
    import numpy
    import scipy
    import torch

    return {
        "fairal": __version__,
        "numpy": numpy.__version__,
        "scipy": scipy.__version__,
        "nibabel": nibabel.__version__,
        "torch": torch.__version__.split("+")[0],
        "monai": monai.__version__,
    }
