"""Offline stand-in of KNIME's Python extension API (``knime.extension``), faithful to KNIME 5.x.

This is NOT KNIME. It is only importable when ``cellseg_knime.compat.ensure_knime_extension()`` found
no real ``knime.extension`` (package ``knime-extension``, shipped with KNIME Analytics Platform and not
on PyPI) and put ``cellseg_knime/_standin`` on ``sys.path`` -- i.e. in tests and headless runs. Inside
KNIME the real package always wins.

Names, signatures, defaults and behaviour mirror the sources of github.com/knime/knime-python
(KNIME AP 5.x, 2023-2025):

- ``org.knime.python3.nodes/src/main/python/knime/extension/__init__.py`` (this re-export list)
- ``.../knime/extension/nodes.py``, ``parameter.py``, ``version.py``, ``testing.py``
- ``org.knime.python3/src/main/python/knime/api/schema.py`` and ``table.py``
- ``org.knime.python3.views/src/main/python/knime/api/views.py``
- ``org.knime.python3.arrow.types/plugin.xml`` (Python value types, e.g. ``PIL.Image.Image`` -> PNG image)

Only a subset is provided (no DateTime/ColumnFilter/EnumSet parameters, credentials ports, dialogs,
proxy settings); what is provided is at least as strict as KNIME's runtime where the nodes depend on it.
Tables are pyarrow-backed and follow KNIME's Arrow backend and Java checks (storable types only -- no
binary data --, batch sizes, RowIDs, empty tables); see ``knime.api.table``. Logical types: PNG image
cells (``PIL.Image.Image``) and Path cells (``knime.types.builtin.FSLocationValue``); see
``knime.api.schema`` and ``knime.api._values``. Port types register as in KNIME (``knime.extension.nodes``).
"""

import knime.api.schema as _ks
import knime.api.table as _kt
import knime.api.views as _kv
import knime.extension.nodes as _kn
import knime.extension.parameter as _kp

# knime.extension.parameter
IntParameter = _kp.IntParameter
DoubleParameter = _kp.DoubleParameter
BoolParameter = _kp.BoolParameter
StringParameter = _kp.StringParameter
MultilineStringParameter = _kp.MultilineStringParameter
parameter_group = _kp.parameter_group
ColumnParameter = _kp.ColumnParameter
MultiColumnParameter = _kp.MultiColumnParameter
EnumParameter = _kp.EnumParameter
EnumParameterOptions = _kp.EnumParameterOptions
Version = _kp.Version
Effect = _kp.Effect
OneOf = _kp.OneOf
Condition = _kp.Condition

# knime.extension.nodes
PortType = _kn.PortType
Port = _kn.Port
PortObject = _kn.PortObject
ConnectionPortObject = _kn.ConnectionPortObject
ViewDeclaration = _kn.ViewDeclaration
ConfigurationContext = _kn.ConfigurationContext
ExecutionContext = _kn.ExecutionContext
DialogCreationContext = _kn.DialogCreationContext
PythonNode = _kn.PythonNode
category = _kn.category
NodeType = _kn.NodeType
ImageFormat = _kn.ImageFormat
node = _kn.node
port_type = _kn.port_type
InvalidParametersError = _kn.InvalidParametersError
input_binary = _kn.input_binary
input_table = _kn.input_table
input_port = _kn.input_port
output_binary = _kn.output_binary
output_table = _kn.output_table
output_port = _kn.output_port
output_view = _kn.output_view
output_image = _kn.output_image

# knime.api.table
Table = _kt.Table
BatchOutputTable = _kt.BatchOutputTable

# knime.api.schema
KnimeType = _ks.KnimeType
PrimitiveTypeId = _ks.PrimitiveTypeId
DictEncodingKeyType = _ks.DictEncodingKeyType
PrimitiveType = _ks.PrimitiveType
ListType = _ks.ListType
StructType = _ks.StructType
LogicalType = _ks.LogicalType
int32 = _ks.int32
int64 = _ks.int64
double = _ks.double
bool_ = _ks.bool_
string = _ks.string
blob = _ks.blob
list_ = _ks.list_
struct = _ks.struct
logical = _ks.logical
datetime = _ks.datetime
null = _ks.null
supported_value_types = _ks.LogicalType.supported_value_types
PortObjectSpec = _ks.PortObjectSpec
BinaryPortObjectSpec = _ks.BinaryPortObjectSpec
ImagePortObjectSpec = _ks.ImagePortObjectSpec
Column = _ks.Column
Schema = _ks.Schema

# knime.api.views
view = _kv.view
view_ipy_repr = _kv.view_ipy_repr
view_html = _kv.view_html
view_svg = _kv.view_svg
view_png = _kv.view_png
view_jpeg = _kv.view_jpeg
view_plotly = _kv.view_plotly
view_matplotlib = _kv.view_matplotlib
view_seaborn = _kv.view_seaborn
