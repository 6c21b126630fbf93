"""sparekit inside vLLM: per-request conflict detection and steering on vLLM's OpenAI server.

* :mod:`sparekit_vllm.options`: the ``{"sparekit": {...}}`` request options, checked by
  :mod:`sparekit.serve.options` (as the built-in engine checks them) and carried to the workers in
  ``SamplingParams.extra_args``;
* :mod:`sparekit_vllm.bundle`: probes, gates and fitted methods read from sparekit's saved folders;
* :mod:`sparekit_vllm.rows` / :mod:`sparekit_vllm.runtime`: each request's last prompt token in a
  flattened vLLM batch, and the reads and edits there;
* :mod:`sparekit_vllm.worker`: the worker extension that hooks the model's decoder layers;
* :mod:`sparekit_vllm.api`: the API-server middleware (options in, readings out).
"""

__version__ = "0.1.0"
