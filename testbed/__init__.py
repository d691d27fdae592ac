"""The test bed: tiny models in the real repositories' layouts, stand-ins for the official model
classes, tiny metric weights and a local Hugging Face hub that serves them.

It is used by the tests and by ``make rehearse`` (which runs the paper DAG on CPU against the local
hub); it is not part of the ``marpipe`` wheel, and ``marpipe`` never imports it. What it provides is
registered with ``marpipe``'s registries when a test or the rehearsal imports it. See
``docs/development.md``.
"""
