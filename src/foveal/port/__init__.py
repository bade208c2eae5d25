"""Port a Hugging Face vision model into Foveal in one command, verified end to end.

``port_hf(source, name)`` runs four phases and writes a report (:mod:`foveal.port.report`):

1. inspect (:mod:`.inspect`): config, weights schema, task; text/audio models and unsupported
   tasks are refused with one line; a sanity ONNX export of the untouched model;
2. map (:mod:`.mapping`): a native Foveal ViT where the architecture allows, else the HF model
   wrapped behind the backbone interface, each checked against the HF model (<= 1e-4);
3. generate (:mod:`.generate`): the network entry in the workspace (schema defaults, spec
   templates, JSON schemas, metadata, weights);
4. verify (:mod:`.verify`): train -> evaluate -> export -> ONNX Runtime parity, as real jobs.

The port is idempotent (an identical, verified port is reused), ``force`` regenerates and
:func:`remove_port` removes the entry.
"""

from foveal.port.pipeline import list_ports, port_hf, remove_port
from foveal.port.report import PortReport

__all__ = ["PortReport", "list_ports", "port_hf", "remove_port"]
