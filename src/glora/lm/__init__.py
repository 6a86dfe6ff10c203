"""Federated instruction tuning of causal language models (Natural Instructions, ROUGE-L).

* :mod:`glora.lm.models` -- :class:`~glora.lm.models.CausalLMCache` (the
  :class:`glora.models.ModelCache` interface, no head) and SmolLM2-135M-Instruct from its GGUF file;
* :mod:`glora.lm.tokenize` -- prompts and answers, loss on the answer tokens only;
* :mod:`glora.lm.train` -- a client's local training (the ``TrainTask``/``TrainResult`` contract);
* :mod:`glora.lm.evaluate` -- greedy generation with a length cap, ROUGE-L per task;
* :mod:`glora.lm.prepare` -- seen/unseen tasks, clients by task, the simulator's ``Prepared``.
"""
