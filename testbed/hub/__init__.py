"""A local Hugging Face Hub of tiny random-weight models in the real repositories' layouts, served
over the endpoints ``huggingface_hub`` downloads from, for ``make rehearse`` and the tests:
``python -m testbed.hub build|serve|pins DIR``. See ``docs/development.md`` ("Test bed").
"""
