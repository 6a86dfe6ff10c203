"""The client side: tokenize once (:mod:`.tokenize`), train locally (:mod:`.train`), evaluate the
global model (:mod:`.evaluate`). Engine-independent: the simulator and the Flower ClientApp both
call :func:`glora.client.train.train_client`."""
