"""Stand-in of ``knime.types``: Python value types of KNIME cells (only ``builtin.FSLocationValue``)."""
