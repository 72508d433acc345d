"""The memory stage, memory planned before any weight exists: one training step traced on the meta
device (:mod:`.tracing`), a method's predicted bytes (:mod:`.prediction`), and a model's plan
for every method against a budget (:mod:`.plan`: ``leitai plan``, ``leitai run --memory``).
"Plan" means this and nothing else in leitai."""
