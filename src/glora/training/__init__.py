"""Clients' side for any task: the per-process model cache (:mod:`.cache`), local training
(:mod:`.train`) and the export of a global model as a PEFT adapter (:mod:`.export`)."""
