"""Compact definitions of the example KNIME workflows (``cellseg make-workflows`` writes them).

Each :class:`~cellseg_knime.workflows.WorkflowDef` lists its nodes by node id with only the parameters that differ
from the node's defaults (dotted paths into parameter groups, as for ``cellseg run-workflow --set``) and its
connections as ``c(source node, output port, destination node, input port)`` with 0-based ports in the
order of the node's port decorators. Node names, factory settings, every parameter's name, type and default
come from the node classes when the files are generated, so they cannot drift from the code.

Relative paths are resolved by the nodes against the workflow's folder at execution (in the headless
runner: its output folder, into which the workflow's data area ``<workflow>/data``, written by ``data=``,
is copied first).
"""

from __future__ import annotations

from pathlib import Path

from cellseg_knime.workflows import NodeDef, WorkflowDef, c

PRETRAINED = "dsb2018_simmix"  # the model shipped in src/cellseg/pretrained


def annotated_sample(data: Path) -> None:
    """4 training and 4 test images with instance masks, simulated by cellseg: lobed, noisy nuclei shown dark
    on a bright background (inverted contrast, as in brightfield), a domain the shipped fluorescence model
    was not trained on. The project ships no third-party data: replace these folders by your own images.
    """
    from cellseg.images import write_image
    from cellseg.simulate import simulate_dataset

    images, masks = simulate_dataset(8, size=128, preset="granulocyte_high_noise", seed=11)
    for split, idx in {"train": range(0, 4), "test": range(4, 8)}.items():
        for i in idx:
            inverted = (images[i].max() - images[i]).astype(images[i].dtype)
            write_image(data / split / "images" / f"granulocyte_{i:02d}.tif", inverted)
            write_image(data / split / "masks" / f"granulocyte_{i:02d}.tif", masks[i])


def large_image(data: Path) -> None:
    """One simulated 768x768 fluorescence image (HL60-like nuclei)."""
    from cellseg.images import write_image
    from cellseg.simulate import simulate_dataset

    images, _ = simulate_dataset(1, size=768, preset="low_noise", seed=7)
    write_image(data / "large" / "nuclei_768.tif", images[0])


RETRAIN = WorkflowDef(
    folder="retrain_stardist",
    title="Retrain StarDist on a few annotated images",
    description=(
        "Transfer learning, the headline use of cellseg: the pretrained StarDist model dsb2018_simmix is "
        "retrained on 4 annotated images and both models segment 4 held-back test images, which are scored "
        "against their ground truth before and after retraining in one StarDist Scorer table (rows 'before' and 'after', IoU 0.5-0.95). The retrained "
        "model is written to models/retrained.zip. Point the two Image Readers at your own image and mask "
        "folders (same file names) to adapt the model to your microscope."
    ),
    notes="Retrain StarDist on a few annotated images: pretrained model + 4 annotated images -> Retrainer; "
          "the test images are segmented before and after retraining and scored in one table.",
    tags=("StarDist", "segmentation", "transfer learning", "nuclei"),
    nodes=[
        NodeDef(1, "model_reader", {"source": "PRETRAINED", "pretrained_name": PRETRAINED},
                annotation="pretrained model"),
        NodeDef(2, "image_reader", {"path": "data/train/images", "mask_folder": "data/train/masks"},
                annotation="training images"),
        NodeDef(3, "image_reader", {"path": "data/test/images", "mask_folder": "data/test/masks"},
                annotation="test images"),
        NodeDef(4, "retrainer", {"training.epochs": 10, "training.steps_per_epoch": 25,
                                 "advanced.model_name": "retrained"}, annotation="retrain"),
        NodeDef(5, "predictor", {"output_column": "before", "output.preview": False}, annotation="before"),
        NodeDef(6, "predictor", {"output_column": "after"}, annotation="after"),
        NodeDef(7, "scorer", annotation="scores before and after"),
        NodeDef(8, "model_writer", {"path": "models/retrained.zip", "overwrite": True},
                annotation="retrained model"),
    ],
    connections=[
        c(1, 0, 4, 0), c(2, 0, 4, 1),
        c(1, 0, 5, 0), c(3, 0, 5, 1),
        c(4, 0, 6, 0), c(5, 0, 6, 1),
        c(6, 0, 7, 0),
        c(4, 0, 8, 0),
    ],
    data=annotated_sample,
)

TRAIN_SIMULATED = WorkflowDef(
    folder="train_simulated",
    title="Train StarDist on simulated nuclei",
    description=(
        "Trains a StarDist model from scratch on simulated fluorescence nuclei (no annotation needed): the "
        "Nuclei Simulator makes 32 training images with ground truth, the StarDist Learner trains a U-Net "
        "StarDist, the Predictor segments 8 new simulated images and the Scorer compares them with their "
        "ground truth. The model is written to models/simulated.zip."
    ),
    notes="Train StarDist on simulated nuclei: Simulator -> Learner -> Predictor -> Scorer, Model Writer.",
    tags=("StarDist", "segmentation", "simulation", "training"),
    nodes=[
        NodeDef(1, "nuclei_simulator", {"n_images": 32, "image_size": 256, "seed": 0, "preview": False},
                annotation="training images"),
        NodeDef(2, "nuclei_simulator", {"n_images": 8, "image_size": 256, "seed": 1},
                annotation="test images"),
        NodeDef(3, "learner", {"training.epochs": 10, "training.steps_per_epoch": 50,
                               "advanced.model_name": "simulated"}, annotation="train from scratch"),
        NodeDef(4, "predictor", annotation="segment"),
        NodeDef(5, "scorer", annotation="scores"),
        NodeDef(6, "model_writer", {"path": "models/simulated.zip", "overwrite": True},
                annotation="trained model"),
    ],
    connections=[c(1, 0, 3, 0), c(3, 0, 4, 0), c(2, 0, 4, 1), c(4, 0, 5, 0), c(3, 0, 6, 0)],
)

