"""The benchmarks behind ``marpipe bench KIND``, one module per family: :mod:`~marpipe.bench.train`
(``train-step``, ``rollout``), :mod:`~marpipe.bench.reward` (``reward-rise``, ``warmup``),
:mod:`~marpipe.bench.memory`, :mod:`~marpipe.bench.gpu`, :mod:`~marpipe.bench.grad_noise` and
:mod:`~marpipe.bench.metrics`; each kind's options and how it runs: :mod:`~marpipe.bench.commands`.
How to run them: docs/development.md.
"""
