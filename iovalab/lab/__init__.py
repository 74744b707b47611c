"""The lab layer, "show your working": explanations (:mod:`.explain`, :mod:`.explain_steps`), claims
(:mod:`.claims`), exercises (:mod:`.exercises`), modelled cost (:mod:`.cost`) and workloads with modelled
time (:mod:`.scenarios`). It calls the model; it never re-derives it."""
