"""The shootout stage, running a shootout: the lineup of cells, sweeps and resume (:mod:`.runner`),
executors (:mod:`.executors`) and the cell processes they start (:mod:`.processes`), warm starts
(:mod:`.warm`, the driver's side; :mod:`.fork_server`, the server each warm cell is forked from),
and the output directory (:mod:`.outdir`)."""
