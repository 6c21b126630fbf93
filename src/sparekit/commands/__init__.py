"""The request-level commands as config dataclasses with ``run()``: ``detect``, ``steer``, ``demo``,
``serve`` and ``export control-vector``.

Each field is one option of the command (``sparekit.cli.config`` generates them), checked when the
config is built; ``run()`` does the work through the packages below and returns a JSON-able result,
which the CLI only prints. These modules import nothing heavy at their top, so ``sparekit steer --help``
and the demo's first line stay instant; each ``run()`` imports the model stack when it starts,
deliberately. The experiments (``eval``, ``capture``, ``probe``, ``sae``, ``bench``, ``kv``) keep their
configs beside their work, in each package's ``experiment.py``.
"""