LARGE_IMAGE = WorkflowDef(
    folder="segment_large_image",
    title="Segment a large image",
    description=(
        "Two ways to segment images larger than memory allows at once. Upper branch: the Image Tiler cuts "
        "the image into overlapping tiles, the StarDist Predictor segments each tile and the Tile Merger "
        "puts the label images back together, keeping each object on a tile border once and whole. Lower "
        "branch: the Image Reader only lists file paths and the Predictor's large-image mode streams each "
        "file tile by tile in flat memory, writing label TIFFs to large_labels/ (replaced when the workflow runs again)."
    ),
    notes="Segment a large image: tiles in a table (Tiler -> Predictor -> Merger, upper) or the Predictor's "
          "streaming large-image mode on file paths (lower).",
    tags=("StarDist", "segmentation", "large images", "tiling"),
    nodes=[
        NodeDef(1, "model_reader", {"source": "PRETRAINED", "pretrained_name": PRETRAINED},
                annotation="pretrained model"),
        NodeDef(2, "image_reader", {"path": "data/large"}, annotation="image"),
        NodeDef(3, "image_tiler", {"image_column": "image", "tile_size": 256, "overlap": 32, "divisor": 16},
                annotation="tiles"),
        NodeDef(4, "predictor", {"image_column": "tile", "output.preview": False}, annotation="per tile"),
        NodeDef(5, "tile_merger", {"labels_column": "labels", "source_column": "source_row_id"},
                annotation="merged labels"),
        NodeDef(6, "image_reader", {"path": "data/large", "content": "PATH"}, annotation="file paths"),
        NodeDef(7, "predictor", {"mode": "LARGE_IMAGE", "image_output.folder": "large_labels",
                                 "image_output.overwrite": True, "large_image.tile_size": 384},
                annotation="streaming"),
    ],
    connections=[
        c(2, 0, 3, 0), c(1, 0, 4, 0), c(3, 0, 4, 1), c(4, 0, 5, 0),
        c(1, 0, 7, 0), c(6, 0, 7, 1),
    ],
    data=large_image,
)

TRANSFER = WorkflowDef(
    folder="transfer_learning_eval",
    title="Transfer-learning evaluation",
    description=(
        "Does pretraining help with few annotated images? With the same n training images (4 here) and the "
        "same training budget, the pretrained model is retrained (StarDist Retrainer) and a model of the same "
        "architecture is trained from scratch (StarDist Learner); the pretrained model as it is serves as a "
        "third arm. Each model segments the same test images and the Scorer's summary (one row per IoU "
        "threshold, pooled over the images) shows precision, recall, F1, accuracy (DSB average precision) "
        "and panoptic quality per arm."
    ),
    notes="Transfer-learning evaluation on n images: pretrained as is, pretrained + retrained and trained "
          "from scratch segment the same test images; one Scorer table compares the three arms.",
    tags=("StarDist", "segmentation", "transfer learning", "evaluation"),
    nodes=[
        NodeDef(1, "model_reader", {"source": "PRETRAINED", "pretrained_name": PRETRAINED},
                annotation="pretrained model"),
        NodeDef(2, "image_reader", {"path": "data/train/images", "mask_folder": "data/train/masks"},
                annotation="n training images"),
        NodeDef(3, "image_reader", {"path": "data/test/images", "mask_folder": "data/test/masks"},
                annotation="test images"),
        NodeDef(4, "retrainer", {"training.epochs": 10, "training.steps_per_epoch": 25,
                                 "advanced.model_name": "pretrained+retrained"}, annotation="retrain"),
        NodeDef(5, "learner", {"training.epochs": 10, "training.steps_per_epoch": 25,
                               "training.learning_rate": 3e-4, "advanced.model_name": "scratch"},
                annotation="from scratch"),
        NodeDef(6, "predictor", {"output_column": "pretrained", "output.preview": False}, annotation="pretrained"),
        NodeDef(7, "predictor", {"output_column": "retrained", "output.preview": False}, annotation="retrained"),
        NodeDef(8, "predictor", {"output_column": "scratch"}, annotation="scratch"),
        NodeDef(9, "scorer", annotation="scores of the three arms"),
    ],
    connections=[
        c(1, 0, 4, 0), c(2, 0, 4, 1), c(2, 0, 5, 0),
        c(1, 0, 6, 0), c(3, 0, 6, 1),
        c(4, 0, 7, 0), c(6, 0, 7, 1),
        c(5, 0, 8, 0), c(7, 0, 8, 1),
        c(8, 0, 9, 0),
    ],
    data=annotated_sample,
)

WORKFLOWS = [RETRAIN, TRAIN_SIMULATED, LARGE_IMAGE, TRANSFER]
