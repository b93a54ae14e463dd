"""Stand-in of ``knime.api`` (schema, table and views modules of KNIME's Python API)."""
