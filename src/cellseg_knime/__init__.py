"""KNIME 5.x Python extension nodes of cellseg (StarDist microscopy segmentation).

Importing this package registers the node category; ``src/extension.py`` imports the node modules.
The nodes only translate KNIME tables, parameters and ports to calls of the backend ``cellseg``.
"""

from __future__ import annotations

from cellseg_knime.compat import ensure_knime_extension

ensure_knime_extension()  # a no-op inside KNIME (the real package wins); the offline stand-in elsewhere

import knime.extension as knext  # noqa: E402

__all__ = ["category", "icon", "node"]


def icon(name: str) -> str:
    """Path of a node icon, relative to the extension root (the folder of ``knime.yml``)."""
    return f"icons/{name}.png"


category = knext.category(
    path="/community",
    level_id="cellseg",
    name="cellseg (StarDist)",
    description="Deep-learning instance segmentation of microscopy images (StarDist): simulate and read "
    "images, train and retrain models (transfer learning), predict, tile large images and score results.",
    icon=icon("category"),
)


def node(name: str, node_type: knext.NodeType, node_id: str) -> object:
    """``@knext.node`` for a cellseg node: its icon is ``icons/<node_id>.png`` and it sits in the cellseg
    category (the node id is also the key of its saved settings: never change it)."""
    return knext.node(name=name, node_type=node_type, icon_path=icon(node_id), category=category, id=node_id)
