"""Keys of the facts the analysis leaves in ``node.meta`` of the traced graph."""

#: the node's concrete value on the example inputs (set by the recording run of :mod:`.trace`)
VALUE = "gdp_value"
#: the node's channels (set by the propagation of :mod:`.analysis`)
CHANNELS = "channels"
