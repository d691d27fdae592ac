"""Small stand-ins for the official NOVA (``diffnext``) and Harmon modules.

THESE ARE NOT THE REAL MODELS. No machine of this project can download the real
weights or install ``diffnext``/Harmon's code, so the adapters in
:mod:`marpipe.models.nova` and :mod:`marpipe.models.harmon` are exercised here on
small modules that reproduce what the adapters touch of the official ones: the
module attribute names (hence the state-dict key layout), the method signatures
the adapters call, the token <-> latent layouts and the in/out shapes. Their
numerics are our own small versions of the same computations (written from the
facts of the official code, not copied); what they stand in for is named in each
class docstring. A stand-in checkpoint folder carries ``marpipe_standin.json``
so the loaders can never mistake it for a real model.
"""
from marpipe.models.standins.harmon import HarmonStandinConfig, build_harmon_standin  # noqa: F401
from marpipe.models.standins.nova import NovaStandinConfig, build_nova_standin  # noqa: F401

STANDIN_MARKER = "marpipe_standin.json"
