"""The measures stage, what the core measures of any model, whatever method built it: parameters, memory
and bytes (:mod:`.resources`), the loss at answer positions (:mod:`.loss`), greedy generation
(:mod:`.generation`) and a task's scores (:mod:`.task_scores`), forgetting (:mod:`.forgetting`),
inference cost (:mod:`.inference`), attention to prepended positions (:mod:`.attention`) and
the diagnostics that tell a handicapped method from a weak one (:mod:`.diagnostics`)."""
