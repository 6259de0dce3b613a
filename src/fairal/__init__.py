"""fairal: fairness-aware active learning for 3D brain MRI segmentation."""

__version__ = "0.1.0"


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
