"""CIFAR-10/100 constants (class names in label order, mean/std) and the input normalisation.

The one home of these numbers and of the formula that uses them: training
(``training.data.normalize``, torch), the checkpoint reader and the ONNX runtime
(``serving.runtime.normalize_uint8``, numpy) all import them from here, so a model is always
served with the inputs it was trained on. No imports: the formula is written once for numpy
arrays and torch tensors alike.
"""
from __future__ import annotations

from typing import TypeVar

__all__ = [
    "CIFAR10_CLASSES", "CIFAR100_CLASSES", "CIFAR_MEAN_STD", "CLASS_NAMES", "DATASETS", "NUM_CLASSES", "standardize",
]

Array = TypeVar("Array")  # a numpy array or a torch tensor (the same kind for every argument)

CIFAR10_CLASSES: tuple[str, ...] = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)
#: CIFAR-100 fine labels, in label order (as in the official ``meta`` file).
CIFAR100_CLASSES: tuple[str, ...] = (
    "apple", "aquarium_fish", "baby", "bear", "beaver", "bed", "bee", "beetle", "bicycle", "bottle",
    "bowl", "boy", "bridge", "bus", "butterfly", "camel", "can", "castle", "caterpillar", "cattle",
    "chair", "chimpanzee", "clock", "cloud", "cockroach", "couch", "crab", "crocodile", "cup", "dinosaur",
    "dolphin", "elephant", "flatfish", "forest", "fox", "girl", "hamster", "house", "kangaroo", "keyboard",
    "lamp", "lawn_mower", "leopard", "lion", "lizard", "lobster", "man", "maple_tree", "motorcycle", "mountain",
    "mouse", "mushroom", "oak_tree", "orange", "orchid", "otter", "palm_tree", "pear", "pickup_truck", "pine_tree",
    "plain", "plate", "poppy", "porcupine", "possum", "rabbit", "raccoon", "ray", "road", "rocket",
    "rose", "sea", "seal", "shark", "shrew", "skunk", "skyscraper", "snail", "snake", "spider",
    "squirrel", "streetcar", "sunflower", "sweet_pepper", "table", "tank", "telephone", "television", "tiger", "tractor",
    "train", "trout", "tulip", "turtle", "wardrobe", "whale", "willow_tree", "wolf", "woman", "worm",
)

#: Standard per-channel (RGB) mean and standard deviation of the official training sets,
#: on the [0, 1] scale. (The JPEG copy's stds are slightly lower; we keep the standard
#: constants so checkpoints are interchangeable between sources.)
CIFAR_MEAN_STD: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}
#: Class names per dataset.
CLASS_NAMES: dict[str, tuple[str, ...]] = {"cifar10": CIFAR10_CLASSES, "cifar100": CIFAR100_CLASSES}
DATASETS: tuple[str, ...] = ("cifar10", "cifar100")
NUM_CLASSES: dict[str, int] = {"cifar10": 10, "cifar100": 100}


def standardize(pixels: Array, mean: Array, std: Array, peak: float = 255.0) -> Array:
    """The models' input normalisation, ``(pixels / peak - mean) / std``: its one definition.

    Args:
        pixels: float32 channels-first pixel values on ``[0, peak]`` (255 for uint8 images,
            1 for images already on ``[0, 1]``).
        mean, std: float32 per-channel constants of the same kind as ``pixels`` (numpy arrays
            or torch tensors), shaped to broadcast against it, e.g. ``(3, 1, 1)``.

    numpy and torch run the same float32 operations in the same order, so on the CPU the
    trainer's inputs and the ONNX runtime's are bit-identical (tested). On CUDA, torch
    divides by a Python number as a multiplication by its reciprocal: a last-bit difference.
    """
    return (pixels / peak - mean) / std  # type: ignore[operator]
