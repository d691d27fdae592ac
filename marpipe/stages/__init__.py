"""The pipeline's stages, one module per rule family; each is called by one CLI subcommand.

Data flows one way: config -> rule -> CLI -> a function here -> files.
"""
