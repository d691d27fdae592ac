"""A local Hugging Face Hub of tiny random-weight models in the real repositories' layouts.

* :mod:`marpipe.hub.repos` -- for every ``kind: hub`` entry of ``config.yaml``, the real
  repository's file list (and where that list comes from) and a builder;
* :mod:`marpipe.hub.build` -- writes the hub folder (repositories, ``kind: url`` files, index);
* :mod:`marpipe.hub.server` -- serves it over HTTP with the endpoints ``huggingface_hub`` uses
  for ``snapshot_download`` / ``hf_hub_download``, so that downloads take the cluster's code path
  with ``HF_ENDPOINT`` pointed at it.

``python -m marpipe.hub build DIR`` / ``serve DIR`` / ``pins DIR`` (see ``__main__``).
"""
