"""The lab layer, "show your working": explanations (:mod:`.explain`, the players' recordings
:mod:`.explain_steps` and their state rebuilt from events :mod:`.step_state`), claims (:mod:`.claims`
on :mod:`.derivation` and :mod:`.notation`), the review-lab drivers (:mod:`.review`), exercises
(:mod:`.exercises`, kinds in :mod:`.exercise_alloc`, :mod:`.exercise_map`, :mod:`.exercise_workload` on
:mod:`.exercise_base`), modelled cost (:mod:`.cost`) and workloads with modelled time (:mod:`.scenarios`).
It calls the model; it never re-derives it."""
