"""python -m nasfast: lists the tools (each is its own module, with its --help)."""
import sys

TOOLS = {
    "data": "check a dataset's files and count the pixels of each class, before a long run",
    "search": "find decoder designs for a dataset (the controller, the two stages, the reward)",
    "train": "train a design fully (a search's best, arch0-2, or a genotype)",
    "evaluate": "mIoU, fwIoU, accuracies and per-class IoU of a trained checkpoint",
    "predict": "a trained model's classes for images of your own, as PNGs (no labels needed)",
    "export": "TorchScript of a trained model, for Python or C++ (libtorch)",
    "report": "the best designs and the rewards of one or more searches",
}


def main() -> int:
    print("nasfast: fast architecture search of compact segmentation networks. Its tools:\n")
    for name, what in TOOLS.items():
        print(f"  python -m nasfast.{name:<9} {what}")
    print("\nEach takes --help. Latency: python bench/latency.py --help (in the source tree).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
