"""The in-process engine: worker processes (:mod:`.workers`), the simulation of one method
(:mod:`.simulator`), ``glora run`` (:mod:`.experiment`), the gauge experiment (:mod:`.gauge`) and
fault injection (:mod:`.faults`). Built on :mod:`glora.federation`, as the Flower apps are."""
