"""Small stand-ins for the official NOVA (``diffnext``) and Harmon modules. THESE ARE NOT THE REAL
MODELS: they reproduce, at tiny size, what :mod:`marpipe.models.nova` and :mod:`marpipe.models.harmon`
touch of the official classes (attribute names, hence state-dict keys; the methods the adapters call;
token <-> latent layouts; shapes), with numerics of our own, so the adapters run on CPU. Importing this
package registers the specs ``nova-standin`` / ``harmon-standin`` and the architectures that stand-in
folders declare (``save_nova_standin`` / ``save_harmon_standin`` write them); a model built from either
says "NOT the real NOVA/Harmon" in its ``source``. See docs/development.md.
"""
from marpipe.models.nova import register_scheduler
from marpipe.models.registry import register_architecture, register_spec
from testbed.standins import harmon, nova
from testbed.standins.harmon import HarmonStandinConfig, build_harmon_standin, save_harmon_standin  # noqa: F401
from testbed.standins.nova import NovaStandinConfig, build_nova_standin, save_nova_standin  # noqa: F401

register_spec("nova-standin", nova.fresh_nova_standin)
register_spec("harmon-standin", harmon.fresh_harmon_standin)
register_architecture("nova", nova.ARCHITECTURE, nova.build_from_folder)
register_architecture("harmon", harmon.ARCHITECTURE, harmon.build_from_folder)
register_scheduler("testbed", "DDPMSchedulerStandin", clips_like_diffusers=True)
